"""
Run the real C{twistd -n kvcache} as a subprocess, for end-to-end tests.

This is a helper, not a test module. L{ServerProcess} starts the server on a
free loopback port with a data directory, waits (synchronously, bounded in
count and time) until it answers HTTP, writes its output to a log file, and
stops it with SIGTERM, SIGINT or SIGKILL. L{treq_client} gives a test a treq
client whose connections are closed when the test ends, so the reactor is
left clean. L{http_request} is a plain blocking client for threads (the
crash loop) and for readiness probes.

Typical use from a trial test::

    server = ServerProcess(self.make_dir("data"), log_dir=self.make_dir("logs"))
    self.addCleanup(server.stop)
    server.start()
    response = await treq_client(self).get(server.url + "/a")
    self.assertEqual(server.terminate(), 0)

Blocking waits happen only in L{ServerProcess.start}, L{ServerProcess.wait}
and friends, before or after a test's reactor work; L{ServerProcess.wait_async}
waits without blocking the reactor, for tests that must keep reading
responses while the server shuts down.

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from treq.client import HTTPClient

# A port found free may be taken before twistd binds it: ServerProcess.start
# retries on a fresh one then.
from benchmarks.procs import HOST, free_port

#: Seconds a server gets to answer HTTP after it was started. Generous: on a
#: busy 2-core machine importing Twisted alone can take a second.
START_TIMEOUT = 30.0

#: Seconds a server gets to exit after SIGTERM/SIGINT before it is killed.
STOP_TIMEOUT = 20.0

#: How many fresh ports L{ServerProcess.start} tries when the one it picked
#: was taken by someone else between picking and binding.
START_ATTEMPTS = 5

#: The path polled until the server is ready: anything but a 5xx is ready.
READY_PATH = "/v1/readyz"

#: Set to keep the temporary directories of end-to-end tests for inspection.
KEEP_ENV = "KVTWIST_KEEP_E2E"

#: C{KVTWIST_THOROUGH=1}: tests that measure or repeat more than their
#: assertions need run their full counts (docs/testing.md lists them).
THOROUGH = os.environ.get("KVTWIST_THOROUGH", "") not in ("", "0")


def twistd_command() -> List[str]:
    """
    The command that runs twistd with the interpreter running the tests: the
    venv's own C{twistd} script next to C{sys.executable}, or, if a layout
    lacks it, the same entry point through the interpreter.
    """
    sibling = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(sibling, os.X_OK):
        return [sibling]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def run_twistd(
    args: Sequence[str], timeout: float = START_TIMEOUT, cwd: Optional[str] = None
) -> subprocess.CompletedProcess:
    """
    Run C{twistd ARGS} to completion (for C{--help} or a start that must
    fail) and return its result with text C{stdout} and C{stderr}.
    """
    return subprocess.run(
        twistd_command() + list(args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or tempfile.gettempdir(),
    )


def http_request(
    base_url: str,
    method: str,
    path: str,
    body: Optional[bytes] = None,
    headers: Optional[Mapping[str, str]] = None,
    timeout: float = 5.0,
    connection: Optional[http.client.HTTPConnection] = None,
) -> Tuple[int, Dict[str, str], bytes]:
    """
    One blocking HTTP request; returns C{(status, headers, body)} with
    lower-case header names. Raises C{OSError} or C{http.client} errors when
    the server is not there.

    @param connection: reuse this keep-alive connection (it must be to
        C{base_url}); by default a new one is opened and closed.
    """
    own = connection is None
    if connection is None:
        connection = connect(base_url, timeout)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        data = response.read()
        return (
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            data,
        )
    finally:
        if own:
            connection.close()


def connect(base_url: str, timeout: float = 5.0) -> http.client.HTTPConnection:
    """A keep-alive C{http.client} connection to C{base_url}."""
    scheme, rest = base_url.split("://", 1)
    host, _, port = rest.partition(":")
    if scheme == "https":
        # Readiness only: the test's own client checks certificates.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(
            host, int(port), timeout=timeout, context=context
        )
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def child_pids(pid: int) -> List[int]:
    """The ids of process C{pid}'s children (a --workers server's workers)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % (entry,)) as f:
                # The parent id follows the command name, which is in parentheses.
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(entry))
    return sorted(children)


def wait_ready(base_url: str, timeout: float) -> None:
    """
    Poll C{GET /readyz} until it answers 200 (a --workers server whose
    killed worker the owner is restarting).

    @raise AssertionError: if it does not within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        try:
            if http_request(base_url, "GET", READY_PATH, timeout=2.0)[0] == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError("%s was not ready within %.0f s" % (base_url, timeout))


def rss_kib(pid: int) -> int:
    """The resident set size of process C{pid}, in KiB (VmRSS)."""
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % (pid,))


class ServerFailed(Exception):
    """The server did not start (or stop) as expected; the log says why."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__("%s\n--- server log (tail) ---\n%s" % (message, log[-4000:]))
        self.log = log


class ServerProcess:
    """
    One kvcache server process, restartable on the same data directory.

    @param data_dir: the C{--data} directory.
    @param extra_args: more C{twistd kvcache} options. If one contains
        C{{port}} (e.g. C{"--listen", "ssl:{port}:interface=127.0.0.1:..."})
        it is formatted with the chosen port and no C{--port} is added;
        otherwise C{--port PORT} is.
    @param log_dir: where each start's combined stdout/stderr goes
        (C{server-N.log}); a temporary directory by default.
    @param scheme: C{http} or C{https}, for L{url} and the readiness probe.
    @param twistd_args: options for twistd itself, before C{kvcache}.
    @param environ: the server's whole environment (default: the tests').

    @ivar port: the port of the current (or last) run.
    @ivar log_path: the log file of the current (or last) run.
    @ivar process: the C{subprocess.Popen} of the current (or last) run.
    """

    def __init__(
        self,
        data_dir: str,
        extra_args: Sequence[str] = (),
        log_dir: Optional[str] = None,
        scheme: str = "http",
        twistd_args: Sequence[str] = (),
        start_timeout: float = START_TIMEOUT,
        environ: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.data_dir = data_dir
        self.environ = None if environ is None else dict(environ)
        self.extra_args = list(extra_args)
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="kvtwist-e2e-log-")
        self.scheme = scheme
        self.twistd_args = list(twistd_args)
        self.start_timeout = start_timeout
        self.port: Optional[int] = None
        self.log_path: Optional[str] = None
        self.process: Optional[subprocess.Popen] = None
        self.starts = 0
        self._log_file = None

    # -- starting ----------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL of the running server, without a trailing slash."""
        if self.port is None:
            raise RuntimeError("the server has not been started")
        return "%s://%s:%d" % (self.scheme, HOST, self.port)

    @property
    def running(self) -> bool:
        """Whether the process exists and has not exited."""
        return self.process is not None and self.process.poll() is None

    def command(self, port: int) -> List[str]:
        """The full command line for a run on C{port}."""
        uses_placeholder = any("{port}" in arg for arg in self.extra_args)
        args = [arg.replace("{port}", str(port)) for arg in self.extra_args]
        if not uses_placeholder:
            args = ["--port", str(port)] + args
        return (
            twistd_command()
            + ["-n", "--pidfile="]
            + self.twistd_args
            + ["kvcache", "--data", self.data_dir]
            + args
        )

    def start(self, attempts: int = START_ATTEMPTS) -> "ServerProcess":
        """
        Start the server and return once it answers HTTP.

        @raise ServerFailed: if it exits, or does not answer within
            C{start_timeout} seconds (it is killed then).
        """
        if self.running:
            raise RuntimeError("the server is already running")
        for attempt in range(attempts):
            self.launch(free_port())
            try:
                self._wait_ready()
                return self
            except _PortTaken:
                # Someone bound the port between free_port() and twistd's
                # bind: pick another one.
                continue
        raise ServerFailed(
            "no free port after %d attempts" % (attempts,), self.log_text()
        )

    def launch(self, port: Optional[int] = None) -> None:
        """
        Start the process and return at once, without waiting for it to
        answer: for starts that must fail. L{start} is the usual way.
        """
        if port is None:
            port = free_port()
        self._close_log()
        self.starts += 1
        self.port = port
        self.log_path = os.path.join(self.log_dir, "server-%d.log" % (self.starts,))
        self._log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.command(port),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Its own session: a ^C meant for the test runner does not reach
            # it, and signals from this helper reach only this process.
            start_new_session=True,
            cwd=self.log_dir,
            env=self.environ,
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        # Bounded twice: by the deadline and by a count of polls.
        for _ in range(int(self.start_timeout / 0.02) + 1):
            if time.monotonic() > deadline:
                break
            assert self.process is not None
            if self.process.poll() is not None:
                log = self.log_text()
                if "Address already in use" in log:
                    raise _PortTaken()
                raise ServerFailed(
                    "the server exited with status %d before answering"
                    % (self.process.returncode,),
                    log,
                )
            # Only an answer after twistd logged its own listener counts:
            # another program that grabbed the port must not look ready.
            if self._logged_listening() and self._answers():
                return
            time.sleep(0.02)
        self.kill()
        raise ServerFailed(
            "the server did not answer within %.0f s" % (self.start_timeout,),
            self.log_text(),
        )

    def _logged_listening(self) -> bool:
        return " starting on " in self.log_text()

    def _answers(self) -> bool:
        # The listener starts while the store is still opening on its
        # thread, and requests in that window get 503 store-unavailable.
        # GET /v1/readyz is a 503 until the store is open (with auth on,
        # a 401 without the ops token says as much: the server answers).
        try:
            status, _, _ = http_request(self.url, "GET", READY_PATH, timeout=2.0)
        except (OSError, http.client.HTTPException):
            return False
        return status < 500

    # -- stopping ----------------------------------------------------------

    def send_signal(self, signum: int) -> None:
        """Send C{signum} to the server process (only to it)."""
        if self.process is None:
            raise RuntimeError("the server has not been started")
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """
        Wait for the process to exit and return its exit status (negative:
        killed by that signal).

        @raise ServerFailed: if it is still running after C{timeout}
            seconds; it is killed then.
        """
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServerFailed(
                "the server did not exit within %.0f s" % (timeout,), self.log_text()
            )
        self._close_log()
        return code

    async def wait_async(self, timeout: float = STOP_TIMEOUT, interval: float = 0.05) -> int:
        """
        Like L{wait}, but polls on the reactor, so the test's HTTP client
        keeps reading while the server shuts down. Use it from a coroutine
        wrapped in a Deferred.
        """
        assert self.process is not None
        for _ in range(int(timeout / interval) + 1):
            code = self.process.poll()
            if code is not None:
                self._close_log()
                return code
            await deferLater(reactor, interval, lambda: None)
        self.kill()
        raise ServerFailed(
            "the server did not exit within %.0f s" % (timeout,), self.log_text()
        )

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the server, wait for it, return its exit status."""
        self.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def interrupt(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGINT the server (as ^C would), wait, return its exit status."""
        self.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def kill(self) -> int:
        """SIGKILL the server (kill -9) and return its exit status."""
        if self.process is None:
            raise RuntimeError("the server has not been started")
        if self.process.poll() is None:
            self.process.kill()
        code = self.process.wait(timeout=STOP_TIMEOUT)
        self._close_log()
        return code

    def stop(self) -> None:
        """
        Cleanup for every path: kill the server if it still runs. Meant for
        C{addCleanup}; never raises for an already stopped server.
        """
        if self.running:
            self.kill()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # -- output ------------------------------------------------------------

    def log_text(self) -> str:
        """The output of the current (or last) run so far."""
        if self.log_path is None or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


class _PortTaken(Exception):
    """twistd could not bind the port it was given."""


def temp_dir(testcase, name: str = "e2e") -> str:
    """
    A fresh temporary directory outside the source tree, removed when
    C{testcase} ends (kept if C{KVTWIST_KEEP_E2E} is set in the environment).
    """
    path = tempfile.mkdtemp(prefix="kvtwist-%s-" % (name,))
    if not os.environ.get(KEEP_ENV):
        testcase.addCleanup(shutil.rmtree, path, True)
    return path


def start_server(
    testcase, data_dir: Optional[str] = None, extra_args: Sequence[str] = (), **kwargs
) -> ServerProcess:
    """
    Start a L{ServerProcess} for C{testcase}: its data and logs live in a
    temporary directory and it is killed when the test ends, whatever
    happens. Stop it earlier with L{ServerProcess.terminate} to check the
    exit status.
    """
    base = temp_dir(testcase)
    if data_dir is None:
        data_dir = os.path.join(base, "data")
    server = ServerProcess(
        data_dir, extra_args, log_dir=kwargs.pop("log_dir", base), **kwargs
    )
    testcase.addCleanup(server.stop)
    server.start()
    return server


def treq_client(testcase) -> HTTPClient:
    """
    A real treq client for C{testcase}. Its connections are not kept alive,
    and the pool is closed when the test ends, so no socket outlives the
    test (a server restart never meets a stale pooled connection either).
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    testcase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool), data_to_body_producer=body_producer)


def body_producer(data) -> IBodyProducer:
    """Producers pass through; bytes, text and files become a L{BytesProducer}."""
    if IBodyProducer.providedBy(data):
        return data
    return BytesProducer(data)


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body written in one go. treq's default producer feeds bodies
    through the global Cooperator, whose pending tick can outlive a test
    that ends as the server answers (trial then reports a dirty reactor).
    """

    def __init__(self, data) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif not isinstance(data, bytes):
            data = data.read()
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


__all__ = [
    "HOST",
    "ServerFailed",
    "THOROUGH",
    "ServerProcess",
    "connect",
    "free_port",
    "http_request",
    "run_twistd",
    "child_pids",
    "wait_ready",
    "start_server",
    "temp_dir",
    "treq_client",
    "twistd_command",
]

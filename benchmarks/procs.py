"""
Subprocesses of the benchmark: free loopback ports, processes started in
their own session and always killed (whole process group) in C{finally},
HTTP readiness probes, and RSS from C{/proc}.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> Optional[int]:
    """C{VmRSS} of C{pid} in KiB, or None if the process is gone."""
    try:
        with open("/proc/%d/status" % (pid,)) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class HttpRequest:
    """One request a probe or a load generator sends."""

    method: str
    path: str
    body: bytes = b""
    headers: Dict[str, str] = field(default_factory=dict)


def http_call(port: int, request: HttpRequest, timeout: float = 5.0) -> Tuple[int, bytes]:
    """Send C{request} on a fresh connection; (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = dict(request.headers)
        if request.method == "POST":
            headers.setdefault("Content-Length", str(len(request.body)))
        conn.request(request.method, request.path, body=request.body or None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class ProcessDied(RuntimeError):
    """A server exited before it was ready; the message holds its log tail."""


@dataclass
class Server:
    """A started server process and where its output goes."""

    name: str
    process: subprocess.Popen
    port: int
    log_path: str
    started_at: float

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, size: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - size))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_ready(self, probe: HttpRequest, timeout: float, expect: Tuple[int, ...] = (200,)) -> float:
        """
        Poll C{probe} until it answers one of the statuses C{expect}; returns
        the seconds since the process was started (its startup time).

        @raise ProcessDied: if the process exits first.
        @raise TimeoutError: if it is not ready within C{timeout} seconds.
        """
        deadline = self.started_at + timeout
        while True:
            if self.process.poll() is not None:
                raise ProcessDied(
                    "%s exited with status %s before it was ready:\n%s"
                    % (self.name, self.process.returncode, self.log_tail())
                )
            try:
                status, _ = http_call(self.port, probe, timeout=1.0)
            except (OSError, http.client.HTTPException):
                status = None
            if status in expect:
                return time.monotonic() - self.started_at
            if time.monotonic() > deadline:
                raise TimeoutError(
                    "%s not ready after %.0f s (last status %s):\n%s"
                    % (self.name, timeout, status, self.log_tail())
                )
            time.sleep(0.01)


class ProcessSet:
    """
    Every process the benchmark starts. Used as a context manager, it kills
    whatever is still running on the way out, whatever the exit path.
    """

    def __init__(self) -> None:
        self._servers: List[Server] = []

    def __enter__(self) -> "ProcessSet":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        log_path: str,
        cwd: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> Server:
        """Start C{argv} with stdout and stderr appended to C{log_path}."""
        with open(log_path, "ab") as log:
            started = time.monotonic()
            # A session of its own, so stop() can signal the whole group
            # (twistd, etcd and anything they spawn) and nothing else.
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        server = Server(name, process, port, log_path, started)
        self._servers.append(server)
        return server

    def stop(self, server: Server, grace: float = 10.0) -> Optional[int]:
        """SIGTERM the server's group, SIGKILL after C{grace}; its exit status."""
        process = server.process
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(5)
        # Leftover children of the group, if any, go too.
        _signal_group(process.pid, signal.SIGKILL)
        if server in self._servers:
            self._servers.remove(server)
        return process.returncode

    def stop_many(self, servers: List[Server], grace: float = 10.0) -> Dict[str, Optional[int]]:
        """
        Stop several servers at once: SIGTERM to all first, so their
        shutdowns overlap; their exit statuses by name.
        """
        for server in servers:
            if server.process.poll() is None:
                _signal_group(server.process.pid, signal.SIGTERM)
        return {server.name: self.stop(server, grace) for server in servers}

    def stop_all(self) -> None:
        for server in list(self._servers):
            try:
                self.stop(server)
            except Exception:  # keep killing the others
                _signal_group(server.process.pid, signal.SIGKILL)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass

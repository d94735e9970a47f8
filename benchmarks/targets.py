"""
The servers measured side by side. Each L{Target} knows how to start its
server on a free 127.0.0.1 port in a private temp dir, how to put the
benchmark's key in it, and which request reads that key back.

Names (used by C{--only} and in the report):

- C{kvcache}, C{kvcache-nolog}: the real C{twistd -n kvcache} (the second
  only when kvcache has an option that turns its access log off);
- C{kvcache-w2}, C{kvcache-w2-nolog}: the same with C{--workers 2};
- C{kvcache-w3}, C{kvcache-w4}: C{--workers 3} and C{4}, for the curve of
  throughput against workers (only when named in C{--only});
- C{ceiling-log}, C{ceiling-nolog}: L{benchmarks.servers.ceiling};
- C{ceiling2-log}, C{ceiling2-nolog}: the ceiling served by two processes
  on one port (C{SO_REUSEPORT}), the ceiling of two workers;
- C{baseline}: L{benchmarks.servers.baseline} (seed-style, never fsyncs);
- C{naive}: L{benchmarks.servers.naive} (a thread hop per GET);
- C{etcd}: etcd's v3 JSON gateway, when an C{etcd} binary is installed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from benchmarks.procs import HttpRequest, ProcessSet, Server, free_port, http_call
from benchmarks.servers.common import DOCUMENT, KEY, VALUE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Seconds a server may take to answer its first request.
START_TIMEOUT = 60.0

JSON_HEADERS = {"Content-Type": "application/json"}

#: The kvcache arguments of the several-process targets (C{kvcache-w2}).
WORKERS = ("--workers", "2")


def twistd_argv() -> List[str]:
    """The twistd of the interpreter running the benchmark (its venv)."""
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(candidate, os.X_OK):
        return [candidate]
    found = shutil.which("twistd")
    if found is None:
        raise RuntimeError("twistd not found next to %s nor on PATH" % (sys.executable,))
    return [found]


def child_env() -> Dict[str, str]:
    """
    The environment of our servers: the repo importable, and no
    C{KVCACHE_*} settings, so kvcache runs with its defaults plus exactly the
    arguments the report names.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVCACHE_")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def kvcache_help() -> str:
    """The text of C{twistd kvcache --help} ('' if it cannot be had)."""
    try:
        out = subprocess.run(
            twistd_argv() + ["kvcache", "--help"],
            capture_output=True, text=True, timeout=60, cwd=REPO, env=child_env(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def kvcache_nolog_args(help_text: str) -> Optional[List[str]]:
    """
    The kvcache arguments that turn its access log off, if its options have
    any (C{--access-log off|clf|json}); None otherwise.
    """
    if re.search(r"--access-log\b(?!-)", help_text):
        return ["--access-log", "off"]
    if re.search(r"--no-access-log\b(?!-)", help_text):
        return ["--no-access-log"]
    return None


@dataclass
class Target:
    """
    One server of the comparison.

    @ivar access_log: whether it writes an access-log line per request, so
        the report compares kvcache with the ceiling of the same setting.
    @ivar seed_api: whether it serves C{POST /set} + C{POST /commit}.
    """

    name: str
    description: str
    access_log: bool
    seed_api: bool
    extra_args: List[str] = field(default_factory=list)
    server: Optional[Server] = None

    # -- what each kind overrides ---------------------------------------

    def argv(self, port: int, data_dir: str) -> List[str]:
        raise NotImplementedError

    def read_request(self) -> HttpRequest:
        """The request that reads the benchmark's key."""
        return HttpRequest("GET", "/" + KEY)

    def load_key(self, port: int) -> None:
        """Put the benchmark's key in the server (through its own API)."""
        status, body = http_call(port, HttpRequest("POST", "/set", json.dumps({KEY: DOCUMENT}).encode(), JSON_HEADERS))
        if status not in (200, 201):
            raise RuntimeError("%s: POST /set answered %d %r" % (self.name, status, body[:200]))
        status, body = http_call(port, HttpRequest("POST", "/commit", b"", JSON_HEADERS))
        if status != 204:
            raise RuntimeError("%s: POST /commit answered %d %r" % (self.name, status, body[:200]))

    def liveness_request(self) -> HttpRequest:
        """A request answered 200 or 404 as soon as the server listens."""
        return HttpRequest("GET", "/" + KEY)

    # -- shared ----------------------------------------------------------

    def start(self, procs: ProcessSet, run_dir: str, data_dir: Optional[str] = None) -> Server:
        """
        Start the server (not waiting for it) on a free port, with its data
        in C{data_dir} (default: a new directory in C{run_dir}).
        """
        port = free_port()
        if data_dir is None:
            data_dir = os.path.join(run_dir, self.name + "-data")
            os.makedirs(data_dir, mode=0o700, exist_ok=True)
        self.server = procs.start(
            self.name,
            self.argv(port, data_dir),
            port,
            os.path.join(run_dir, self.name + ".log"),
            cwd=run_dir,
            env=child_env(),
        )
        return self.server

    def wait_ready(self) -> float:
        """Wait until it listens, load the key and check it reads back."""
        assert self.server is not None
        startup = _wait_listening(self.server, self.liveness_request())
        self.load_key(self.server.port)
        status, body = http_call(self.server.port, self.read_request())
        if status != 200:
            raise RuntimeError("%s: reading the key answered %d %r" % (self.name, status, body[:200]))
        return startup


def _wait_listening(server: Server, probe: HttpRequest) -> float:
    # Any HTTP answer means the server listens; before the key is loaded
    # kvcache and the baseline answer 404.
    return server.wait_ready(probe, START_TIMEOUT, expect=(200, 404))


class KvcacheTarget(Target):
    def argv(self, port: int, data_dir: str) -> List[str]:
        return twistd_argv() + [
            "-n", "--pidfile=", "kvcache", "--port", str(port), "--data", data_dir,
        ] + self.extra_args


class ModuleTarget(Target):
    """One of our own servers, C{python -m benchmarks.servers.<module>}."""

    module: str = ""

    def argv(self, port: int, data_dir: str) -> List[str]:
        argv = [sys.executable, "-m", "benchmarks.servers." + self.module, "--port", str(port), "--data", data_dir]
        if not self.access_log:
            argv.append("--no-access-log")
        return argv


class CeilingTarget(ModuleTarget):
    module = "ceiling"

    def argv(self, port: int, data_dir: str) -> List[str]:
        # extra_args: --processes N for the several-process ceiling.
        return super().argv(port, data_dir) + self.extra_args

    def load_key(self, port: int) -> None:
        pass  # every path answers the same bytes

    def liveness_request(self) -> HttpRequest:
        return self.read_request()


class BaselineTarget(ModuleTarget):
    module = "baseline"


class NaiveTarget(ModuleTarget):
    module = "naive"

    def load_key(self, port: int) -> None:
        pass  # written by the server itself at startup

    def liveness_request(self) -> HttpRequest:
        return self.read_request()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class EtcdTarget(Target):
    """A one-member etcd on loopback ports, read through its v3 JSON gateway."""

    def argv(self, port: int, data_dir: str) -> List[str]:
        peer = "http://127.0.0.1:%d" % (free_port(),)
        client = "http://127.0.0.1:%d" % (port,)
        return [
            shutil.which("etcd") or "etcd",
            "--name", "bench",
            "--data-dir", data_dir,
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", "bench=" + peer,
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-level", "warn",
        ]

    def liveness_request(self) -> HttpRequest:
        return HttpRequest("GET", "/health")

    def read_request(self) -> HttpRequest:
        body = json.dumps({"key": _b64(KEY)}).encode()
        return HttpRequest("POST", "/v3/kv/range", body, JSON_HEADERS)

    def load_key(self, port: int) -> None:
        body = json.dumps({"key": _b64(KEY), "value": base64.b64encode(VALUE).decode()}).encode()
        status, answer = http_call(port, HttpRequest("POST", "/v3/kv/put", body, JSON_HEADERS))
        if status != 200:
            raise RuntimeError("etcd: put answered %d %r" % (status, answer[:200]))

    def wait_ready(self) -> float:
        assert self.server is not None
        startup = self.server.wait_ready(self.liveness_request(), START_TIMEOUT)
        self.load_key(self.server.port)
        status, body = http_call(self.server.port, self.read_request())
        if status != 200 or b'"kvs"' not in body:
            raise RuntimeError("etcd: range answered %d %r" % (status, body[:200]))
        return startup


def all_targets(nolog_args: Optional[List[str]], skipped: Dict[str, str]) -> List[Target]:
    """
    Every target this machine can run, in the order rounds visit them;
    C{skipped} receives the name and reason of each one that cannot run.
    """
    targets: List[Target] = [
        KvcacheTarget("kvcache", "twistd -n kvcache, default access log", True, True),
    ]
    if nolog_args is not None:
        targets.append(
            KvcacheTarget("kvcache-nolog", "twistd -n kvcache " + " ".join(nolog_args), False, True, list(nolog_args))
        )
    else:
        skipped["kvcache-nolog"] = (
            "twistd kvcache has no option to turn its access log off yet "
            "(looked for --access-log and --no-access-log in its --help)"
        )
    targets.append(
        KvcacheTarget("kvcache-w2", "twistd -n kvcache --workers 2, default access log", True, True, list(WORKERS))
    )
    for workers in (3, 4):
        targets.append(
            KvcacheTarget(
                "kvcache-w%d" % (workers,),
                "twistd -n kvcache --workers %d, default access log" % (workers,),
                True,
                True,
                ["--workers", str(workers)],
            )
        )
    if nolog_args is not None:
        targets.append(
            KvcacheTarget(
                "kvcache-w2-nolog",
                "twistd -n kvcache --workers 2 " + " ".join(nolog_args),
                False,
                True,
                list(WORKERS) + list(nolog_args),
            )
        )
    targets += [
        CeilingTarget("ceiling-log", "bare twisted.web Resource, default access log", True, False),
        CeilingTarget("ceiling-nolog", "bare twisted.web Resource, no access log", False, False),
        CeilingTarget(
            "ceiling2-log", "two bare twisted.web processes on one port, default access log", True, False,
            ["--processes", "2"],
        ),
        CeilingTarget(
            "ceiling2-nolog", "two bare twisted.web processes on one port, no access log", False, False,
            ["--processes", "2"],
        ),
        BaselineTarget("baseline", "seed-style http.server + shelve (no fsync)", True, True),
        NaiveTarget("naive", "twisted.web, one deferToThread per GET over shelve", True, False),
    ]
    if shutil.which("etcd"):
        targets.append(EtcdTarget("etcd", "etcd v3 JSON gateway, POST /v3/kv/range", False, False))
    else:
        skipped["etcd"] = "no etcd binary on PATH (Debian package etcd-server)"
    return targets

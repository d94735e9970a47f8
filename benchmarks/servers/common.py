"""
What the benchmark's own servers share: the value they serve, command-line
parsing, and logging set up the way C{twistd -n} sets it up, so that a
Twisted peer pays for its access log exactly what kvcache does.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from typing import List, Optional

#: The JSON document every target stores under L{KEY} and serves back. The
#: ceiling returns these very bytes, so all targets send bodies of one size.
DOCUMENT = {"n": 1, "s": "a benchmark value of a few dozen bytes"}
VALUE = json.dumps(DOCUMENT, separators=(",", ":")).encode("utf-8")
#: The key the GET benchmarks read.
KEY = "bench"


def parse_args(description: str, argv: Optional[List[str]], **extra) -> argparse.Namespace:
    """
    Parse C{--port} (required), C{--data} and C{--no-access-log}; C{extra}
    names further boolean flags (C{name=help}).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", help="directory for the server's files")
    parser.add_argument(
        "--no-access-log",
        action="store_true",
        help="do not write an access-log line per request",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="serve from this many processes sharing the port (SO_REUSEPORT)",
    )
    parser.add_argument(
        "--listen-fd",
        type=int,
        help="serve on this inherited listening socket (set by --processes for the copies)",
    )
    for name, text in extra.items():
        parser.add_argument("--" + name.replace("_", "-"), action="store_true", help=text)
    return parser.parse_args(argv)


def log_like_twistd() -> None:
    """
    Send Twisted's log, and so the default access log, to stdout as text:
    what C{twistd -n} does when no C{--logfile} is given.
    """
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stdout)], redirectStandardIO=False
    )


def quiet_site_class():
    """
    A L{twisted.web.server.Site} subclass whose C{log} does nothing: the
    usual way to run twisted.web without an access log.
    """
    from twisted.web.server import Site

    class QuietSite(Site):
        def log(self, request) -> None:
            pass

    return QuietSite


def serve(site, port: int, processes: int = 1, listen_fd: Optional[int] = None) -> None:
    """
    Listen on 127.0.0.1:C{port} and run the reactor until SIGTERM.

    With C{processes} > 1, that many processes serve the port, as kvcache's
    workers do: this one binds a C{SO_REUSEPORT} socket per process, all
    listening before any process serves (so the kernel spreads the very
    first connections over every socket, not just over those of the
    processes that started first), keeps one and hands each other one to a
    copy of itself (C{--listen-fd}), started in its process group so the
    benchmark's stop ends them all. A copy serves the socket it inherited.
    """
    from twisted.internet import reactor

    if listen_fd is not None:
        sock = socket.socket(fileno=listen_fd)
    elif processes > 1:
        sockets = [_reuse_port_socket(port) for _ in range(processes)]
        for other in sockets[1:]:
            fd = other.fileno()
            subprocess.Popen(_copy_argv() + ["--listen-fd", str(fd)], pass_fds=[fd])
            other.close()
        sock = sockets[0]
    else:
        reactor.listenTCP(port, site, interface="127.0.0.1")
        reactor.run()
        return
    sock.setblocking(False)
    reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, site)
    sock.close()
    reactor.run()


def _reuse_port_socket(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:C{port} that others may share (C{SO_REUSEPORT})."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    # Twisted's listenTCP backlog, as the one-process server has.
    sock.listen(50)
    return sock


def _copy_argv() -> List[str]:
    """
    This server's command line without C{--processes N} (in either
    spelling): a copy serves its one inherited socket.
    """
    copy = [sys.executable, "-m", _main_module()]
    args = iter(sys.argv[1:])
    for arg in args:
        if arg == "--processes":
            next(args, None)
        elif not arg.startswith("--processes="):
            copy.append(arg)
    return copy


def _main_module() -> str:
    """The C{-m} name of the running server (C{benchmarks.servers.ceiling})."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec.name if spec is not None else "benchmarks.servers.ceiling"

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
    parser.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT (set by --processes)")
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


def serve(site, port: int, processes: int = 1, reuse_port: bool = False) -> None:
    """
    Listen on 127.0.0.1:C{port} and run the reactor until SIGTERM. With
    C{processes} > 1, that many processes serve the port, each with its own
    C{SO_REUSEPORT} socket (the kernel spreads connections over them): this
    one and copies of it started with C{--reuse-port}, in its process group
    so the benchmark's stop ends them all.
    """
    from twisted.internet import reactor

    if processes > 1:
        copy = [sys.executable, "-m", _main_module()] + [
            arg for arg in sys.argv[1:] if not arg.startswith("--processes")
        ]
        copy = [arg for i, arg in enumerate(copy) if not (i > 0 and copy[i - 1] == "--processes")]
        for _ in range(processes - 1):
            subprocess.Popen(copy + ["--reuse-port"])
        reuse_port = True
    if not reuse_port:
        reactor.listenTCP(port, site, interface="127.0.0.1")
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(50)
        sock.setblocking(False)
        reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, site)
        sock.close()
    reactor.run()


def _main_module() -> str:
    """The C{-m} name of the running server (C{benchmarks.servers.ceiling})."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec.name if spec is not None else "benchmarks.servers.ceiling"

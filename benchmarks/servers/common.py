"""
What the benchmark's own servers share: the value they serve, command-line
parsing, and logging set up the way C{twistd -n} sets it up, so that a
Twisted peer pays for its access log exactly what kvcache does.
"""

from __future__ import annotations

import argparse
import json
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


def serve(site, port: int) -> None:
    """Listen on 127.0.0.1:C{port} and run the reactor until SIGTERM."""
    from twisted.internet import reactor

    reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.run()

"""
The C{twistd kvcache} command: its L{Options} and L{makeService}.

The dropin in C{twisted/plugins/kvtwist_kvcache.py} only points here.
"""

from __future__ import annotations

from typing import List

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.python import usage

from kvtwist.errors import StoreCorrupt
from kvtwist.limits import Limits, MiB
from kvtwist.store.cache import CachedStore
from kvtwist.service import GracefulSignals, StoreService, store_thread_pool
from kvtwist.store.shelve_store import ShelveStore, check_data_dir
from kvtwist.sweeper import Sweeper
from kvtwist.web.http import KVSite
from kvtwist.web.root import make_root


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


_positive_int.coerceDoc = "A positive integer."  # type: ignore[attr-defined]


class Options(usage.Options):
    """Options of C{twistd kvcache}."""

    synopsis = "[options]"
    longdesc = (
        "Serve a kvtwist key-value cache over HTTP. By default it listens on "
        "127.0.0.1:8080 and keeps its data in ./kvcache-data."
    )

    optParameters = [
        ["port", "p", 8080, "TCP port to listen on (with --host).", int],
        ["host", None, "127.0.0.1", "Interface for --port (default: loopback only)."],
        ["data", "d", "./kvcache-data", "Directory of the durable store."],
        [
            "max-body",
            None,
            Limits.max_body,
            "Largest request body in bytes (413 beyond).",
            _positive_int,
        ],
        [
            "cache-size",
            None,
            64,
            "Read cache bound in MiB (committed values served from memory).",
            _positive_int,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """
        Listen on a Twisted server endpoint string (repeatable), e.g.
        tcp:8080:interface=127.0.0.1, unix:/run/kvcache.sock. Replaces
        --port/--host.
        """
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        if not 0 < self["port"] < 65536:
            raise usage.UsageError("--port must be between 1 and 65535")

    def endpoints(self) -> List[str]:
        """The endpoint strings to listen on."""
        if self["listen"]:
            return list(self["listen"])
        host = self["host"].replace(":", "\\:")
        return ["tcp:%d:interface=%s" % (self["port"], host)]


def makeService(options: Options, reactor=None) -> MultiService:
    """
    Build kvcache: the store Service first (so it stops last, after the
    listeners), then one listening Service per endpoint.

    The data directory is opened and checked here, before the reactor and
    the store thread start, so a damaged store ends startup with a message
    and a non-zero exit instead of serving an empty store.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    try:
        check_data_dir(options["data"])
    except StoreCorrupt as e:
        raise SystemExit("kvcache: cannot start: %s" % (e,))
    limits = Limits(max_body=options["max-body"])
    pool = store_thread_pool()
    # The preflight above has just run SQLite's integrity check.
    store = CachedStore(
        ShelveStore(options["data"], reactor, pool, check_integrity=False),
        options["cache-size"] * MiB,
    )
    top = MultiService()
    GracefulSignals(reactor).setServiceParent(top)
    StoreService(store, pool, reactor).setServiceParent(top)
    # After the store: stopped before it, so no sweep hits a closed store.
    Sweeper(store, reactor, limits).setServiceParent(top)
    site = KVSite(make_root(store, limits), max_body=limits.max_body)
    for endpoint in options.endpoints():
        strports.service(endpoint, site, reactor=reactor).setServiceParent(top)
    return top

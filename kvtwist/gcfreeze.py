# -*- test-case-name: tests.unit.test_gcfreeze -*-
"""
Startup's objects taken out of the garbage collector's way.

CPython's cyclic collector scans every tracked object in its oldest
generation now and then. A started kvcache holds about 60,000 such objects
that live as long as the process (modules, classes, the Resource tree,
Twisted's and prometheus_client's state), and each full scan of them
stalls the reactor thread for milliseconds: at 50 connections the p99 of
a cached GET was 13-16 ms with the scans and 4 ms without, for a median of
3 ms either way (docs/performance.md, "GET tail latency").
C{gc.freeze()} moves every object that exists at that moment to a
permanent generation the collector never scans; objects made later are
collected as before. It is called once, when the process is serving, after
a full collection, so that no garbage of startup is frozen with them.
"""

from __future__ import annotations

import gc
from typing import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger

log = Logger()


def freeze_startup(collect: Callable[[], object] = gc.collect, freeze: Callable[[], None] = gc.freeze) -> None:
    """Collect startup's garbage, then freeze what remains (see the module docstring)."""
    collect()
    freeze()
    log.debug("kvcache: {count} startup objects frozen", count=gc.get_freeze_count())


class FreezeStartupObjects(Service):
    """
    Calls L{freeze_startup} once the reactor runs, when every Service
    before it has started (the store open, the listeners bound).
    """

    def __init__(self, reactor: IReactorCore, freeze: Callable[[], None] = freeze_startup) -> None:
        self._reactor = reactor
        self._freeze = freeze

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._freeze)

"""
Services that own kvtwist's long-lived resources.

L{StoreService} owns the store's one-thread pool: it starts the pool and
opens the store on startup, and on shutdown lets in-flight commits finish,
closes the store on its own thread, then stops the pool (the lifecycle of
Twisted's C{adbapi.ConnectionPool}).
"""

from __future__ import annotations

import os

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from kvtwist.interfaces import IKeyValueStore

log = Logger()


def store_thread_pool() -> ThreadPool:
    """
    The dedicated pool for a shelve store: exactly one thread, because shelve
    and SQLite connections must not be shared between threads.
    """
    return ThreadPool(minthreads=1, maxthreads=1, name="kvtwist-store")


class StoreService(Service):
    """
    Runs C{store} on C{threadpool} for as long as the service runs.

    If the store cannot be opened the process stops with exit status 1: a
    kvcache that cannot read its data must not serve an empty store.
    """

    name = "kvtwist-store"

    def __init__(self, store: IKeyValueStore, threadpool, reactor) -> None:
        self.store = store
        self.threadpool = threadpool
        self._reactor = reactor
        self.ready: Deferred = Deferred()

    def startService(self) -> None:
        super().startService()
        self.threadpool.start()
        d = self.store.open()
        d.addCallbacks(self.ready.callback, self._cannot_open)

    def _cannot_open(self, reason) -> None:
        log.critical(
            "kvcache cannot open its store, stopping: {reason}",
            reason=reason.getErrorMessage(),
        )
        self._reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self._reactor.stop()

    def stopService(self) -> Deferred:
        super().stopService()
        d = self.store.close()

        def stop_pool(result: object) -> object:
            self.threadpool.stop()
            return result

        return d.addBoth(stop_pool)

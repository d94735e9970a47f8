"""
Services that own kvtwist's long-lived resources.

L{StoreService} owns the store's one-thread pool: it starts the pool and
opens the store on startup, and on shutdown lets in-flight commits finish,
closes the store on its own thread, then stops the pool (the lifecycle of
Twisted's C{adbapi.ConnectionPool}).
"""

from __future__ import annotations

import os
import signal

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
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


class GracefulSignals(Service):
    """
    Make SIGTERM and SIGINT a clean stop with exit status 0.

    twistd's own handlers stop the reactor and then re-raise the signal at
    exit, so the process dies with status -15/-2 even after a clean
    shutdown. These handlers only ask the reactor to stop: services stop in
    order (listeners, sweeper, then the store, which finishes in-flight
    commits), and twistd exits 0.
    """

    name = "kvtwist-signals"

    def __init__(self, reactor) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)

    def _stop(self, signum: int, frame: object) -> None:
        # Signal handlers run between bytecodes of the main thread: hand the
        # stop to the reactor rather than stopping from inside the handler.
        self._reactor.callFromThread(self._stop_once)

    def _stop_once(self) -> None:
        # A second signal during shutdown finds the reactor already stopping.
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass


class DataLockService(Service):
    """
    Keeps the data directory's lock (L{kvtwist.store.datalock}) and, once
    running (after twistd has daemonized, if it does), writes this
    process's PID into the lock file. The lock is never released here: the
    kernel drops it when the process exits, after the store has closed.
    """

    name = "kvtwist-data-lock"

    def __init__(self, lock) -> None:
        self.lock = lock

    def startService(self) -> None:
        super().startService()
        self.lock.record_pid()


class StoreService(Service):
    """
    Runs C{store} on C{threadpool} for as long as the service runs (a store
    that needs no thread, like etcd's, passes C{None}).

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
        if self.threadpool is not None:
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
            if self.threadpool is not None:
                self.threadpool.stop()
            return result

        return d.addBoth(stop_pool)

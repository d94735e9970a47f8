# -*- test-case-name: tests.contract.test_store_shelve -*-
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
from typing import Callable, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from kvtwist.interfaces import IKeyValueStore, IWorkInFlight

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

    def __init__(self, reactor) -> None:
        self.setName("kvtwist-signals")
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

    def __init__(self, lock) -> None:
        self.setName("kvtwist-data-lock")
        self.lock = lock

    def startService(self) -> None:
        super().startService()
        self.lock.record_pid()


#: Seconds a graceful stop waits for the store by default (C{--stop-timeout}).
STOP_TIMEOUT = 10.0


class StoreService(Service):
    """
    Runs C{store} on C{threadpool} for as long as the service runs (a store
    that needs no thread, like etcd's, passes C{None}).

    If the store cannot be opened the process stops with exit status 1: a
    kvcache that cannot read its data must not serve an empty store.

    A stop waits for the store's work in progress, but not forever: after
    C{stop_timeout} seconds it logs that the stop was cut short and what
    was abandoned (as L{IWorkInFlight} names it), and ends the process with
    C{exit(0)}. Nothing acknowledged is lost that way: staged writes and
    transactions are volatile by design, and a commit not yet answered is
    either wholly on disk or rolled back by SQLite at the next start.

    @param work_in_flight: says what the store is still doing (the store
        under the caches, when it provides L{IWorkInFlight}).
    @param exit: ends the process (C{os._exit}; tests pass a recorder).
    """

    def __init__(
        self,
        store: IKeyValueStore,
        threadpool,
        reactor,
        stop_timeout: float = STOP_TIMEOUT,
        work_in_flight: Optional[IWorkInFlight] = None,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self.setName("kvtwist-store")
        self.store = store
        self.threadpool = threadpool
        self._reactor = reactor
        self.ready: Deferred = Deferred()
        self.stop_timeout = stop_timeout
        self._work = work_in_flight
        self._exit = exit

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
        # Said before closing: a store that is closing has nothing queued.
        cut_short = self._reactor.callLater(self.stop_timeout, self._cut_short)
        d = self.store.close()

        def stop_pool(result: object) -> object:
            if cut_short.active():
                cut_short.cancel()
            if self.threadpool is not None:
                self.threadpool.stop()
            return result

        return d.addBoth(stop_pool)

    def _cut_short(self) -> None:
        work = self._work.work_in_flight() if self._work is not None else "the store's close"
        log.warn(
            "graceful stop cut short after {timeout:g} s (--stop-timeout): "
            "abandoning {work}; staged writes and open transactions are "
            "volatile, and an unanswered commit is either on disk or rolled "
            "back by SQLite at the next start",
            timeout=self.stop_timeout,
            work=work,
        )
        # The store thread may be deep in SQLite or in a long Python loop;
        # neither can be interrupted safely, and the interpreter would wait
        # for that thread at exit. Every log line is flushed already.
        self._exit(0)

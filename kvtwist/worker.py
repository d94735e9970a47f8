# -*- test-case-name: tests.e2e.test_workers_e2e -*-
"""
One worker of C{twistd kvcache --workers N}: C{python -m kvtwist.worker},
spawned by the owner (L{kvtwist.owner.WorkerPool}), never by hand.

It finds its AMP connection to the owner on file descriptor 3 and its
listening sockets after it (C{--socket FD:FAMILY}), resolves the same
configuration as the owner (the owner's command-line settings in
C{--given}, the same environment and files), and serves the same Resource
tree as one process does, over a L{kvtwist.store.remote.RemoteStore} with
its own read cache and change feed. On etcd (C{--store etcd://}) it is a
node of its own instead: its own etcd client, cache and watch, with
transactions in etcd, like a separate kvcache process. It exits when the owner goes away
(the AMP connection closes) or on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import sys
from typing import Callable, List, Optional, Sequence

from twisted.internet import protocol, tcp, unix
from twisted.internet.defer import Deferred
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from kvtwist.config import resolve
from kvtwist.config_values import is_etcd_store
from kvtwist.events import ChangeHub
from kvtwist.gcfreeze import freeze_startup
from kvtwist.metrics import Metrics, TimedStore
from kvtwist.owner import AMP_FD
from kvtwist.store.cache import CachedStore
from kvtwist.store.remote import RemoteStore, RemoteTransactions, WorkerProtocol, call

log = Logger()


class SharedUNIXPort(unix.Port):
    """
    A UNIX listening port adopted from the owner. Twisted's own, adopted,
    still shuts the socket down and removes its file when it stops
    listening, and sets the file's mode to its default (0666) when it
    starts: each would change the socket the owner and the other workers
    share. This one keeps the owner's mode, and leaves the socket and its
    file alone when it stops (the owner removes the file at its own stop).
    """

    # Shared with the owner and the other workers: closed, never shut down.
    _shouldShutdown = False

    def startListening(self) -> None:
        # The file's mode is the owner's (the endpoint's mode=); keep it.
        self.mode = stat.S_IMODE(os.stat(self._bindPath).st_mode)
        super().startListening()

    def connectionLost(self, reason) -> None:
        tcp.Port.connectionLost(self, reason)


class OwnerMetrics:
    """What a worker's C{/v1/metrics} exposes: every process's, from the owner."""

    def __init__(self, protocol: WorkerProtocol) -> None:
        self._protocol = protocol

    def exposition(self):
        return call(self._protocol, "metrics")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kvtwist.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--given", type=json.loads, required=True)
    parser.add_argument("--socket", action="append", default=[], help="FD:FAMILY of a listening socket")
    return parser.parse_args(argv)


class Worker:
    """
    The worker's parts, wired once the owner has said hello: the remote
    store, its cache and change feed, the transactions, the site.
    """

    def __init__(
        self, reactor, index: int, config, sockets: List[str], freeze: Callable[[], None] = freeze_startup
    ) -> None:
        self.reactor = reactor
        self.freeze = freeze
        self.index = index
        self.config = config
        self.sockets = sockets
        self.metrics = Metrics()
        self.protocol = WorkerProtocol(scrape=self.metrics.exposition)
        limits = config.limits
        self.store: Optional[RemoteStore] = None
        if is_etcd_store(config["store"]):
            # A node of its own: its own etcd client, cache and transactions
            # kept in etcd, as a separate kvcache process would have.
            from kvtwist.tap import open_etcd_store, transaction_manager

            backing = open_etcd_store(config, reactor)
            timed = TimedStore(backing, self.metrics, reactor)
            self.cached = CachedStore(timed, limits.cache_bytes)
            self.transactions = transaction_manager(backing, timed, self.cached, reactor, limits)
            self.metrics.watch(transactions=self.transactions)
        else:
            self.store = RemoteStore(self.protocol, reactor)
            self.cached = CachedStore(self.store, limits.cache_bytes)
            self.transactions = RemoteTransactions(self.store, limits.txn_timeout)
        self.hub = ChangeHub(self.cached, limits.watch_history, limits.watch_history_bytes)

    def connect(self, fd: int = AMP_FD) -> None:
        """Take up the AMP connection to the owner on C{fd}."""
        factory = protocol.Factory.forProtocol(lambda: self.protocol)
        self.reactor.adoptStreamConnection(fd, socket.AF_UNIX, factory)
        os.close(fd)
        self.protocol.lost.addCallback(self._owner_gone)

    def _owner_gone(self, _: object) -> None:
        log.info("kvcache worker {index}: the owner is gone; exiting", index=self.index)
        if self.reactor.running:
            self.reactor.stop()

    def start(self):
        """
        Say hello and catch up with the owner's history (or, on etcd, open
        this node's own store), then serve.
        """
        if self.store is None:
            self.reactor.addSystemEventTrigger("before", "shutdown", self.cached.close)
            d = self.cached.open()
        else:
            d = call(self.protocol, "hello").addCallback(self.store.join)
        return d.addCallback(self._serve).addErrback(self._failed)

    def _serve(self, _: object) -> Deferred:
        # Imported here: the site pulls in the whole web layer.
        from kvtwist.tap import build_site

        site = build_site(
            self.config, self.cached, self.transactions, self.hub, self.metrics, self.reactor, OwnerMetrics(self.protocol)
        )
        for described in self.sockets:
            fd, family = (int(part) for part in described.split(":"))
            if family == socket.AF_UNIX:
                # What adoptStreamPort does, with a port that leaves the
                # socket's file to the owner when this worker stops.
                port = SharedUNIXPort._fromListeningDescriptor(self.reactor, fd, site)
                port.startListening()
            else:
                self.reactor.adoptStreamPort(fd, family, site)
            os.close(fd)
        log.info(
            "kvcache worker {index} (pid {pid}) starting on {count} socket(s)",
            index=self.index,
            pid=os.getpid(),
            count=len(self.sockets),
        )
        # Serving from here on: what exists now lives as long as the worker.
        self.freeze()
        return call(self.protocol, "ready")

    def _failed(self, reason) -> None:
        log.failure("kvcache worker {index} could not start", reason, index=self.index)
        if self.reactor.running:
            self.reactor.stop()


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run one worker until the owner goes away or SIGTERM."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    from twisted.internet import reactor

    config = resolve(args.given, os.environ)
    worker = Worker(reactor, args.index, config, args.socket)
    worker.connect()
    reactor.callWhenRunning(worker.start)
    reactor.run()


if __name__ == "__main__":
    main()

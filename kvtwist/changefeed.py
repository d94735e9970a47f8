# -*- test-case-name: tests.unit.test_workers_amp -*-
"""
The owner's change feed when kvcache serves with C{--workers N}
(docs/architecture.md, "Workers"): every commit of the owner's store, sent
to every worker as L{kvtwist.amp.Feed}, and which revision each worker has
applied, so that the owner answers a commit only once the other workers
have it (L{ChangeFeed.applied}): a GET on any worker after a commit's 2xx
sees it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.protocols import amp

from kvtwist.amp import Dumped, Feed
from kvtwist.interfaces import IKeyValueStore
from kvtwist.model import CommitResult
from kvtwist.store.remote import state_of

log = Logger()

#: Seconds a worker may take to apply a commit from the feed; past it the
#: worker is cut off and replaced (commits stop waiting for it).
FEED_TIMEOUT = 5.0


class ChangeFeed:
    """
    Every commit of C{store}, sent to every attached worker, and which
    revision each of them has applied. A worker that does not answer within
    L{FEED_TIMEOUT} seconds of the store's clock (a stopped process) is cut
    off, so no commit waits for it forever.

    Commits are sent in batches: L{publish} only keeps a commit, and
    L{flush} sends everything kept as one L{Feed} per worker. The owner
    flushes before it answers any commit (L{applied}), and a store's group
    commit tells its listeners of every commit of the group before it
    answers the first, so one group commit is one L{Feed}; a commit nobody
    answers (the sweeper's) is flushed on the reactor's next turn.
    """

    def __init__(self, store: IKeyValueStore) -> None:
        self._store = store
        self._applied: Dict[amp.AMP, int] = {}
        #: (revision, the worker not waited for, the Deferred to fire).
        self._waiting: List[Tuple[int, Optional[amp.AMP], Deferred]] = []
        self._pending: List[CommitResult] = []
        self._flush_call: Optional[Any] = None
        store.add_listener(self.publish)

    def attach(self, worker: amp.AMP, revision: int) -> None:
        """Send C{worker} every commit after C{revision} from now on."""
        # Commits kept until now are at most C{revision}: the others get them.
        self.flush()
        self._applied[worker] = revision

    def detach(self, worker: amp.AMP) -> None:
        """C{worker} is gone: commits no longer wait for it."""
        self._applied.pop(worker, None)
        self._settle()

    def publish(self, result: CommitResult) -> None:
        """A store listener: keep C{result} for the next L{flush}."""
        self._pending.append(result)
        if self._flush_call is None:
            self._flush_call = self._store.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Send every commit kept since the last flush to every worker, as one L{Feed}."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._pending:
            return
        results, self._pending = self._pending, []
        revision = results[-1].revision
        # Pickled once for every worker.
        feed = Dumped((results, state_of(self._store)))
        for worker in list(self._applied):
            d = worker.callRemote(Feed, feed=feed)
            d.addTimeout(FEED_TIMEOUT, self._store.clock)
            d.addCallbacks(self._applied_by, self._failed, callbackArgs=(worker, revision), errbackArgs=(worker,))

    def publish_state(self) -> Deferred:
        """
        Send every worker the store's attributes after a change that made
        no commit (a compaction): a Feed of no commits. A Deferred firing
        once every worker applied it (or was cut off for failing to).
        """
        self.flush()
        feed = Dumped(([], state_of(self._store)))
        sent = []
        for worker in list(self._applied):
            d = worker.callRemote(Feed, feed=feed)
            d.addTimeout(FEED_TIMEOUT, self._store.clock)
            sent.append(d.addErrback(self._failed, worker))
        return DeferredList(sent)

    def _applied_by(self, _: object, worker: amp.AMP, revision: int) -> None:
        if worker in self._applied and revision > self._applied[worker]:
            self._applied[worker] = revision
            self._settle()

    def _failed(self, reason, worker: amp.AMP) -> None:
        # A worker that missed a commit would serve stale reads: cut it
        # off (it exits, and is started again with an empty cache).
        log.warn("a worker failed to apply the change feed: {reason}", reason=reason.getErrorMessage())
        self.detach(worker)
        if worker.transport is not None:
            worker.transport.loseConnection()

    def applied(self, revision: int, but_for: Optional[amp.AMP] = None) -> Deferred:
        """
        A Deferred firing once every attached worker but C{but_for} has
        applied C{revision}; the feed is flushed first.

        C{but_for} is the worker a commit is answered to: its L{Feed} left
        on the same connection before the answer will, so it applies the
        commit before it reads the answer, and waiting for it to say so
        would add a round trip to every commit.
        """
        self.flush()
        if self._lowest(but_for) >= revision:
            return succeed(None)
        d: Deferred = Deferred()
        self._waiting.append((revision, but_for, d))
        return d

    def _lowest(self, but_for: Optional[amp.AMP]) -> float:
        return min((applied for worker, applied in self._applied.items() if worker is not but_for), default=float("inf"))

    def _settle(self) -> None:
        done = [d for revision, but_for, d in self._waiting if revision <= self._lowest(but_for)]
        if done:
            self._waiting = [entry for entry in self._waiting if entry[2] not in done]
            for d in done:
                d.callback(None)

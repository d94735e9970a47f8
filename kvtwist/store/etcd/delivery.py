# -*- test-case-name: tests.contract.test_store_etcd -*-
"""
Ordered delivery: listeners hear every revision that changed the store's
key range once, in revision order, though concurrent commits' answers
arrive in any order and other clients' changes come through the watch
(docs/etcd.md, "Listeners").

L{Delivery} keeps the commits still in flight and the results waiting for
them; while the watch runs it is the sequencer (L{Sequencer}) and results
wait for it instead.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Dict, List, Optional, Protocol, Set, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from kvtwist.model import CommitResult
from kvtwist.store.listeners import Listeners

__all__ = ["Delivery", "Held", "Sequencer"]

#: One result waiting for delivery: (revision, tie-breaker, result, the
#: committer's waiter, reactor time it was held).
Held = Tuple[int, int, CommitResult, Deferred, float]


class Sequencer(Protocol):
    """What L{Delivery} needs of the watch (L{kvtwist.store.etcd.watchloop.WatchLoop})."""

    @property
    def live(self) -> bool:
        """Whether the watch runs now: it then delivers in revision order."""

    @property
    def running(self) -> bool:
        """Whether a watch loop runs, so a lost watch will resume."""

    def held_changed(self) -> None:
        """Results were held or released: bound how long they wait."""


class _NoWatch:
    """The sequencer until the store's watch loop is attached: none."""

    live = False
    running = False

    def held_changed(self) -> None:
        pass


class Delivery:
    """
    The ordered delivery of one store's results to its listeners.

    @ivar listeners: who hears each revision's L{CommitResult}.
    @ivar sequencer: the watch; results wait for it while it runs.
    @ivar unsettled: commits whose transaction may still be applied (by
        token), each with the revision seen before it was sent.
    @ivar held: own results waiting for delivery (a heap of L{Held}).
    @ivar delivered: the largest revision listeners heard (or were told
        they missed).
    @ivar own_direct: own commits delivered directly (watch down) above
        the watch's last revision: the resumed watch skips them instead of
        calling them lost history.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._tokens = itertools.count()
        self.listeners = Listeners()
        self.sequencer: Sequencer = _NoWatch()
        self.unsettled: Dict[int, int] = {}
        self.held: List[Held] = []
        self.delivered = 0
        self.own_direct: Set[int] = set()

    def token(self) -> int:
        """A new token for one commit (or a tie-breaker)."""
        return next(self._tokens)

    def unsettle(self, token: int, revision: int) -> None:
        """Commit C{token} may apply from now on, above C{revision}."""
        self.unsettled.setdefault(token, revision)

    def settle(self, token: int, results: List[CommitResult]) -> Deferred:
        """
        Commit C{token} is over; queue its C{results} for the listeners.

        Listeners must hear commits in revision order, but concurrent
        commits' answers arrive in any order, and other clients' changes
        arrive through the watch. See L{deliver}.

        @return: a Deferred that fires once C{results} were delivered (or
            the watch delivered their revisions first).
        """
        self.unsettled.pop(token, None)
        waiter: Deferred = succeed(None)
        now = self._reactor.seconds()
        for result in results:
            if result.changes:
                waiter = Deferred()
                heapq.heappush(self.held, (result.revision, self.token(), result, waiter, now))
        self.deliver()
        return waiter

    def deliver(self) -> None:
        """
        Release held results of this store's own commits.

        One whose revision listeners already heard (the watch delivered it)
        only wakes its committer. While the watch runs, the rest wait for it:
        it delivers them in order among other clients' changes. Otherwise a
        result is delivered once no unsettled commit could take a revision
        below it: an unsettled commit was registered with the revision seen
        before it was sent, and its revision will be above that.
        """
        if self.unsettled:
            # A revision belongs to one transaction only: floor + 1 is safe.
            limit: Optional[int] = min(self.unsettled.values()) + 1
        else:
            limit = None
        while self.held:
            revision, _, result, waiter, _ = self.held[0]
            if revision <= self.delivered:
                heapq.heappop(self.held)
                waiter.callback(None)
                continue
            if self.sequencer.live or (limit is not None and revision > limit):
                break
            heapq.heappop(self.held)
            self.delivered = revision
            if self.sequencer.running:
                self.own_direct.add(revision)
            self.listeners.notify(result)
            waiter.callback(None)
        self.sequencer.held_changed()

    def notify(self, revision: int, result: CommitResult) -> None:
        """Tell the listeners C{result}, which the watch delivers in order."""
        self.delivered = revision
        self.listeners.notify(result)

    def held_result(self, revision: int) -> Optional[CommitResult]:
        """The held result of this store's own commit at C{revision}, if any."""
        for item in self.held:
            if item[0] == revision:
                return item[2]
        return None

    def oldest_held(self) -> Tuple[int, float]:
        """The lowest held revision and the earliest time a result was held."""
        return min(item[0] for item in self.held), min(item[4] for item in self.held)

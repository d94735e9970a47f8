# -*- test-case-name: tests.unit.test_client_coordination -*-
"""
L{kvtwist.client.lease}, L{kvtwist.client.lock} and
L{kvtwist.client.election} against the whole Resource tree in memory
(StubTreq over a MemoryStore), the server's sweeper and the clients'
keepalives sharing one task.Clock.
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import client
from kvtwist.client.election import Election, NotLeader, leader, observe
from kvtwist.client.lease import Lease, LeaseLost, revoke, show_lease
from kvtwist.client.lock import Lock
from kvtwist.client.errors import KVClientError
from kvtwist.errors import StoreUnavailable
from kvtwist.limits import Limits
from kvtwist.sweeper import Sweeper
from kvtwist.testing import MemoryStore, memory_root

URL = "http://kv.test"


class CoordinationCase(SynchronousTestCase):
    """One clock for the server's sweeper and the clients' keepalives."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore(self.clock)
        limits = Limits(sweep_interval=0.5)
        self.http = StubTreq(memory_root(self.store, limits=limits))
        self.sweeper = Sweeper(self.store, self.clock, limits)
        self.sweeper.startService()
        self.addCleanup(self.sweeper.stopService)

    def start(self, work) -> Deferred:
        """Start a coroutine (or take a Deferred) and serve its first request."""
        d = work if isinstance(work, Deferred) else Deferred.fromCoroutine(work)
        self.http.flush()
        return d

    def settle(self, d: Deferred):
        """Pump the in-memory HTTP until C{d} fires; its result."""
        for _ in range(50):
            self.http.flush()
            if d.called:
                break
        return self.successResultOf(d)

    def tick(self, seconds: float, step: float = 0.25) -> None:
        """Let C{seconds} pass on the shared clock, serving requests as they come."""
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            for _ in range(5):
                self.http.flush()

    def keys(self):
        return sorted(self.store.rows)


class LeaseTests(CoordinationCase):
    """A Lease renews itself at ttl/3 and reports its loss."""

    def test_kept_alive_while_held_and_revoked_on_exit(self) -> None:
        """Keepalives keep the lease and its key for many ttls; leaving the block revokes it."""
        lease = Lease(self.http, URL, 3, reactor=self.clock)
        self.settle(self.start(lease.__aenter__()))
        self.settle(self.start(client.put(self.http, URL, "svc/a", b"up", lease=lease.id)))
        revision = self.store.revision
        self.tick(10)
        self.assertTrue(lease.held)
        self.assertEqual((self.keys(), self.store.revision), (["svc/a"], revision))
        self.settle(self.start(lease.__aexit__(None, None, None)))
        self.assertEqual(self.keys(), [])
        self.assertFalse(lease.held)
        # The sweeper's next run is all that is left: no keepalive timer.
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_lost_when_revoked_elsewhere(self) -> None:
        """A lease revoked by another client is lost at the next keepalive: on_lost and lost fire."""
        seen = []
        lease = Lease(self.http, URL, 3, reactor=self.clock, on_lost=seen.append)
        self.settle(self.start(lease.grant()))
        self.settle(self.start(revoke(self.http, URL, lease.id)))
        self.tick(1.5)
        self.assertEqual(len(seen), 1)
        self.assertIsInstance(self.successResultOf(lease.lost), LeaseLost)
        self.assertFalse(lease.held)

    def test_lost_at_its_deadline_when_renewals_fail(self) -> None:
        """With the server unreachable, the lease counts itself lost at its own deadline."""
        lease = Lease(self.http, URL, 3, reactor=self.clock)
        self.settle(self.start(lease.grant()))
        self.store.fail_commits = StoreUnavailable("the disk is gone")
        self.tick(2.75)
        self.assertTrue(lease.held)
        self.tick(0.5)
        self.assertFalse(lease.held)
        self.assertIsInstance(self.successResultOf(lease.lost), LeaseLost)
        self.flushLoggedErrors(KVClientError, StoreUnavailable)

    def test_show(self) -> None:
        """show_lease answers the lease's ttl, remaining time and keys."""
        lease = Lease(self.http, URL, 3, reactor=self.clock)
        self.settle(self.start(lease.grant()))
        shown = self.settle(self.start(show_lease(self.http, URL, lease.id)))
        self.assertEqual(shown, {"id": lease.id, "ttl": 3, "remaining": 3, "keys": []})


class LockTests(CoordinationCase):
    """The fair Lock: one holder, a queue by create revision, takeover on loss."""

    def lock(self, **kwargs) -> Lock:
        return Lock(self.http, URL, "jobs/x", reactor=self.clock, ttl=3, **kwargs)

    def test_one_holder_then_the_next_in_line(self) -> None:
        """Waiters get the lock in the order they queued, each with a higher fencing revision."""
        first, second, third = self.lock(), self.lock(), self.lock()
        self.settle(self.start(first.acquire()))
        waiting = [self.start(second.acquire()), self.start(third.acquire())]
        self.tick(1)
        self.assertEqual([d.called for d in waiting], [False, False])
        self.assertTrue(first.held)
        first_fencing = first.fencing_revision
        self.settle(self.start(first.release()))
        self.settle(waiting[0])
        self.assertFalse(waiting[1].called)
        self.assertTrue(second.held and not first.held)
        fencing = [first_fencing, second.fencing_revision]
        self.settle(self.start(second.release()))
        self.settle(waiting[1])
        self.assertTrue(third.held)
        fencing.append(third.fencing_revision)
        self.assertEqual(fencing, sorted(fencing))

    def test_dead_holder_is_taken_over_after_its_ttl(self) -> None:
        """A holder that stops renewing loses the lock; the waiter takes over within ttl + a sweep."""
        holder, waiter = self.lock(), self.lock()
        self.settle(self.start(holder.acquire()))
        waiting = self.start(waiter.acquire())
        # The holder's process dies: no more keepalives.
        holder.lease._stop()
        self.tick(2.5)
        self.assertFalse(waiting.called)
        self.tick(1.5)
        self.settle(waiting)
        self.assertTrue(waiter.held)

    def test_holder_whose_lease_is_lost_stops_holding(self) -> None:
        """A holder whose lease is revoked elsewhere stops being the holder and its lost fires."""
        seen = []
        holder = self.lock(on_lost=seen.append)
        self.settle(self.start(holder.acquire()))
        self.settle(self.start(revoke(self.http, URL, holder.lease.id)))
        self.tick(1.5)
        self.assertFalse(holder.held)
        self.assertIsInstance(self.successResultOf(holder.lost), LeaseLost)
        self.assertEqual(len(seen), 1)

    def test_context_manager(self) -> None:
        """async with holds the lock inside the block and releases it after."""
        lock = self.lock(value=b"me")

        async def use():
            async with lock:
                return lock.held, self.store.rows[lock.key].value

        self.assertEqual(self.settle(self.start(use())), (True, b"me"))
        self.assertEqual(self.keys(), [])


class ElectionTests(CoordinationCase):
    """Election: campaign, proclaim, resign, leader."""

    def election(self) -> Election:
        return Election(self.http, URL, "svc/leader", reactor=self.clock, ttl=3)

    def test_campaign_proclaim_resign(self) -> None:
        """The first candidate leads and proclaims; on resigning the next leads at once."""
        one, two = self.election(), self.election()
        self.settle(self.start(one.campaign(b"one")))
        waiting = self.start(two.campaign(b"two"))
        self.tick(1)
        self.assertFalse(waiting.called)
        self.assertEqual(self.settle(self.start(leader(self.http, URL, "svc/leader"))), b"one")
        self.settle(self.start(one.proclaim(b"one again")))
        self.assertEqual(self.settle(self.start(leader(self.http, URL, "svc/leader"))), b"one again")
        self.failureResultOf(self.start(two.proclaim(b"me")), NotLeader)
        self.settle(self.start(one.resign()))
        self.settle(waiting)
        self.assertTrue(two.leading and not one.leading)
        self.assertEqual(self.settle(self.start(leader(self.http, URL, "svc/leader"))), b"two")
        self.settle(self.start(two.resign()))
        self.assertIsNone(self.settle(self.start(leader(self.http, URL, "svc/leader"))))

    def test_observe_follows_the_leader(self) -> None:
        """observe() yields the leader's value now, then each new one as leadership changes."""
        one, two = self.election(), self.election()
        self.settle(self.start(one.campaign(b"one")))
        waiting = self.start(two.campaign(b"two"))
        seen = []
        values = observe(self.http, URL, "svc/leader", clock=self.clock)

        async def follow():
            async for value in values:
                seen.append(value)
                if len(seen) == 3:
                    break
            # Ends the event stream the generator holds.
            await values.aclose()

        following = self.start(follow())
        self.tick(1)
        self.settle(self.start(one.proclaim(b"one v2")))
        self.settle(self.start(one.resign()))
        self.settle(waiting)
        self.settle(following)
        self.assertEqual(seen, [b"one", b"one v2", b"two"])

# -*- test-case-name: tests.unit.test_staging -*-
"""
The accounting of staged bytes: each op weighs its key and value bytes plus
L{OP_OVERHEAD}, and the process-wide L{StagedMemory} always equals what the
staging areas hold plus what commits in flight still hold.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.errors import StagedMemoryFull, StoreUnavailable
from kvtwist.limits import Limits
from kvtwist.model import Delete, Put
from kvtwist.staging import OP_OVERHEAD, StagedMemory, StagingArea, staged_cost
from kvtwist.testing import MemoryStore
from kvtwist.transactions import TransactionManager


class StagedCostTests(SynchronousTestCase):
    """What one op weighs."""

    def test_cost_counts_overhead(self):
        """A put weighs OP_OVERHEAD plus its UTF-8 key and value bytes; a delete, plus its key."""
        self.assertEqual(staged_cost(Put("é", b"abc")), OP_OVERHEAD + 2 + 3)
        self.assertEqual(staged_cost(Delete("k")), OP_OVERHEAD + 1)


class StagedMemoryTests(SynchronousTestCase):
    """One account shared by several staging areas."""

    def setUp(self):
        self.memory = StagedMemory(limit=3 * staged_cost(Put("a", b"x" * 100)))
        self.first = StagingArea(Limits(), self.memory)
        self.second = StagingArea(Limits(), self.memory)

    def test_areas_share_the_total(self):
        """Staging in any area counts; the one passing the total fails and stages nothing."""
        self.first.stage([Put("a", b"x" * 100), Put("b", b"x" * 100)])
        self.second.stage([Put("a", b"x" * 100)])
        error = self.assertRaises(StagedMemoryFull, self.second.stage, [Put("b", b"x")])
        self.assertEqual((error.extra["limit"], error.code), (self.memory.limit, "staged-memory-full"))
        self.assertEqual(len(self.second), 1)
        self.assertEqual(self.memory.used, self.first.size + self.second.size)

    def test_replacing_a_key_charges_the_difference(self):
        """Staging a key again charges only the change in its size."""
        self.first.stage([Put("a", b"x" * 100)])
        self.first.stage([Put("a", b"x" * 10)])
        self.assertEqual(self.memory.used, staged_cost(Put("a", b"x" * 10)))

    def test_taken_ops_stay_charged_until_settled(self):
        """Ops taken for a commit count until settled; a restore after a failure keeps the sum right."""
        self.first.stage([Put("a", b"x" * 100), Put("b", b"x" * 100)])
        taken = self.first.take()
        self.assertEqual(self.first.size, 0)
        self.assertEqual(self.memory.used, 2 * staged_cost(Put("a", b"x" * 100)))
        # Staged meanwhile, overriding one of the taken ops.
        self.first.stage([Put("a", b"y")])
        self.first.restore(taken)
        self.first.settle(taken)
        self.assertEqual(self.memory.used, self.first.size)
        self.assertEqual(self.first.size, staged_cost(Put("a", b"y")) + staged_cost(Put("b", b"x" * 100)))

    def test_discard_releases(self):
        """Discarding an area releases everything it held."""
        self.first.stage([Put("a", b"x" * 100)])
        self.first.discard()
        self.assertEqual((self.memory.used, len(self.first)), (0, 0))


class ManagerAccountingTests(SynchronousTestCase):
    """The transaction manager's account across commits that succeed, fail or are pending."""

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.manager = TransactionManager(self.clock, Limits(), self.store)

    def test_failed_queue_commit_restores_and_keeps_count(self):
        """A queue commit that fails puts its ops back and leaves them counted once."""
        queue = self.manager.queue
        self.successResultOf(queue.record([Put("a", b"x" * 100)]))
        self.store.fail_commits = StoreUnavailable("disk on fire")
        self.failureResultOf(queue.commit(), StoreUnavailable)
        self.assertEqual(self.manager.staged_memory.used, staged_cost(Put("a", b"x" * 100)))
        self.store.fail_commits = None
        self.successResultOf(queue.commit())
        self.assertEqual(self.manager.staged_memory.used, 0)

    def test_commit_in_flight_stays_counted(self):
        """Bytes of a commit in flight stay counted until it is answered, even if its transaction ends first."""
        pending = Deferred()
        self.store.commit = lambda ops, checks: pending
        txn = self.successResultOf(self.manager.begin())
        self.successResultOf(txn.record([Put("a", b"x" * 100)]))
        committing = txn.commit()
        self.successResultOf(self.manager.finish(txn.id))
        self.assertEqual(self.manager.staged_memory.used, staged_cost(Put("a", b"x" * 100)))
        pending.errback(StoreUnavailable("gone"))
        self.failureResultOf(committing, StoreUnavailable)
        self.assertEqual(self.manager.staged_memory.used, 0)

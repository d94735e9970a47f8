"""
The background compactor: what the history retention compacts to, in
bounded steps on an injected clock, over a MemoryStore.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.compactor import Compactor
from kvtwist.limits import HistoryRetention, Limits
from kvtwist.model import Put
from kvtwist.testing import MemoryStore


class CompactorTests(SynchronousTestCase):
    """Compactor over a MemoryStore and a Clock."""

    def start(self, retention, batch=10_000, interval=10.0):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore(self.clock)
        limits = Limits(
            history_retention=HistoryRetention.parse(retention),
            compact_batch=batch,
            compact_interval=interval,
        )
        self.compactor = Compactor(self.store, self.clock, limits)
        self.compactor.startService()
        self.addCleanup(self.compactor.stopService)

    def commit(self, count=1):
        for _ in range(count):
            self.successResultOf(self.store.commit([Put("a", b"x"), Put("b", b"y")]))

    def test_keeps_a_number_of_revisions(self):
        """With N revisions kept, each check compacts to the revision N back."""
        self.start("3")
        self.commit(10)
        self.clock.advance(10)
        self.assertEqual(self.store.compact_revision, 7)
        self.assertEqual(self.store.history_size, 2 * 4)
        self.commit(2)
        self.clock.advance(9.9)
        self.assertEqual(self.store.compact_revision, 7)
        self.clock.advance(0.1)
        self.assertEqual(self.store.compact_revision, 9)

    def test_keeps_an_age(self):
        """
        With an age kept, the compactor compacts to the newest revision it
        saw at least that long ago; revisions made since are all kept.
        """
        self.start("1m")
        self.commit(5)
        self.clock.advance(10)  # sees revision 5
        self.commit(5)
        for _ in range(5):
            self.clock.advance(10)  # sees revision 10, 50 s after the first look
        self.assertEqual(self.store.compact_revision, 0)
        self.clock.advance(10)  # the look at revision 5 is 60 s old
        self.assertEqual(self.store.compact_revision, 5)
        self.clock.advance(60)
        self.assertEqual(self.store.compact_revision, 10)

    def test_stricter_bound_wins(self):
        """With an age and a count, the history never holds more than either allows."""
        self.start("1h,4")
        self.commit(10)
        self.clock.advance(10)
        self.assertEqual(self.store.compact_revision, 6)

    def test_forever_never_compacts(self):
        """history-retention forever keeps everything."""
        self.start("forever")
        self.commit(10)
        self.clock.advance(3600 * 24)
        self.assertEqual((self.store.compact_revision, self.store.history_size), (0, 20))

    def test_bounded_steps(self):
        """
        Each step removes at most the batch's records (whole commits); the
        next step follows at once, not after the interval, until the target.
        """
        self.start("1", batch=2)
        self.commit(5)
        steps = []
        compact = self.store.compact

        def recorded(revision, max_records):
            before = self.store.history_size
            d = compact(revision, max_records)
            steps.append((self.store.compact_revision, before - self.store.history_size))
            return d

        self.store.compact = recorded
        self.clock.advance(10)
        self.assertEqual(steps, [(1, 0), (2, 2), (3, 2), (4, 2)])
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), self.clock.seconds() + 10)

    def test_stop_cancels_the_timer(self):
        """A stopped compactor leaves no call pending on the clock."""
        self.start("1")
        self.compactor.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

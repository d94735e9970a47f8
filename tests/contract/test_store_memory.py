"""The store contract run against L{kvtwist.testing.MemoryStore}."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.interfaces import ICountedStore
from kvtwist.testing import MemoryStore
from tests.contract.store_contract import StoreContract


class MemoryStoreContractTests(StoreContract, SynchronousTestCase):
    """MemoryStore keeps the whole store contract."""

    capabilities = (ICountedStore,)

    async def make_store(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        return MemoryStore(self.clock)

    def advance(self, seconds):
        self.clock.advance(seconds)

    def settle(self, d):
        self.successResultOf(d)

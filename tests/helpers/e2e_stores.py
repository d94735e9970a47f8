"""
The backing stores an end-to-end suite runs on (a helper, not a test
module): each HTTP suite is written once and run against the shelve store
and against an etcd-backed server (docs/testing.md), by parametrisation rather
than copies.

A suite's body is a mixin that is not a TestCase: its tests get their
servers from C{self.start_kvcache(...)} and ask C{self.exact_revisions}
where the stores differ. Each body then becomes two concrete TestCases::

    class KeySmokeTests:
        async def test_put(self):
            server = self.start_kvcache()
            ...

    class KeySmokeTestsOnShelve(OnShelve, KeySmokeTests, TestCase):
        "..."

    class KeySmokeTestsOnEtcd(OnEtcd, KeySmokeTests, TestCase):
        "..."

so C{pytest -k OnEtcd} runs only the etcd variants (and C{-k OnShelve}
only the shelve ones). L{OnShelve} starts C{twistd -n kvcache} on the shelve
store in a temporary data directory, as the suites always did. L{OnEtcd}
runs ONE single-member etcd per class and starts each server with
C{--store etcd://...} and an C{--etcd-prefix} of its own, so no test sees
another's keys, transactions or seed queue. Without an etcd binary the
L{OnEtcd} classes are skipped with the reason; CI installs Debian's
C{etcd-server} (C{./run.sh test}), so they run there.

The class's etcd is started by the first test of the class that runs (trial's
own runner has no class hooks) and stopped by C{tearDownClass}, which pytest
calls; under C{python -m twisted.trial} the harness's C{atexit} hook stops it
(and on Linux it dies with the test process anyway).

For pytest-style tests, L{STORES} names both variants and L{etcd_server_args}
gives the server options for a cluster.
"""

from __future__ import annotations

import itertools
from typing import ClassVar, FrozenSet, List, Optional, Sequence

from tests.helpers.e2e import ServerProcess, start_server
from tests.helpers.etcd import EtcdCluster, etcd_available

ETCD_AVAILABLE, ETCD_WHY = etcd_available()

#: The variant names, as test ids: C{-k OnEtcd} selects the etcd ones.
STORES = ("OnShelve", "OnEtcd")

# Every etcd-backed server of this process gets its own prefix from this.
_prefixes = itertools.count(1)


def etcd_server_args(cluster: EtcdCluster, name: str) -> List[str]:
    """
    The C{twistd kvcache} options for a server on C{cluster}, under a key
    prefix of its own (made from C{name} and a counter: unique in this
    process, so a rerun of a test does not meet the keys of the first run).
    """
    store = "etcd://" + ",".join(url.split("//", 1)[1] for url in cluster.client_urls)
    prefix = "/e2e/%s-%d/" % (name, next(_prefixes))
    return ["--store", store, "--etcd-prefix", prefix]


class OnShelve:
    """Servers on the embedded shelve store, in a fresh data directory each."""

    #: The store the servers of this class run on.
    store_name: ClassVar[str] = "shelve"
    #: Each commit that changes something takes exactly the next revision,
    #: and a fresh store starts at 0 (docs/api.md "Revisions").
    exact_revisions: ClassVar[bool] = True

    def start_kvcache(self, extra_args: Sequence[str] = (), **kwargs) -> ServerProcess:
        """A running kvcache for this test (killed when it ends)."""
        return start_server(self, extra_args=list(extra_args), **kwargs)

    def backend_ports(self) -> FrozenSet[int]:
        """The loopback ports a server connects to for its store: none."""
        return frozenset()


class OnWorkers(OnShelve):
    """
    Servers on the shelve store with C{--workers 2}: an owner and two
    worker processes sharing the port, so a suite run this way shows the
    same behaviour whichever worker each connection reaches.
    """

    #: The workers each server runs.
    workers: ClassVar[int] = 2

    def start_kvcache(self, extra_args: Sequence[str] = (), **kwargs) -> ServerProcess:
        """A running kvcache with workers for this test (killed when it ends)."""
        return super().start_kvcache(["--workers", str(self.workers)] + list(extra_args), **kwargs)


class OnEtcd:
    """
    Servers on one single-member etcd per class, each under its own
    C{--etcd-prefix}.
    """

    if not ETCD_AVAILABLE:
        skip = ETCD_WHY

    store_name: ClassVar[str] = "etcd"
    #: etcd's revision grows with every write to the cluster (other
    #: prefixes, lease expiries), so revisions increase but may skip.
    exact_revisions: ClassVar[bool] = False

    #: The class's etcd once its first test started it.
    etcd: ClassVar[Optional[EtcdCluster]] = None
    #: Why it would not start: the class's later tests fail at once with it
    #: instead of waiting for etcd again.
    etcd_failure: ClassVar[Optional[BaseException]] = None

    def setUp(self):
        cls = type(self)
        if cls.etcd_failure is not None:
            raise cls.etcd_failure
        if cls.etcd is None:
            try:
                cls.etcd = EtcdCluster(1).start()
            except BaseException as e:
                cls.etcd_failure = e
                raise
        return super().setUp()

    @classmethod
    def tearDownClass(cls):
        if cls.etcd is not None:
            cls.etcd.stop()
            cls.etcd = None
        super().tearDownClass()

    def start_kvcache(self, extra_args: Sequence[str] = (), **kwargs) -> ServerProcess:
        """A running kvcache on the class's etcd (killed when the test ends)."""
        assert self.etcd is not None, "OnEtcd.setUp starts the class's etcd"
        args = etcd_server_args(self.etcd, self._testMethodName) + list(extra_args)
        return start_server(self, extra_args=args, **kwargs)

    def backend_ports(self) -> FrozenSet[int]:
        """The loopback ports a server connects to for its store: etcd's."""
        assert self.etcd is not None
        return frozenset(member.client_port for member in self.etcd.members)


class OnEtcdWorkers(OnEtcd):
    """
    Servers on etcd with C{--workers 2}: each worker a node of its own on
    the class's etcd, under the server's prefix.
    """

    def start_kvcache(self, extra_args: Sequence[str] = (), **kwargs) -> ServerProcess:
        """A running kvcache with two worker nodes on the class's etcd."""
        return super().start_kvcache(["--workers", "2"] + list(extra_args), **kwargs)


__all__ = [
    "ETCD_AVAILABLE",
    "ETCD_WHY",
    "OnEtcd",
    "OnEtcdWorkers",
    "OnWorkers",
    "OnShelve",
    "STORES",
    "etcd_server_args",
]

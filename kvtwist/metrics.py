# -*- test-case-name: tests.unit.test_ops -*-
"""
kvcache's Prometheus metrics, served at C{/v1/metrics} through
C{prometheus_client} with a registry of its own (never the process-global
one, so two kvcaches in one process, or tests, never share counters).

What is counted:

  - requests by route template, method and status, and their latency
    (L{RequestStats});
  - requests refused by a limit (C{kvtwist_rejected_requests_total}, label
    C{limit}: C{max_body}, C{request_timeout}, C{max_connections},
    C{max_header_bytes}, C{max_headers} from the HTTP layer; the
    application's own C{max_staged_ops}, C{max_open_transactions}, ...) and
    malformed requests;
  - commits by outcome and their latency (L{TimedStore}), syncs and how
    many commits each carried (C{ShelveStore.sync_observer});
  - the state of the process at scrape time (L{StateCollector}): cache
    hits, misses, entries and bytes, keys, open transactions, watchers,
    expirations, open connections, the store's revision.

Everything here runs on the reactor thread: counters are touched from
request handling and commit callbacks, and collected by the C{/v1/metrics}
Resource.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from kvtwist.errors import ConflictError
from kvtwist.interfaces import (
    ICountedStore,
    IEtcdConnection,
    IHistoricalStore,
    IKeyValueStore,
    ILeaseListing,
    ILeasingStore,
    ILinearizableReads,
    IReadCache,
    IWatchedStore,
    IWorkInFlight,
)
from kvtwist.store.capabilities import ForwardsHistory, ForwardsLeases, passes_capabilities_of

#: The C{Content-Type} of the exposition: the classic text format 0.0.4,
#: which C{generate_latest} writes and every Prometheus version reads
#: (newer prometheus_client releases announce 1.0.0 by default, which
#: Prometheus 2 does not know).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: Request latency buckets (seconds): a cached GET takes well under a
#: millisecond, a commit a few, long-polls up to minutes.
REQUEST_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
#: Commit and sync latency buckets (seconds).
COMMIT_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)
#: Commits carried by one sync (group commit).
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

#: Limits whose refusals are counted from the start (so they read 0, not
#: absent, before the first refusal).
KNOWN_LIMITS = (
    "max_body",
    "request_timeout",
    "max_connections",
    "max_header_bytes",
    "max_headers",
    "max_keys_per_request",
    "max_staged_ops",
    "max_staged_bytes",
    "max_open_transactions",
    "max_leases",
    "max_batch_ops",
    "max_watchers",
)


class RequestStats:
    """
    Requests by route, method and status, and their latency by route: a
    C{prometheus_client} collector over plain counters.

    Why not C{Counter} and C{Histogram} here: they take a lock per update,
    and measured on this machine a labelled increment plus an observation
    cost about 5 microseconds per request, against roughly 60 for a whole
    cached GET; these plain counters cost well under one. The exposition is
    still C{prometheus_client}'s.
    """

    def __init__(self, buckets: Sequence[float] = REQUEST_BUCKETS) -> None:
        self._bounds = tuple(buckets)
        self._counts: Dict[Tuple[str, Union[str, bytes], int], int] = {}
        # Per route: one count per bucket plus +Inf, and the sum.
        self._histograms: Dict[str, List[int]] = {}
        self._sums: Dict[str, float] = {}

    def observe(self, route: str, method: Union[str, bytes], status: int, seconds: float) -> None:
        """Count one finished request (C{method} as bytes is decoded only when collected)."""
        key = (route, method, status)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        histogram = self._histograms.get(route)
        if histogram is None:
            histogram = self._histograms[route] = [0] * (len(self._bounds) + 1)
            self._sums[route] = 0.0
        histogram[bisect_left(self._bounds, seconds)] += 1
        self._sums[route] += seconds

    def collect(self) -> Iterator[Metric]:
        """The metric families, for the registry."""
        requests = CounterMetricFamily(
            "kvtwist_http_requests",
            "HTTP requests answered, by route template, method and status.",
            labels=["route", "method", "status"],
        )
        merged: Dict[Tuple[str, str, int], int] = {}
        for (route, method, status), value in self._counts.items():
            if isinstance(method, bytes):
                method = method.decode("ascii", "replace")
            key = (route, method, status)
            merged[key] = merged.get(key, 0) + value
        for (route, method, status), value in sorted(merged.items()):
            requests.add_metric([route, method, str(status)], value)
        yield requests
        latency = HistogramMetricFamily(
            "kvtwist_http_request_duration_seconds",
            "Seconds from a request's last byte to its answer's last byte, by route template.",
            labels=["route"],
        )
        for route, counts in sorted(self._histograms.items()):
            cumulative = 0
            buckets = []
            for bound, value in zip(self._bounds + (float("inf"),), counts):
                cumulative += value
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            latency.add_metric([route], buckets, self._sums[route])
        yield latency

    def describe(self) -> Iterable[Metric]:
        return self.collect()


class StateCollector:
    """
    Gauges and counters read from the live objects at scrape time; any of
    them may be None (then its metrics are left out).
    """

    def __init__(
        self,
        store: Any = None,
        transactions: Any = None,
        watchers: Any = None,
        hub: Any = None,
        sweeper: Any = None,
        site: Any = None,
    ) -> None:
        self.store = store
        self.transactions = transactions
        self.watchers = watchers
        self.hub = hub
        self.sweeper = sweeper
        self.site = site

    def collect(self) -> Iterator[Metric]:
        """The metric families, for the registry."""
        store = self.store
        if store is not None:
            if IReadCache.providedBy(store):
                yield CounterMetricFamily(
                    "kvtwist_cache_hits", "Reads answered from the read cache.", value=store.hits
                )
                yield CounterMetricFamily(
                    "kvtwist_cache_misses", "Reads that went to the store.", value=store.misses
                )
                yield GaugeMetricFamily(
                    "kvtwist_cache_entries", "Keys (and known-absent keys) in the read cache.", value=len(store)
                )
                yield GaugeMetricFamily(
                    "kvtwist_cache_bytes", "Bytes the read cache holds, by its own accounting.", value=store.size
                )
                yield GaugeMetricFamily(
                    "kvtwist_cache_max_bytes", "The read cache's bound (--cache-size).", value=store.max_bytes
                )
            # Read as 0 from a store that keeps no count (etcd), as before.
            keys = store.key_count if ICountedStore.providedBy(store) else 0
            yield GaugeMetricFamily(
                "kvtwist_keys", "Keys in the store (live and not yet swept).", value=keys
            )
            yield GaugeMetricFamily(
                "kvtwist_store_revision", "The store's revision.", value=store.revision
            )
            if ILeasingStore.providedBy(store):
                yield GaugeMetricFamily(
                    "kvtwist_open_leases", "Leases held (granted, not yet revoked or expired).",
                    value=store.lease_count,
                )
            if IHistoricalStore.providedBy(store):
                yield GaugeMetricFamily(
                    "kvtwist_compact_revision",
                    "The oldest revision the history still answers reads at.",
                    value=store.compact_revision,
                )
                yield GaugeMetricFamily(
                    "kvtwist_history_records",
                    "History records kept (one per key a commit changed, until compaction).",
                    value=store.history_size,
                )
        if self.transactions is not None:
            yield GaugeMetricFamily(
                "kvtwist_open_transactions", "Multi-request transactions open now.", value=len(self.transactions)
            )
        if self.watchers is not None:
            yield GaugeMetricFamily(
                "kvtwist_watchers", "Long-polls and event streams open now.", value=self.watchers.active
            )
        if self.hub is not None:
            yield GaugeMetricFamily(
                "kvtwist_change_subscribers", "Subscriptions to the change feed.", value=self.hub.subscribers
            )
        if self.sweeper is not None:
            yield CounterMetricFamily(
                "kvtwist_expirations", "Expired keys removed by the sweeper.", value=self.sweeper.swept
            )
            yield CounterMetricFamily(
                "kvtwist_lease_expirations", "Leases ended by the sweeper at their deadline.",
                value=self.sweeper.leases_expired,
            )
        if self.site is not None:
            yield GaugeMetricFamily(
                "kvtwist_open_connections", "HTTP connections open now.", value=self.site.open_connections
            )
            yield GaugeMetricFamily(
                "kvtwist_max_connections", "The connection cap (--max-connections).", value=self.site.max_connections
            )

    def describe(self) -> Iterable[Metric]:
        # Nothing up front: what exists depends on what was given.
        return []


class Metrics:
    """
    Every metric of one kvcache, in its own L{CollectorRegistry}.

    @ivar registry: the registry C{/v1/metrics} exposes.
    @ivar requests: the L{RequestStats}.
    @ivar state: the L{StateCollector}; set its attributes (or call
        L{watch}) to expose live objects.
    """

    def __init__(self, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = RequestStats()
        self.registry.register(self.requests)
        self.state = StateCollector()
        self.registry.register(self.state)
        self.rejected = Counter(
            "kvtwist_rejected_requests",
            "Requests (or connections) refused by a limit, by limit name.",
            ["limit"],
            registry=self.registry,
        )
        for limit in KNOWN_LIMITS:
            self.rejected.labels(limit)
        self.malformed = Counter(
            "kvtwist_malformed_requests",
            "Requests refused as malformed HTTP (400 before any route).",
            registry=self.registry,
        )
        self.commits = Counter(
            "kvtwist_commits",
            "Commits by outcome: ok, conflict (checks failed) or error.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("ok", "conflict", "error"):
            self.commits.labels(outcome)
        self.commit_seconds = Histogram(
            "kvtwist_commit_duration_seconds",
            "Seconds from a commit's submission to its durable acknowledgement (queueing and sync).",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.sync_seconds = Histogram(
            "kvtwist_sync_duration_seconds",
            "Seconds one group commit's sync (SQLite COMMIT with fsync) took.",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.sync_commits = Histogram(
            "kvtwist_commits_per_sync",
            "Commits carried by one sync (group commit).",
            buckets=GROUP_BUCKETS,
            registry=self.registry,
        )
        self.syncs_waited = Histogram(
            "kvtwist_commit_syncs_waited",
            "Syncs each commit waited for, its own included: 1 (the store "
            "thread was idle) or 2 (a group commit was in progress); group "
            "commit promises never more.",
            buckets=(1, 2, 3, 4),
            registry=self.registry,
        )
        if process:
            # CPU, memory and file descriptors of this process (Linux /proc).
            ProcessCollector(registry=self.registry)

    def watch(self, **objects: Any) -> None:
        """Expose live objects (see L{StateCollector}'s parameters)."""
        for name, value in objects.items():
            if not hasattr(self.state, name):
                raise TypeError("unknown state object %r" % (name,))
            setattr(self.state, name, value)

    def reject(self, limit: str) -> None:
        """Count one request or connection refused by C{limit}."""
        self.rejected.labels(limit).inc()

    def bad_request(self) -> None:
        """Count one request refused as malformed."""
        self.malformed.inc()

    def observe_sync(self, seconds: float, commits: int) -> None:
        """A C{ShelveStore.sync_observer}: one group commit was synced."""
        self.sync_seconds.observe(seconds)
        self.sync_commits.observe(commits)

    def observe_syncs_waited(self, syncs: int) -> None:
        """A C{ShelveStore.syncs_waited_observer}: one commit was answered."""
        self.syncs_waited.observe(syncs)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def merge_expositions(texts: Dict[str, bytes], label: str = "worker") -> bytes:
    """
    One exposition of several processes' (C{--workers N}): every sample
    gains the label C{label} naming its process (the keys of C{texts}),
    and families of one name are merged.
    """
    families: Dict[str, Metric] = {}
    for process, text in texts.items():
        for family in text_string_to_metric_families(text.decode("utf-8")):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                merged.samples.append(sample._replace(labels={**sample.labels, label: process}))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _Families:
    """A collector of fixed metric families (for L{merge_expositions})."""

    def __init__(self, families: List[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


#: The capabilities L{TimedStore} passes on from the store it wraps: it
#: forwards each one's calls (the commits among them counted and timed).
TIMED_CAPABILITIES = (
    IHistoricalStore,
    ILeasingStore,
    ILeaseListing,
    ILinearizableReads,
    IWatchedStore,
    ICountedStore,
    IEtcdConnection,
    IWorkInFlight,
)


@implementer(IKeyValueStore)
class TimedStore(ForwardsHistory, ForwardsLeases):
    """
    C{store} with its commits counted and timed on C{clock}; everything
    else passes straight through. kvcache puts it under the read cache, so
    reads answered from memory never pass here.

    It provides exactly the capabilities of L{TIMED_CAPABILITIES} that
    C{store} provides, and forwards nothing else: a read cache
    (L{IReadCache}) goes above it, never below.
    """

    def __init__(self, store: IKeyValueStore, metrics: Metrics, clock: IReactorTime) -> None:
        if IReadCache.providedBy(store):
            raise TypeError("time the commits of the store under the read cache, not the cache")
        self.store = store
        self._metrics = metrics
        self._clock = clock
        passes_capabilities_of(self, store, TIMED_CAPABILITIES)

    @property
    def revision(self) -> int:  # type: ignore[override]
        return self.store.revision

    @property
    def clock(self) -> IReactorTime:  # type: ignore[override]
        return self.store.clock

    def open(self) -> Deferred:
        return self.store.open()

    def close(self) -> Deferred:
        return self.store.close()

    def get(self, key: str) -> Deferred:
        return self.store.get(key)

    def get_many(self, keys: Iterable[str]) -> Deferred:
        return self.store.get_many(keys)

    def list(
        self, prefix: str, after: Optional[str], limit: int, max_bytes: Optional[int] = None
    ) -> Deferred:
        return self.store.list(prefix, after, limit, max_bytes)

    def add_listener(self, listener) -> None:
        self.store.add_listener(listener)

    def expired(self, limit: int) -> Deferred:
        return self.store.expired(limit)

    def ping(self) -> Deferred:
        return self.store.ping()

    # -- capabilities besides history and leases (ForwardsHistory, ForwardsLeases)

    def get_linearizable(self, key: str) -> Deferred:
        return ILinearizableReads(self.store).get_linearizable(key)

    def add_reset_listener(self, listener) -> None:
        IWatchedStore(self.store).add_reset_listener(listener)

    @property
    def key_count(self) -> int:
        return ICountedStore(self.store).key_count

    def work_in_flight(self) -> str:
        return IWorkInFlight(self.store).work_in_flight()

    @property
    def prefix(self) -> str:
        return IEtcdConnection(self.store).prefix

    @property
    def max_request_bytes(self) -> int:
        return IEtcdConnection(self.store).max_request_bytes

    def call(self, path: str, body: dict, write: bool = False) -> Any:
        return IEtcdConnection(self.store).call(path, body, write)

    def commit(self, ops, checks=()) -> Deferred:
        return self._timed(self._clock.seconds(), self.store.commit(ops, checks))

    def delete_prefix(self, prefix: str, max_keys: int) -> Deferred:
        """A prefix delete, counted and timed as a commit."""
        return self._timed(self._clock.seconds(), self.store.delete_prefix(prefix, max_keys))

    def commit_with(self, ops, checks, rider) -> Deferred:
        """
        An etcd store's commit that also carries a transaction's own keys
        (L{kvtwist.store.etcd.store.EtcdStore.commit_with}, how transactions
        kept in etcd commit), counted and timed as L{commit} is.
        """
        return self._timed(
            self._clock.seconds(), IEtcdConnection(self.store).commit_with(ops, checks, rider)
        )

    def _timed(self, started: float, d: Deferred) -> Deferred:
        metrics = self._metrics

        def done(result: object) -> object:
            metrics.commit_seconds.observe(self._clock.seconds() - started)
            metrics.commits.labels("ok").inc()
            return result

        def failed(reason):
            metrics.commits.labels("conflict" if reason.check(ConflictError) else "error").inc()
            return reason

        return d.addCallbacks(done, failed)

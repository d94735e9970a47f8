# -*- test-case-name: tests.contract.test_store_etcd -*-
"""
The etcd store's history (L{kvtwist.interfaces.IHistoricalStore}) mapped
onto etcd's own MVCC revisions: etcd keeps every revision until it is
compacted, so nothing is recorded by kvtwist.

 - A read or listing at revision C{N} is an etcd range with C{revision: N};
   values are decoded as every current read decodes them (the envelope's
   expiry counts at the store clock's present).
 - etcd answers "required revision has been compacted" for C{N} below its
   compact revision (L{kvtwist.errors.RevisionCompacted}) and "required
   revision is a future revision" past its current one
   (L{kvtwist.errors.FutureRevision}).
 - etcd says its compact revision only when refusing a read; a range at
   revision C{N} succeeds exactly when C{N} is at least the compact
   revision, so L{EtcdHistory.probe} finds it by bisection (about log2 of
   the current revision empty ranges) at open and whenever etcd refuses a
   revision the store thought kept (another node or etcdctl compacted).
 - L{EtcdHistory.compact} is one C{/v3/kv/compaction} call: etcd compacts
   in its own bounded background batches, so C{max_records} is not needed.
 - The replay of changes for a watch's resume is an etcd watch from the
   revision after C{after} with C{prev_kv}, read until a revision past
   C{upto}, the record budget, C{upto} itself, or a quiet pause
   (L{REPLAY_QUIET}): etcd 3.4 has no marker saying a watch has caught up,
   and C{upto} need not be a revision that touched the store's range.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from twisted.internet.defer import Deferred

from kvtwist.errors import FutureRevision, RevisionCompacted, StoreUnavailable
from kvtwist.model import CommitResult, Entry, Page
from kvtwist.store.etcd.codec import b64, prefix_end
from kvtwist.store.etcd.errors import Compacted, EtcdError, describe
from kvtwist.store.etcd.stream import WatchStream
from kvtwist.store.history import check_compactable, check_replayable
from kvtwist.store.rules import live

if TYPE_CHECKING:  # pragma: no cover
    from kvtwist.store.etcd.store import EtcdStore

#: Seconds a replay watch may stay silent before it is taken to have
#: delivered everything up to C{upto} (etcd sends a resumed watch's past
#: events within its 100 ms sync pass, in batches of 1000 revisions).
REPLAY_QUIET = 0.5


class EtcdHistory:
    """
    History reads, compaction and replay for one L{EtcdStore}.

    @ivar compact_revision: the compact revision last learned (0: etcd never
        compacted, or compacted at revision 1, which reads the same).
    """

    def __init__(self, store: "EtcdStore") -> None:
        self._store = store
        self.compact_revision = 0

    # -- the compact revision -----------------------------------------------

    async def probe(self) -> int:
        """
        Find etcd's compact revision: the lowest revision a range may read.
        A range at C{N} succeeds exactly when C{N} is at least it.
        """
        store = self._store
        low = max(self.compact_revision, 1)
        high = max(store.revision, low)
        if await self._readable(low):
            found = low
        else:
            # Invariant: low is not readable, high is (the current revision
            # always is).
            while high - low > 1:
                middle = (low + high) // 2
                if await self._readable(middle):
                    high = middle
                else:
                    low = middle
            found = high
        self.learned(found if found > 1 else 0)
        return self.compact_revision

    async def _readable(self, revision: int) -> bool:
        store = self._store
        try:
            await store.call(
                "/v3/kv/range",
                {"key": b64(store.keys.data), "count_only": True, "revision": str(revision)},
            )
        except Compacted:
            return False
        return True

    def learned(self, compact_revision: int) -> None:
        """Keep a compact revision etcd reported (it only grows)."""
        if compact_revision > self.compact_revision:
            self.compact_revision = compact_revision

    def _check_kept(self, revision: int) -> None:
        if revision < self.compact_revision:
            raise RevisionCompacted(revision, self.compact_revision)

    async def _refused(self, revision: int) -> RevisionCompacted:
        """The error for a read at C{revision} that etcd found compacted."""
        await self.probe()
        return RevisionCompacted(revision, max(self.compact_revision, revision + 1))

    async def call_at(self, revision: int, path: str, body: dict) -> dict:
        """
        One read at C{revision}, with etcd's refusals as kvtwist's errors.

        @raise RevisionCompacted: etcd compacted C{revision}.
        @raise FutureRevision: etcd has not reached C{revision}.
        """
        store = self._store
        self._check_kept(revision)
        try:
            return await store.call(path, body)
        except Compacted:
            raise await self._refused(revision)
        except EtcdError as e:
            if "future revision" in str(e):
                raise FutureRevision(revision, store.revision)
            raise

    # -- reads -------------------------------------------------------------

    async def get_at(self, key: str, revision: int) -> Optional[Entry]:
        store = self._store
        if revision > store.revision:
            # Another node may have moved etcd on: learn its revision first.
            await store.refresh()
            if revision > store.revision:
                raise FutureRevision(revision, store.revision)
        if revision < 1:
            # Before etcd's first revision (a range at 0 would read the
            # current one).
            self._check_kept(revision)
            return None
        document = await self.call_at(
            revision,
            "/v3/kv/range",
            {"key": b64(store.keys.etcd_key(key)), "revision": str(revision)},
        )
        kvs = document.get("kvs") or []
        if not kvs:
            return None
        return live(store.keys.row(kvs[0]).entry, store.clock.seconds())

    async def list_at(
        self, prefix: str, after: Optional[str], limit: int, revision: int,
        max_bytes: Optional[int],
    ) -> Page:
        store = self._store
        if revision > store.revision:
            await store.refresh()
            if revision > store.revision:
                raise FutureRevision(revision, store.revision)
        self._check_kept(revision)
        if revision < 1:
            return Page(revision, (), False)
        try:
            return await store.list_once(prefix, after, limit, max_bytes, revision)
        except Compacted:
            raise await self._refused(revision)

    # -- compaction --------------------------------------------------------

    async def compact(self, revision: int) -> int:
        store = self._store
        if revision > store.revision:
            await store.refresh()
        check_compactable(revision, store.revision)
        if revision <= self.compact_revision:
            return self.compact_revision
        try:
            await store.call("/v3/kv/compaction", {"revision": str(revision)}, write=True)
        except Compacted:
            # Compacted further already (another node, etcdctl).
            await self.probe()
            return self.compact_revision
        except EtcdError as e:
            if "future revision" in str(e):
                raise FutureRevision(revision, store.revision)
            raise
        self.learned(revision)
        return self.compact_revision

    # -- replay ------------------------------------------------------------

    async def changes(self, after: int, upto: int, max_records: int) -> List[CommitResult]:
        store = self._store
        check_replayable(after, self.compact_revision)
        upto = min(upto, store.revision)
        if upto <= after:
            return []
        replay = _Replay(store, after, upto, max_records)
        try:
            commits = await replay.run()
        except _ReplayCompacted as e:
            self.learned(e.compact_revision)
            raise RevisionCompacted(after, max(self.compact_revision, after + 1))
        return commits


class _ReplayCompacted(Exception):
    def __init__(self, compact_revision: int) -> None:
        super().__init__(compact_revision)
        self.compact_revision = compact_revision


class _Replay:
    """One bounded etcd watch reading the commits in C{(after, upto]}."""

    def __init__(self, store: "EtcdStore", after: int, upto: int, max_records: int) -> None:
        self._store = store
        self._after = after
        self._upto = upto
        self._max = max_records
        self._groups: Dict[int, List[dict]] = {}
        self._count = 0
        self._finished: Deferred = Deferred()
        self._quiet: Any = None
        self._stream: Optional[WatchStream] = None

    async def run(self) -> List[CommitResult]:
        store = self._store
        body = {
            "create_request": {
                "key": b64(store.keys.data),
                "range_end": b64(prefix_end(store.keys.data)),
                "start_revision": str(self._after + 1),
                "prev_kv": True,
            }
        }
        reactor = store.reactor
        request = store.gateway.open_stream(store.active_endpoint, "/v3/watch", body)
        request.addTimeout(store.timeout, reactor)
        try:
            response, _ = await request
        except Exception as e:
            raise StoreUnavailable("the history could not be read from etcd: %s" % (describe(e),))
        stream = WatchStream(self._document)
        # Only its end matters here; an unanswered "created" is no error.
        stream.created.addErrback(lambda _: None)
        self._stream = stream
        if response.code != 200:
            stream.http_error = response.code
        self._rearm()
        response.deliverBody(stream)
        reason = await stream.done
        if self._quiet is not None and self._quiet.active():
            self._quiet.cancel()
        if stream.compacted:
            raise _ReplayCompacted(stream.compacted)
        if not self._finished.called:
            raise StoreUnavailable("the history could not be read from etcd: %s" % (reason,))
        commits = [
            _sorted(store.watch_loop.result_of(revision, self._groups[revision]))
            for revision in sorted(self._groups)
        ]
        # Revisions that changed only lease anchors changed no kvtwist key.
        return [commit for commit in commits if commit.changes]

    def _rearm(self) -> None:
        if self._quiet is not None and self._quiet.active():
            self._quiet.reset(REPLAY_QUIET)
            return
        self._quiet = self._store.reactor.callLater(REPLAY_QUIET, self._finish)

    def _finish(self) -> None:
        if not self._finished.called:
            self._finished.callback(None)
        if self._stream is not None:
            self._stream.abort("the replay is complete")

    def _document(self, stream: Any, line: bytes) -> None:
        try:
            document = json.loads(line.decode("utf-8"))
            result = document["result"]
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            stream.abort("the history watch sent %r" % (line[:200],))
            return
        if result.get("canceled"):
            stream.compacted = int(result.get("compact_revision") or 0)
            stream.abort("etcd canceled the history watch: %s" % (
                result.get("cancel_reason") or "compacted",))
            return
        self._rearm()
        for event in result.get("events") or ():
            revision = int(event["kv"]["mod_revision"])
            if revision > self._upto or (
                self._count >= self._max and revision not in self._groups
            ):
                self._finish()
                return
            self._groups.setdefault(revision, []).append(event)
            self._count += 1
        if self._groups and max(self._groups) >= self._upto:
            self._finish()


def _sorted(result: CommitResult) -> CommitResult:
    """A replayed commit's changes in key order (as the other stores give)."""
    return CommitResult(
        result.revision, tuple(sorted(result.changes, key=lambda c: c.key.encode("utf-8")))
    )


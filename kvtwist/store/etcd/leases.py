# -*- test-case-name: tests.contract.test_store_etcd -*-
"""
Client leases (L{kvtwist.interfaces.ILeasingStore}) on etcd: a kvtwist
lease is an etcd lease, so etcd's clock keeps it and etcd deletes its keys
when it ends, whether or not any node runs.

 - C{grant} is C{/v3/lease/grant} with an id kvtwist picks below 2**53 (JSON
   clients keep it exact; etcd's own ids are 63-bit), then the lease's
   I{anchor} is written: an etcd key attached to the lease, under the
   store's key range but after every kvtwist key (C{kv/} then the byte
   C{0xff}, which no UTF-8 key holds), valued C{granted}. The anchor tells a
   kvtwist lease from the store's own expiry leases, counts the leases held
   (a range of the anchors), and labels what the lease's end deletes.
 - C{keepalive} is C{/v3/lease/keepalive}: no revision, no event.
 - C{lease} is C{/v3/lease/timetolive} with its keys: the deadline is the
   store clock's now plus etcd's remaining TTL.
 - C{revoke} sets the anchor to C{revoked}, then calls
   C{/v3/lease/revoke}: etcd deletes the anchor and every key of the lease
   at one revision, which the watch reports as that one commit.
 - When the lease expires etcd deletes the same way. A revision in which a
   lease's anchor is deleted is that lease's end: the deletes of keys that
   were attached to it (etcd's C{prev_kv} names the lease) are C{expire}
   changes if the anchor still said C{granted}, C{delete} ones if it said
   C{revoked}. Every node's watch labels them the same way.
 - etcd expires leases itself: C{expired_leases} is always empty and
   C{next_deadline} is L{None} (the sweeper has nothing to do).

etcd rounds a TTL up to whole seconds and to its minimum TTL (about 1.5 x
its election timeout, 2 s by default); the lease reports the TTL etcd
granted.
"""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from kvtwist.errors import LeaseNotFound, LimitExceeded
from kvtwist.model import Change, CommitResult, Lease
from kvtwist.store.etcd.codec import b64, prefix_end, unb64
from kvtwist.store.etcd.errors import EtcdError, LeaseGone

if TYPE_CHECKING:  # pragma: no cover
    from kvtwist.store.etcd.store import EtcdStore

#: The anchor's values: held, or being revoked through kvtwist.
GRANTED = b"granted"
REVOKED = b"revoked"
#: Lease ids kvtwist picks: below 2**53, so JSON keeps them exact.
_MAX_ID = 2 ** 53 - 1
_GRANT_ATTEMPTS = 5


class EtcdLeases:
    """
    The lease calls of one L{EtcdStore}.

    @ivar count: leases held, as last counted at open and followed through
        the watch since (anchors created and deleted).
    """

    def __init__(self, store: "EtcdStore") -> None:
        self._store = store
        self.anchors = store.keys.data + b"\xfflease/"
        self.count = 0

    def anchor(self, lease_id: int) -> bytes:
        return self.anchors + str(lease_id).encode("ascii")

    def anchor_id(self, raw_key: bytes) -> Optional[int]:
        """The lease id of an anchor key, or L{None} for any other key."""
        if not raw_key.startswith(self.anchors):
            return None
        try:
            return int(raw_key[len(self.anchors):])
        except ValueError:
            return None

    def is_reserved(self, raw_key: bytes) -> bool:
        """Whether C{raw_key} is in the store's range but no kvtwist key."""
        return raw_key.startswith(self._store.keys.data + b"\xff")

    async def recount(self) -> int:
        document = await self._store.call(
            "/v3/kv/range",
            {"key": b64(self.anchors), "range_end": b64(prefix_end(self.anchors)),
             "count_only": True},
        )
        self.count = int(document.get("count", 0))
        return self.count

    # -- the calls ---------------------------------------------------------

    async def grant(self, ttl: float, max_leases: int) -> Lease:
        store = self._store
        held = await self.recount()
        if held >= max_leases:
            # Counted across every node (the anchors in etcd); two nodes
            # granting at the same instant can both take the last one.
            raise LimitExceeded("max_leases", max_leases, held + 1, too_many=True)
        whole = max(int(math.ceil(ttl)), 1)
        for _ in range(_GRANT_ATTEMPTS):
            lease_id = secrets.randbelow(_MAX_ID) + 1
            try:
                document = await store.call(
                    "/v3/lease/grant", {"TTL": str(whole), "ID": str(lease_id)}, write=True
                )
            except EtcdError as e:
                if "lease already exists" in str(e):
                    continue
                raise
            granted = float(document.get("TTL", whole))
            recorder = store.watch_loop.record()
            try:
                answer = await store.call(
                    "/v3/kv/put",
                    {"key": b64(self.anchor(lease_id)), "value": b64(GRANTED),
                     "lease": str(lease_id)},
                    write=True,
                )
                if store.watch_loop.enabled:
                    # Counted once the watch has seen the anchor.
                    await recorder.result(int(answer["header"]["revision"]))
                else:
                    self.count += 1
            finally:
                recorder.stop()
            return Lease(lease_id, granted, store.clock.seconds() + granted)
        raise EtcdError("etcd refused %d fresh lease ids in a row" % (_GRANT_ATTEMPTS,))

    async def keepalive(self, lease_id: int) -> Lease:
        store = self._store
        await self._held(lease_id)
        try:
            answer = await store.call("/v3/lease/keepalive", {"ID": str(lease_id)})
        except LeaseGone:
            raise LeaseNotFound(lease_id)
        ttl = int(answer.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            raise LeaseNotFound(lease_id)
        return Lease(lease_id, float(ttl), store.clock.seconds() + ttl)

    async def lease(self, lease_id: int) -> Lease:
        granted, remaining, keys = await self._held(lease_id)
        return Lease(lease_id, granted, self._store.clock.seconds() + remaining, keys)

    async def _held(self, lease_id: int) -> Tuple[float, float, Tuple[str, ...]]:
        """
        (granted TTL, remaining seconds, kvtwist keys) of a kvtwist lease.

        @raise LeaseNotFound: etcd has no such lease, or it is no kvtwist
            lease (no anchor), or it is being revoked.
        """
        store = self._store
        try:
            document = await store.call(
                "/v3/lease/timetolive", {"ID": str(lease_id), "keys": True}
            )
        except LeaseGone:
            raise LeaseNotFound(lease_id)
        remaining = int(document.get("TTL", -1))
        raw_keys = [unb64(k) for k in document.get("keys") or ()]
        if remaining <= 0 or self.anchor(lease_id) not in raw_keys:
            raise LeaseNotFound(lease_id)
        keys = sorted(
            (store.keys.decode_key(k) for k in raw_keys if not self.is_reserved(k)),
            key=lambda k: k.encode("utf-8"),
        )
        return float(document.get("grantedTTL", remaining)), float(remaining), tuple(keys)

    async def revoke(self, lease_id: int) -> CommitResult:
        store = self._store
        await self._held(lease_id)
        # Mark it, so every node's watch reports the deletes as a revoke.
        document = await store.call(
            "/v3/kv/txn",
            {
                "compare": [{"key": b64(self.anchor(lease_id)), "target": "VALUE",
                             "result": "EQUAL", "value": b64(GRANTED)}],
                "success": [{"request_put": {"key": b64(self.anchor(lease_id)),
                                             "value": b64(REVOKED), "lease": str(lease_id)}}],
            },
            write=True,
        )
        if not document.get("succeeded"):
            raise LeaseNotFound(lease_id)
        recorder = store.watch_loop.record()
        try:
            try:
                answer = await store.call("/v3/lease/revoke", {"ID": str(lease_id)}, write=True)
            except LeaseGone:
                raise LeaseNotFound(lease_id)
            revision = int(answer["header"]["revision"])
            if not store.watch_loop.enabled:
                self.count = max(self.count - 1, 0)
                return CommitResult(revision, ())
            # The watch delivers the revoke's deletes to the listeners; the
            # caller hears back after them, with the same result.
            return await recorder.result(revision)
        finally:
            recorder.stop()

    # -- labelling the watch's events ---------------------------------------

    def follow(self, events: List[dict]) -> None:
        """Count the anchors the watch sees made and deleted."""
        for event in events:
            if self.anchor_id(unb64(event["kv"]["key"])) is None:
                continue
            if event.get("type", "PUT") == "DELETE":
                self.count = max(self.count - 1, 0)
            elif int(event["kv"].get("version", 0)) == 1:
                self.count += 1

    def ended(self, events: List[dict]) -> Dict[str, str]:
        """
        The leases whose anchor one revision's events delete, as etcd's lease
        id (a string) -> the kind their keys' deletes are (C{expire} or
        C{delete}).
        """
        ends: Dict[str, str] = {}
        for event in events:
            lease_id = self.anchor_id(unb64(event["kv"]["key"]))
            if lease_id is None or event.get("type", "PUT") != "DELETE":
                continue
            prev = event.get("prev_kv") or {}
            marked = unb64(prev.get("value", "")) if prev else GRANTED
            ends[str(lease_id)] = "delete" if marked == REVOKED else "expire"
        return ends

    @staticmethod
    def label(change: Change, prev: Optional[dict], ends: Dict[str, str]) -> Change:
        """A delete of a key whose lease ended in this revision, labelled."""
        if change.kind != "delete" or not prev or not ends:
            return change
        kind = ends.get(str(prev.get("lease", "0")))
        if kind is None or kind == change.kind:
            return change
        return Change(kind, change.key, None, change.previous)

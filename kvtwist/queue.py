"""
The seed's shared pending queue: C{POST /set} and C{DELETE /set} stage into
it, C{POST /commit} applies it atomically and durably.

It is shared by every client, exactly as the seed service was: one client's
commit publishes what any client staged, and a later stage of a key replaces
an earlier one (last writer wins). Clients that need isolation use
transactions. Like all staged writes it is volatile: a restart empties it.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List

from twisted.internet.defer import Deferred, succeed

from kvtwist.errors import KeyNotFound, LimitExceeded
from kvtwist.interfaces import IKeyValueStore
from kvtwist.limits import Limits
from kvtwist.model import JSON_CONTENT_TYPE, Delete, Put
from kvtwist.staging import StagingArea
from kvtwist.strictjson import check_key, encode


class PendingQueue:
    """The shared queue over C{store}; reactor thread only."""

    def __init__(self, store: IKeyValueStore, limits: Limits) -> None:
        self._store = store
        self._limits = limits
        self.staging = StagingArea(limits)

    def _check_count(self, count: int) -> None:
        if count > self._limits.max_keys_per_request:
            raise LimitExceeded(
                "max_keys_per_request", self._limits.max_keys_per_request, count
            )

    def stage_set(self, pairs: Dict[str, Any]) -> Deferred:
        """
        Stage a JSON value for each key of C{pairs}.

        @return: a Deferred firing with C{{key: "created" | "updated"}}, by
            whether the key exists in the committed store.
        @raise kvtwist.errors.InvalidInput: for a bad key (nothing staged).
        @raise LimitExceeded: past a staging limit (nothing staged).
        """
        return Deferred.fromCoroutine(self._stage_set(pairs))

    async def _stage_set(self, pairs: Dict[str, Any]) -> Dict[str, str]:
        self._check_count(len(pairs))
        ops = [
            Put(check_key(key), encode(value), JSON_CONTENT_TYPE)
            for key, value in pairs.items()
        ]
        committed = await self._store.get_many(pairs.keys())
        self.staging.stage(ops)
        return {key: "updated" if key in committed else "created" for key in pairs}

    def stage_delete(self, keys: Iterable[str]) -> Deferred:
        """
        Stage a delete of each key in C{keys}.

        @return: a Deferred firing with C{{key: "deleted"}}.
        @raise KeyNotFound: naming every key that is neither committed nor
            staged as a write; nothing is staged then.
        """
        return Deferred.fromCoroutine(self._stage_delete(list(keys)))

    async def _stage_delete(self, keys: List[str]) -> Dict[str, str]:
        self._check_count(len(keys))
        for key in keys:
            check_key(key)
        committed = await self._store.get_many(keys)
        missing = [
            key
            for key in dict.fromkeys(keys)
            if key not in committed and not isinstance(self.staging.staged(key), Put)
        ]
        if missing:
            raise KeyNotFound(missing)
        self.staging.stage(Delete(key) for key in keys)
        return {key: "deleted" for key in keys}

    def commit(self) -> Deferred:
        """
        Apply everything staged so far in one atomic, durable commit. Stages
        that arrive while it is in flight wait for the next commit.

        @return: a Deferred firing with the L{CommitResult} (or L{None} when
            nothing was staged) once the commit is on disk. If the store
            fails, the ops are staged again and the error propagates.
        """
        ops = self.staging.take()
        if not ops:
            return succeed(None)
        d = self._store.commit(ops)

        def failed(reason):
            self.staging.restore(ops)
            return reason

        return d.addErrback(failed)


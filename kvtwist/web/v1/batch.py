# -*- test-case-name: tests.unit.test_web_v1,tests.unit.test_batch_branching -*-
"""
C{POST /v1/batch}: a one-request transaction, in one of two forms (their
bodies are described in L{kvtwist.web.v1.batch_ops}).

C{{"ops": [...]}}: all ops apply atomically: 200 with one result per op,
or 409 naming the failing op indexes (C{failed}) and applying nothing.

C{{"compare": [...], "success": [...], "failure": [...]}}: 200
C{{"succeeded", "revision", "results"}}: the compares are evaluated and
the C{success} ops (all compares hold) or the C{failure} ops applied,
atomically with the compares. On every store the compares are evaluated
by kvtwist (etcd's own compares cannot see kvtwist's value envelope and
expiry), and the chosen branch commits in one commit guarded by the
mod_revision of every key compared: on etcd one etcd transaction whose
compares are those guards. A guard that fails (a concurrent commit changed
a compared key) makes the batch start again, a few times.

A C{get} sees the state just before the batch plus the batch's own earlier
ops; in a batch that writes, it is read before the commit and guarded by a
revision check the same way.

A batch that writes nothing (only gets and checks, or a branch of gets) is
not a commit: it is read at one revision through the store's read cache
(cache hits need no trip to the store thread, so it never waits behind
commits), its checks evaluated on what was read, and answered with that
revision. Only when commits keep landing during its reads is it pinned by
an empty guarded commit instead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple, Union

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from kvtwist.auth import Authorizer, principal_of
from kvtwist.errors import ConflictError
from kvtwist.interfaces import IKeyValueStore
from kvtwist.model import Check, CheckFailure, Delete, Entry, Incr, Op, Put
from kvtwist.store.rules import counter_value, increment
from kvtwist.strictjson import parse
from kvtwist.web.resource import Response, json_response, read_body
from kvtwist.web.v1.base import V1Resource, describe
from kvtwist.web.v1.batch_ops import BatchPlan, ParsedOp, parse_batch
from kvtwist.wire import WRITE_KINDS, value_fields

#: How often a batch starts again when a concurrent commit changes a key
#: it read or compared.
GET_RETRIES = 5
#: How often a batch that writes nothing reads again when commits land
#: while it reads, before pinning its reads with an empty guarded commit.
READ_RETRIES = 3


class GetGuard:
    """The tag of a check that guards what a batch read (not a client check)."""

    def __init__(self, index: Optional[int]) -> None:
        self.index = index


def _op_index(tag: object) -> Optional[int]:
    """The op index a check's tag names: a client check's tag is its index."""
    if isinstance(tag, GetGuard):
        return tag.index
    return tag if isinstance(tag, int) else None


async def read_at_one_revision(
    store: IKeyValueStore, keys: List[str]
) -> Tuple[Dict[str, Entry], int]:
    """
    C{keys} as they stand at one revision, and that revision, without a
    commit: through the store's read cache, again while commits land
    during the read; after L{READ_RETRIES} such reads, pinned by an empty
    commit whose checks are what was read (which waits its turn on the
    store thread).

    @raise ConflictError: (with L{GetGuard} tags) when even that commit
        found a key changed.
    """
    found: Dict[str, Entry] = {}
    for _ in range(READ_RETRIES):
        revision = store.revision
        found = await store.get_many(keys) if keys else {}
        if store.revision == revision:
            return found, revision
    guards = [
        Check.equals(key, found[key].mod_revision if key in found else 0, tag=GetGuard(None))
        for key in dict.fromkeys(keys)
    ]
    result = await store.commit([], guards)
    return found, result.revision


def _writes(ops: List[ParsedOp]) -> bool:
    """Whether C{ops} write (and so make a commit)."""
    return any(kind in WRITE_KINDS for kind, _ in ops)


class Batch(V1Resource):
    """C{/v1/batch}."""

    route = "/v1/batch"

    def render_POST(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._batch(request)))

    async def _batch(self, request: Request) -> Response:
        plan = parse_batch(
            parse(read_body(request)), self.context.clock, self.context.limits, self.context.store
        )
        token = principal_of(request)
        ops = plan.all_ops()
        Authorizer.require_write(token, [f["key"] for kind, f in ops if kind in WRITE_KINDS])
        Authorizer.require_read(
            token,
            [f["key"] for kind, f in ops if kind not in WRITE_KINDS]
            + [compare.key for compare in plan.compares or ()],
        )
        for attempt in range(GET_RETRIES):
            try:
                return await self._attempt(plan)
            except ConflictError as e:
                if not all(isinstance(f.check.tag, GetGuard) for f in e.failures):
                    raise self._client_conflict(e)
                if attempt == GET_RETRIES - 1:
                    raise self._client_conflict(e)
        raise AssertionError("unreachable")

    @staticmethod
    def _client_conflict(error: ConflictError) -> ConflictError:
        """The 409 naming op indexes: client checks first, else changed gets."""
        failures = [
            f for f in error.failures if not isinstance(f.check.tag, GetGuard)
        ] or error.failures
        indexed = [(_op_index(f.check.tag), f) for f in failures]
        conflict = ConflictError(
            [CheckFailure(replace(f.check, tag=index), f.actual) for index, f in indexed]
        )
        conflict.extra["failed"] = sorted({index for index, _ in indexed if index is not None})
        return conflict

    async def _attempt(self, plan: BatchPlan) -> Response:
        store = self.context.store
        compares = plan.compares or []
        read_keys = [c.key for c in compares] + [
            fields["key"]
            for kind, fields in plan.all_ops()
            if kind in ("get", "check", "check-absent", "incr")
        ]
        branches = [plan.success, plan.failure] if plan.branching else [plan.success]
        if all(_writes(branch) for branch in branches):
            # Whichever branch is chosen commits: its guards pin what was read.
            before: Dict[str, Entry] = await store.get_many(read_keys) if read_keys else {}
            revision: Optional[int] = None
        else:
            before, revision = await read_at_one_revision(store, read_keys)
        succeeded = all(compare.holds(before.get(compare.key)) for compare in compares)
        ops = plan.success if succeeded else plan.failure
        writes_now, checks, results = self._plan(ops, before)
        if not _writes(ops):
            assert revision is not None
            # Nothing to commit: the checks are decided on what was read.
            failures = [
                CheckFailure(check, before[check.key].mod_revision if check.key in before else 0)
                for check in checks
                if not check.holds(before[check.key].mod_revision if check.key in before else 0)
            ]
            if failures:
                raise ConflictError(failures)
        else:
            # What the compares saw must still be there when the branch applies.
            checks += [
                Check.equals(c.key, before[c.key].mod_revision if c.key in before else 0, tag=GetGuard(None))
                for c in compares
            ]
            result = await store.commit(writes_now, checks)
            revision = result.revision
            self._add_outcomes(ops, results, {change.key: change for change in result.changes})
        body: Dict[str, Any] = {"revision": revision, "results": results}
        if plan.branching:
            body = {"succeeded": succeeded, **body}
        return json_response(200, body)

    def _plan(
        self, ops: List[ParsedOp], before: Dict[str, Entry]
    ) -> Tuple[List[Op], List[Check], List[Dict[str, Any]]]:
        """The writes, checks and (first) results of C{ops} over C{before}."""
        writes: List[Op] = []
        checks: List[Check] = []
        view: Dict[str, Optional[Union[Put, Entry]]] = {}
        results: List[Dict[str, Any]] = []
        for index, (kind, fields) in enumerate(ops):
            key = fields["key"]
            if kind == "set":
                writes.append(fields["put"])
                view[key] = fields["put"]
                results.append({"op": "set", "key": key})
            elif kind == "delete":
                writes.append(Delete(key))
                view[key] = None
                results.append({"op": "delete", "key": key})
            elif kind == "incr":
                # The store resolves the increment on the state it commits
                # to (no guard: concurrent increments never conflict); the
                # value here serves later gets, and refuses a non-integer
                # early.
                incr = Incr(key, fields["by"])
                writes.append(incr)
                counted = increment(view[key] if key in view else before.get(key), incr)
                view[key] = counted
                results.append({"op": "incr", "key": key,
                                "value": counter_value(key, counted.value, counted.content_type)})
            elif kind == "check":
                checks.append(Check.equals(key, fields["revision"], tag=index))
                results.append({"op": "check", "key": key, "ok": True})
            elif kind == "check-absent":
                checks.append(Check.absent(key, tag=index))
                results.append({"op": "check-absent", "key": key, "ok": True})
            else:
                entry = before.get(key)
                checks.append(Check.equals(key, entry.mod_revision if entry else 0, tag=GetGuard(index)))
                results.append(self._get_result(key, view[key] if key in view else entry))
        return writes, checks, results

    @staticmethod
    def _add_outcomes(ops: List[ParsedOp], results: List[Dict[str, Any]], changed: Dict[str, Any]) -> None:
        """
        Say in each write's result what the commit did with it. An
        increment's value comes from the committed counter, less the
        increments of the same key after it in the batch (what the key
        held after this op); one followed by a set or delete of its key
        keeps the value the batch computed.
        """
        later: Dict[str, Optional[int]] = {}
        for (kind, fields), item in reversed(list(zip(ops, results))):
            key = fields["key"]
            change = changed.get(key)
            if kind == "incr":
                if key not in later:
                    entry = change.entry if change is not None else None
                    later[key] = (
                        counter_value(key, entry.value, entry.content_type) if entry else None
                    )
                if later[key] is not None:
                    item["value"] = later[key]
                    later[key] -= fields["by"]
            elif kind in ("set", "delete"):
                later[key] = None
        for (kind, fields), item in zip(ops, results):
            change = changed.get(fields["key"])
            if kind == "set":
                item["created"] = change is not None and change.previous is None
            elif kind == "delete":
                item["deleted"] = change is not None and change.kind == "delete"

    @staticmethod
    def _get_result(key: str, found: Optional[Union[Put, Entry]]) -> Dict[str, Any]:
        if found is None:
            return {"op": "get", "key": key, "found": False}
        if isinstance(found, Put):
            item = {"op": "get", "key": key, "found": True, "staged": True,
                    "content_type": found.content_type, "size": len(found.value)}
            item.update(value_fields(found.value, found.content_type))
            return item
        item = {"op": "get", "found": True}
        item.update(describe(found, with_value=True))
        return item

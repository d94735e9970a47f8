"""
C{POST /v1/batch}: a one-request transaction.

Body: C{{"ops": [...]}} where each op is one of
  - C{{"op": "set", "key": K, "value": <JSON>}} or with C{"value_base64"} and
    C{"content_type"}; optional C{"ttl"} (seconds);
  - C{{"op": "delete", "key": K}};
  - C{{"op": "check", "key": K, "revision": N}} (mod_revision is N; 0 means
    absent);
  - C{{"op": "check-absent", "key": K}};
  - C{{"op": "get", "key": K}}.
All ops apply atomically: 200 with one result per op, or 409 naming the
failing op indexes (C{failed}) and applying nothing. A C{get} sees the
state just before the batch plus the batch's own earlier ops; it is read
before the commit and guarded by a revision check, retried a few times if a
concurrent commit changes a key it read.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from kvtwist.auth import Authorizer, principal_of
from kvtwist.errors import ConflictError, InvalidInput, LimitExceeded
from kvtwist.model import JSON_CONTENT_TYPE, Check, CheckFailure, Delete, Entry, Op, Put
from kvtwist.strictjson import check_key, encode, parse
from kvtwist.web.resource import Response, json_response, read_body
from kvtwist.web.v1.base import V1Resource, check_content_type, describe, parse_ttl, value_fields
from kvtwist.web.v1.leasing import lease_for_put

#: How often a batch with gets is retried when a concurrent commit changes
#: a key it read.
GET_RETRIES = 5

_OPS = {"set", "delete", "check", "check-absent", "get"}


class GetGuard:
    """The tag of a check that guards what a get read (not a client check)."""

    def __init__(self, index: int) -> None:
        self.index = index


def _op_index(tag: object) -> int:
    return tag.index if isinstance(tag, GetGuard) else tag  # type: ignore[return-value]


def _bad(index: int, detail: str) -> InvalidInput:
    return InvalidInput("bad-op", "op %d: %s" % (index, detail), index=index)


def parse_ops(document: Any, clock, limits, store) -> List[Tuple[str, Dict[str, Any]]]:
    """
    Validate a batch body into C{(kind, fields)} pairs (C{store}: for the
    leases sets name).

    @raise InvalidInput: naming the first bad op's index.
    @raise LimitExceeded: past C{max_batch_ops}.
    """
    if not isinstance(document, dict) or not isinstance(document.get("ops"), list):
        raise InvalidInput("bad-batch", 'expected {"ops": [...]}')
    raw_ops = document["ops"]
    if len(raw_ops) > limits.max_batch_ops:
        raise LimitExceeded("max_batch_ops", limits.max_batch_ops, len(raw_ops))
    parsed = []
    for index, raw in enumerate(raw_ops):
        if not isinstance(raw, dict) or raw.get("op") not in _OPS:
            raise _bad(index, "each op is an object whose op is one of " + ", ".join(sorted(_OPS)))
        kind = raw["op"]
        key = raw.get("key")
        if not isinstance(key, str):
            raise _bad(index, "key must be a string")
        try:
            check_key(key)
        except InvalidInput as e:
            raise _bad(index, e.detail)
        fields: Dict[str, Any] = {"key": key}
        if kind == "set":
            fields["put"] = _put(index, raw, key, clock, store)
        elif kind == "check":
            revision = raw.get("revision")
            if type(revision) is not int or revision < 0:
                raise _bad(index, "revision must be a non-negative integer")
            fields["revision"] = revision
        parsed.append((kind, fields))
    return parsed


def _put(index: int, raw: Dict[str, Any], key: str, clock, store) -> Put:
    has_json = "value" in raw
    has_b64 = "value_base64" in raw
    if has_json == has_b64:
        raise _bad(index, "a set takes exactly one of value and value_base64")
    try:
        expires = parse_ttl(raw.get("ttl"), clock)
        lease = lease_for_put(store, raw.get("lease"))
    except InvalidInput as e:
        raise _bad(index, e.detail)
    if has_json:
        return Put(key, encode(raw["value"]), JSON_CONTENT_TYPE, expires, lease)
    content_type = raw.get("content_type", "application/octet-stream")
    if not isinstance(content_type, str):
        raise _bad(index, "content_type must be a string")
    try:
        content_type = check_content_type(content_type)
    except InvalidInput as e:
        raise _bad(index, e.detail)
    try:
        value = base64.b64decode(raw["value_base64"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise _bad(index, "value_base64 is not valid base64")
    return Put(key, value, content_type, expires, lease)


class Batch(V1Resource):
    """C{/v1/batch}."""

    route = "/v1/batch"

    def render_POST(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._batch(request)))

    async def _batch(self, request: Request) -> Response:
        ops = parse_ops(
            parse(read_body(request)), self.context.clock, self.context.limits, self.context.store
        )
        token = principal_of(request)
        Authorizer.require_write(token, [f["key"] for kind, f in ops if kind in ("set", "delete")])
        Authorizer.require_read(token, [f["key"] for kind, f in ops if kind not in ("set", "delete")])
        for attempt in range(GET_RETRIES):
            try:
                return await self._attempt(ops)
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
        failures = [
            CheckFailure(replace(f.check, tag=_op_index(f.check.tag)), f.actual)
            for f in failures
        ]
        conflict = ConflictError(failures)
        conflict.extra["failed"] = sorted({f.check.tag for f in failures})
        return conflict

    async def _attempt(self, ops) -> Response:
        store = self.context.store
        read_keys = [fields["key"] for kind, fields in ops if kind == "get"]
        before: Dict[str, Entry] = await store.get_many(read_keys) if read_keys else {}
        writes: List[Op] = []
        checks: List[Check] = []
        view: Dict[str, Optional[object]] = {}
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
        result = await store.commit(writes, checks)
        changed = {change.key: change for change in result.changes}
        for (kind, fields), item in zip(ops, results):
            change = changed.get(fields["key"])
            if kind == "set":
                item["created"] = change is not None and change.previous is None
            elif kind == "delete":
                item["deleted"] = change is not None and change.kind == "delete"
        return json_response(200, {"revision": result.revision, "results": results})

    @staticmethod
    def _get_result(key: str, found: Optional[object]) -> Dict[str, Any]:
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

# -*- test-case-name: tests.unit.test_client_batch -*-
"""
Batch-shaped ops: L{batch} sends them as one-request transaction
(C{POST /v1/batch}); L{transact} runs the same ops through a multi-request
transaction (what C{kvtwist txn} does); L{check_ops} validates them first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from twisted.internet.defer import CancelledError, Deferred

from kvtwist.client._wire import (
    _decode_object,
    DEFAULT_CONTENT_TYPE,
    _join,
    _json_body,
    _request,
)
from kvtwist.client.errors import _bad_response, ConflictError, NotFoundError
from kvtwist.client.kv import _content_type, _ttl
from kvtwist.client.txn import begin, Transaction
from kvtwist.wire import (
    STAGED_KINDS,
    check_revision,
    incr_op,
    op_kind,
    value_field,
    value_from_fields,
)


#: The op kinds of L{batch} and L{transact} (the server's batch also has
#: C{incr}, which L{transact} cannot stage: see L{incr}).
OP_KINDS = STAGED_KINDS


def batch(
    http: Any, url: str, ops: Sequence[Mapping[str, Any]], *, token: Optional[str] = None
) -> Deferred:
    """
    Apply C{ops} as one atomic request (C{POST /v1/batch}). The server
    validates the ops; see L{check_ops} for their shapes:

        {"op": "set", "key": K, "value": <JSON>, "ttl": S?}
        {"op": "set", "key": K, "value_base64": B64, "content_type": CT?, "ttl": S?}
        {"op": "delete", "key": K}
        {"op": "check", "key": K, "revision": N}      (N = 0: absent)
        {"op": "check-absent", "key": K}
        {"op": "get", "key": K}

    @return: a Deferred firing with C{{"revision", "results": [one per
        op]}}: C{set} results say C{created}, C{delete} ones C{deleted},
        checks C{ok}, and C{get} ones C{found} with the entry as a listing
        item with its value.
    @raise TypeError: at once, unless C{ops} is a list or tuple.
    @raise ValueError: at once, if an op holds NaN, Infinity or a lone
        surrogate.
    @raise ConflictError: (in the Deferred) if a check failed (or a key a
        get read kept changing); C{failed} lists the op indexes, nothing
        was applied.
    @raise KVClientError: (in the Deferred) 400 for a malformed op, naming
        its index; 413 past the server's op limit.
    """
    if not isinstance(ops, (list, tuple)):
        raise TypeError("ops is a list, not %s" % (type(ops).__name__,))
    body = _json_body({"ops": list(ops)})
    return batch_encoded(http, url, body, token=token)


def batch_encoded(http: Any, url: str, body: bytes, *, token: Optional[str] = None) -> Deferred:
    """
    L{batch} with its body already encoded (C{{"ops": [...]}} as strict
    JSON): for a caller that sizes its batches to the server's limits
    (L{get_limits}) and so encodes each op anyway, as C{kvtwist load} does.

    @return: what L{batch} returns.
    """
    d = _request(http, "POST", _join(url, "v1", "batch"), {200}, token, body)
    return d.addCallback(lambda answer: _decode_object(answer.status, answer.body))


def get_limits(http: Any, url: str, *, token: Optional[str] = None) -> Deferred:
    """
    The limits the server enforces (C{GET /v1/limits}): the request body
    bytes (C{max_body}), ops per batch (C{max_batch_ops}) and the others
    of U{docs/configuration.md}, by name.

    @return: a Deferred firing with the limits as a dict.
    @raise KVClientError: (in the Deferred) for an error answer.
    """
    d = _request(http, "GET", _join(url, "v1", "limits"), {200}, token)
    return d.addCallback(lambda answer: _decode_object(answer.status, answer.body))


def incr(
    http: Any, url: str, key: str, by: int = 1, *, token: Optional[str] = None
) -> Deferred:
    """
    Add C{by} to the counter C{key} atomically (C{{"op": "incr"}} in a
    batch): a JSON integer of any size, 0 when absent.

    @return: a Deferred firing with the new value (an L{int}).
    @raise TypeError: at once, unless C{by} is an int (not a bool).
    @raise ConflictError: (in the Deferred) code C{not-an-integer} when
        C{key} holds something else; nothing changed.
    """
    if type(by) is not int:
        raise TypeError("by is an int, not %s" % (type(by).__name__,))
    d = batch(http, url, [incr_op(key, by)], token=token)
    return d.addCallback(lambda answer: answer["results"][0]["value"])


@dataclass(frozen=True)
class _Op:
    """One checked op of L{transact}."""

    kind: str
    key: str
    value: bytes = b""
    content_type: str = DEFAULT_CONTENT_TYPE
    ttl: Optional[float] = None
    revision: int = 0


def _bad_op(index: int, detail: str) -> ValueError:
    return ValueError("op %d: %s" % (index, detail))


def check_ops(ops: Any) -> List[_Op]:
    """
    Check ops of the L{batch} shapes before anything is sent, as
    L{transact} needs them (the server checks a batch itself). Unknown
    fields are ignored, as the server ignores them.

    @return: the ops, checked (an opaque form, for L{transact}).
    @raise TypeError: unless C{ops} is a list or tuple.
    @raise ValueError: naming the first bad op's index: not an object, an
        unknown C{op}, a missing or empty C{key}, a C{set} without exactly
        one of C{value} and C{value_base64} (or with bad base64), a bad
        C{content_type} or C{ttl}, a C{check} whose C{revision} is not a
        non-negative integer, a value that is not strict JSON.
    """
    if not isinstance(ops, (list, tuple)):
        raise TypeError("ops is a list, not %s" % (type(ops).__name__,))
    checked: List[_Op] = []
    for index, raw in enumerate(ops):
        def bad(code: str, detail: str, index: int = index, **extra: object) -> ValueError:
            return _bad_op(index, detail)

        kind = op_kind(raw, OP_KINDS, bad)
        key = raw.get("key")
        if not isinstance(key, str) or not key:
            raise _bad_op(index, "key must be a non-empty string")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad_op(index, "the key holds a lone surrogate")
        if kind == "set":
            checked.append(_set_op(index, raw, key))
        elif kind == "check":
            checked.append(_Op(kind, key, revision=check_revision(raw, bad)))
        else:
            checked.append(_Op(kind, key))
    return checked


def _set_op(index: int, raw: Mapping[str, Any], key: str) -> _Op:
    def bad(code: str, detail: str, **extra: object) -> ValueError:
        return _bad_op(index, detail)

    field = value_field(raw, bad)
    ttl = raw.get("ttl")
    try:
        _ttl(ttl)
    except (TypeError, ValueError) as e:
        raise _bad_op(index, str(e))
    content_type = raw.get("content_type", DEFAULT_CONTENT_TYPE)
    if field == "value_base64":
        try:
            _content_type(content_type)
        except (TypeError, ValueError) as e:
            raise _bad_op(index, str(e))
    value, implied_type = value_from_fields(raw, bad)
    return _Op("set", key, value, implied_type or content_type, ttl)


def transact(
    http: Any, url: str, ops: Sequence[Mapping[str, Any]], *, token: Optional[str] = None
) -> Deferred:
    """
    Run C{ops} (the L{batch} shapes) through a multi-request transaction:
    L{begin}, one request per op in order, then commit. Where a L{batch}
    is one request, this is the same work done the way a client that
    interleaves its own logic would do it, and it has no limit but the
    transaction's.

    How each op is staged:

        - C{set}: L{Transaction.put} (a JSON C{value} is sent as
          C{application/json}, a C{value_base64} with its C{content_type}).
        - C{delete}: L{Transaction.delete}. Deleting an absent key is not an
          error (as in a batch): its result says C{"deleted": false}.
        - C{get}: L{Transaction.get}; the result is a batch C{get} result.
        - C{check} / C{check-absent}: the transaction API has no bare
          check, so the key is read through the transaction (which records
          its revision, and makes the commit fail if it changes), and after
          the last op the revisions the server recorded
          (L{Transaction.describe}'s C{observed}: the committed revision when
          the transaction first touched the key) are compared with the
          expected ones. Together that is the batch's meaning: the committed
          revision is the expected one when the commit applies. A check
          that does not hold aborts the transaction and raises
          L{ConflictError}, as a batch's 409 would.

    Any failure aborts the transaction (best effort: an abort that fails
    is ignored, and idle transactions expire on the server anyway), except
    a refused commit (the server has ended it already) and a cancellation
    (nothing more is sent).

    @return: a Deferred firing with C{{"id", "revision", "ops": <ops
        applied>, "results": [one per op, as a batch gives them]}}.
    @raise TypeError, ValueError: at once, for ops that are not the batch
        shapes (see L{check_ops}); nothing is sent.
    @raise ConflictError: (in the Deferred) for a check that did not hold
        (C{problem["detected"] == "client"}, C{failed} names the ops) or a
        commit that conflicted (C{failed} is empty; C{conflicts} name the
        keys); nothing was applied.
    @raise KVClientError: (in the Deferred) for any other error answer;
        nothing was applied.
    """
    checked = check_ops(ops)
    return Deferred.fromCoroutine(_transact(http, url, checked, token))


def _absent(error: NotFoundError) -> bool:
    """Whether a 404 inside a transaction means the key, not the transaction."""
    return error.code == "key-not-found"


async def _transact(
    http: Any, url: str, ops: List[_Op], token: Optional[str]
) -> Dict[str, Any]:
    txn = await begin(http, url, token=token)
    try:
        results = await _stage(txn, ops)
        answer = await txn.commit()
    except CancelledError:
        raise
    except Exception:
        if not txn.finished:
            try:
                await txn.abort()
            except Exception:
                pass  # it expires on the server anyway; the first error matters
        raise
    return {
        "id": txn.id,
        "revision": answer.get("revision"),
        "ops": answer.get("ops"),
        "results": results,
    }


async def _stage(txn: Transaction, ops: List[_Op]) -> List[Dict[str, Any]]:
    """Stage every op in C{txn}, then evaluate the checks; the per-op results."""
    results: List[Dict[str, Any]] = []
    touched = set()
    checks: List[Tuple[int, _Op]] = []
    for index, op in enumerate(ops):
        if op.kind == "set":
            staged = await txn.put(op.key, op.value, content_type=op.content_type, ttl=op.ttl)
            results.append({"op": "set", "key": op.key, "created": not staged.get("committed")})
        elif op.kind == "delete":
            try:
                await txn.delete(op.key)
                deleted = True
            except NotFoundError as e:
                if not _absent(e):
                    raise
                deleted = False
            results.append({"op": "delete", "key": op.key, "deleted": deleted})
        elif op.kind == "get":
            try:
                entry = await txn.get(op.key)
            except NotFoundError as e:
                if not _absent(e):
                    raise
                results.append({"op": "get", "key": op.key, "found": False})
            else:
                results.append({"op": "get", "found": True, **entry.as_item()})
        else:
            if op.key not in touched:
                try:
                    await txn.get(op.key)  # records the revision it reads
                except NotFoundError as e:
                    if not _absent(e):
                        raise
            checks.append((index, op))
            results.append({"op": op.kind, "key": op.key, "ok": True})
        touched.add(op.key)
    if checks:
        observed = (await txn.describe()).get("observed")
        if not isinstance(observed, dict):
            raise _bad_response(200, "the transaction's description has no observed revisions")
        conflicts = []
        for index, op in checks:
            expected = op.revision if op.kind == "check" else 0
            actual = observed.get(op.key)
            if actual != expected:
                conflicts.append(
                    {
                        "key": op.key,
                        "check": "equals" if op.kind == "check" else "absent",
                        "expected": expected,
                        "actual": actual,
                        "tag": index,
                    }
                )
        if conflicts:
            failed = [c["tag"] for c in conflicts]
            raise ConflictError(
                409,
                {
                    "status": 409,
                    "title": "Conflict",
                    "code": "conflict",
                    "detail": "the transaction was aborted: %d check(s) failed on %s"
                    % (len(conflicts), ", ".join(repr(c["key"]) for c in conflicts[:10])),
                    "conflicts": conflicts,
                    "failed": failed,
                    "detected": "client",
                },
            )
    return results

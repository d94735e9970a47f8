# -*- test-case-name: tests.unit.test_batch_branching,tests.unit.test_web_v1 -*-
"""
The body of C{POST /v1/batch}, validated: its ops, and the compares of
the branching form.

Two forms:
  - C{{"ops": [...]}}: every op applies (see L{parse_ops} for their shapes);
  - C{{"compare": [...], "success": [...], "failure": [...]}}: etcd's
    form. When every compare holds, the C{success} ops apply, else the
    C{failure} ops. A compare is one of
      - C{{"key": K, "value": V}} or C{{"key": K, "value_base64": B64}}: the
        value equals V (compared as JSON, a value stored with a JSON type)
        or those exact bytes; C{"cmp": "!="} for not equal (an absent key
        is not equal to any value);
      - C{{"key": K, "absent": true}} (or C{false}: the key exists);
      - C{{"key": K, FIELD: N, "cmp": "=" | "!=" | "<" | ">"}} with FIELD
        one of C{version}, C{create_revision}, C{mod_revision} (0 for an
        absent key); C{cmp} defaults to C{=}.
    Branch ops are C{set}, C{delete}, C{incr} and C{get}: checks belong
    in C{compare}.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from kvtwist.errors import InvalidInput, LimitExceeded
from kvtwist.model import JSON_CONTENT_TYPE, Entry, Put
from kvtwist.strictjson import check_key, encode, parse
from kvtwist.web.v1.base import check_content_type, parse_ttl
from kvtwist.web.v1.leasing import lease_for_put
from kvtwist.wire import (
    BRANCH_KINDS,
    COMPARE_FIELDS,
    DEFAULT_CONTENT_TYPE,
    OP_KINDS,
    check_revision,
    decode_base64,
    incr_by,
    is_json_type,
    op_kind,
    value_field,
)

#: How a compare compares an entry field.
COMPARISONS: Dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}

#: One validated op: its kind and fields (C{key}, and C{put} or C{revision}).
ParsedOp = Tuple[str, Dict[str, Any]]


def bad_op(where: str, index: int, detail: str) -> InvalidInput:
    """The 400 naming a bad op (or compare) of a batch body by list and index."""
    return InvalidInput("bad-op", "%s %d: %s" % (where, index, detail), index=index)


def _checked_key(where: str, index: int, raw: Dict[str, Any]) -> str:
    key = raw.get("key")
    if not isinstance(key, str):
        raise bad_op(where, index, "key must be a string")
    try:
        return check_key(key)
    except InvalidInput as e:
        raise bad_op(where, index, e.detail)


def parse_ops(
    raw_ops: Any, clock, where: str = "op", kinds: Tuple[str, ...] = OP_KINDS, store=None
) -> List[ParsedOp]:
    """
    Validate a list of ops into C{(kind, fields)} pairs:
      - C{{"op": "set", "key": K, "value": <JSON>}} or with C{"value_base64"}
        and C{"content_type"}; optional C{"ttl"} (seconds) and C{"lease"}
        (an id: the store, C{store}, must grant leases);
      - C{{"op": "delete", "key": K}};
      - C{{"op": "incr", "key": K, "by": N}}: add the integer N (default 1)
        to the JSON integer K holds (0 when absent);
      - C{{"op": "check", "key": K, "revision": N}} (mod_revision is N; 0
        means absent);
      - C{{"op": "check-absent", "key": K}};
      - C{{"op": "get", "key": K}}.

    @param where: how errors name the list (C{op}, C{success op}, ...).
    @raise InvalidInput: naming the first bad op's index.
    """
    if not isinstance(raw_ops, list):
        raise InvalidInput("bad-batch", "%ss must be a list" % (where,))
    parsed = []
    for index, raw in enumerate(raw_ops):
        def bad(code: str, detail: str, index: int = index, **extra: object) -> InvalidInput:
            return bad_op(where, index, detail)

        kind = op_kind(raw, kinds, bad)
        key = _checked_key(where, index, raw)
        fields: Dict[str, Any] = {"key": key}
        if kind == "set":
            fields["put"] = _put(where, index, raw, key, clock, store)
        elif kind == "incr":
            fields["by"] = incr_by(raw, bad)
        elif kind == "check":
            fields["revision"] = check_revision(raw, bad)
        parsed.append((kind, fields))
    return parsed


def _value_bytes(where: str, index: int, raw: Dict[str, Any]) -> bytes:
    return decode_base64(
        raw["value_base64"], lambda code, detail, **extra: bad_op(where, index, detail)
    )


def _put(where: str, index: int, raw: Dict[str, Any], key: str, clock, store) -> Put:
    def bad(code: str, detail: str, **extra: object) -> InvalidInput:
        return bad_op(where, index, detail)

    field = value_field(raw, bad)
    try:
        expires = parse_ttl(raw.get("ttl"), clock)
        lease = lease_for_put(store, raw.get("lease"))
    except InvalidInput as e:
        raise bad_op(where, index, e.detail)
    if field == "value":
        return Put(key, encode(raw["value"]), JSON_CONTENT_TYPE, expires, lease)
    content_type = raw.get("content_type", DEFAULT_CONTENT_TYPE)
    if not isinstance(content_type, str):
        raise bad_op(where, index, "content_type must be a string")
    try:
        content_type = check_content_type(content_type)
    except InvalidInput as e:
        raise bad_op(where, index, e.detail)
    return Put(key, decode_base64(raw["value_base64"], bad), content_type, expires, lease)


def json_equal(a: Any, b: Any) -> bool:
    """
    Whether two parsed JSON values are the same JSON: numbers by value
    (C{1} and C{1.0} alike), but C{true} is not C{1}, as Python's C{==}
    would have it.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return a == b


@dataclass(frozen=True)
class Compare:
    """
    One compare of the branching form, evaluated against the key's entry
    (None when absent).

    @ivar target: C{value}, C{value_base64}, C{absent} or an entry field.
    @ivar expected: the JSON value, the bytes, the bool or the number.
    """

    key: str
    target: str
    expected: Any
    cmp: str = "="

    def holds(self, entry: Optional[Entry]) -> bool:
        """Whether this compare holds for C{entry}."""
        if self.target == "absent":
            return (entry is None) == self.expected
        if self.target in COMPARE_FIELDS:
            actual = getattr(entry, self.target) if entry is not None else 0
            return COMPARISONS[self.cmp](actual, self.expected)
        equal = entry is not None and self._value_equal(entry)
        return equal if self.cmp == "=" else not equal

    def _value_equal(self, entry: Entry) -> bool:
        if self.target == "value_base64":
            return entry.value == self.expected
        if not is_json_type(entry.content_type):
            return False
        try:
            stored = parse(entry.value)
        except InvalidInput:
            return False
        return json_equal(stored, self.expected)


def parse_compares(raw_compares: Any) -> List[Compare]:
    """
    Validate the C{compare} list.

    @raise InvalidInput: naming the first bad compare's index.
    """
    if not isinstance(raw_compares, list):
        raise InvalidInput("bad-batch", "compare must be a list")
    compares = []
    for index, raw in enumerate(raw_compares):
        if not isinstance(raw, dict):
            raise bad_op("compare", index, "each compare is an object")
        key = _checked_key("compare", index, raw)
        targets = [name for name in ("value", "value_base64", "absent") + COMPARE_FIELDS if name in raw]
        if len(targets) != 1:
            raise bad_op(
                "compare", index,
                "a compare tests exactly one of value, value_base64, absent, "
                + ", ".join(COMPARE_FIELDS),
            )
        unknown = set(raw) - {"key", "cmp", targets[0]}
        if unknown:
            raise bad_op("compare", index, "unknown member %r" % (sorted(unknown)[0],))
        target = targets[0]
        cmp = raw.get("cmp", "=")
        if target == "absent":
            expected = raw["absent"]
            if not isinstance(expected, bool) or "cmp" in raw:
                raise bad_op("compare", index, "absent is true or false, without cmp")
        elif target in COMPARE_FIELDS:
            expected = raw[target]
            if type(expected) is not int or expected < 0:
                raise bad_op("compare", index, "%s must be a non-negative integer" % (target,))
            if cmp not in COMPARISONS:
                raise bad_op("compare", index, "cmp is one of " + ", ".join(COMPARISONS))
        else:
            expected = raw["value"] if target == "value" else _value_bytes("compare", index, raw)
            if cmp not in ("=", "!="):
                raise bad_op("compare", index, "a value compare's cmp is = or !=")
        compares.append(Compare(key, target, expected, cmp))
    return compares


@dataclass(frozen=True)
class BatchPlan:
    """
    A validated batch body. The C{ops} form is a plan without compares
    (C{compares} is None) whose C{success} ops always apply.
    """

    compares: Optional[List[Compare]]
    success: List[ParsedOp]
    failure: List[ParsedOp]

    @property
    def branching(self) -> bool:
        return self.compares is not None

    def all_ops(self) -> List[ParsedOp]:
        """Every op of both branches."""
        return self.success + self.failure


def parse_batch(document: Any, clock, limits, store) -> BatchPlan:
    """
    Validate a batch body of either form (C{store}: for the leases sets name).

    @raise InvalidInput: for a malformed body, naming the first bad op.
    @raise LimitExceeded: past C{max_batch_ops} (compares and the ops of
        both branches count).
    """
    if isinstance(document, dict) and set(document) == {"ops"}:
        size = len(document["ops"]) if isinstance(document["ops"], list) else 0
        _check_size(limits, size)
        return BatchPlan(None, parse_ops(document["ops"], clock, store=store), [])
    if isinstance(document, dict) and "compare" in document and set(document) <= {
        "compare", "success", "failure"
    }:
        raw = {name: document.get(name, []) for name in ("compare", "success", "failure")}
        _check_size(limits, sum(len(v) for v in raw.values() if isinstance(v, list)))
        return BatchPlan(
            parse_compares(raw["compare"]),
            parse_ops(raw["success"], clock, "success op", BRANCH_KINDS, store),
            parse_ops(raw["failure"], clock, "failure op", BRANCH_KINDS, store),
        )
    raise InvalidInput(
        "bad-batch", 'expected {"ops": [...]} or {"compare": [...], "success": [...], "failure": [...]}'
    )


def _check_size(limits, size: int) -> None:
    if size > limits.max_batch_ops:
        raise LimitExceeded("max_batch_ops", limits.max_batch_ops, size)

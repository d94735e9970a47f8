# -*- test-case-name: tests.unit.test_wire -*-
"""
The wire vocabulary client and server share: what a JSON content type is,
strict JSON (L{strictjson}), a value as JSON fields (C{value} or
C{value_base64}) in both directions, strict base64, RFC 3339 times, ETags,
and the schema of batch ops (parsed by the server, built and checked by
the client).

Only the standard library: the client imports this module, and it must
not pull the server (twisted.web) in with it. Errors are raised through a
factory the caller passes (L{ErrorFactory}), so the server raises its 400s
and a client its C{ValueError}s from the same checks.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

# The content types of the data model (standard library only, like this
# module): a value given as JSON, and a value given without a type.
from kvtwist.model import DEFAULT_CONTENT_TYPE as DEFAULT_CONTENT_TYPE
from kvtwist.model import JSON_CONTENT_TYPE as JSON_CONTENT_TYPE

#: Deepest nesting of arrays and objects accepted in a request body, and
#: inlined as a C{value} field.
MAX_DEPTH = 32

#: How a check reports a rejection: called as C{error(code, detail,
#: **extra)} (C{code} a stable identifier such as C{"bad-json"}, C{detail}
#: a sentence, C{extra} further fields such as C{limit}); it returns the
#: exception to raise. L{kvtwist.errors.InvalidInput} is one.
ErrorFactory = Callable[..., Exception]


class WireError(ValueError):
    """
    What the checks here raise when the caller names no other error.

    @ivar code: a stable identifier (C{"bad-json"}, C{"too-deep"}, ...).
    @ivar detail: a sentence for humans (also the exception's text).
    @ivar extra: further fields (C{limit}, C{key}, ...).
    """

    def __init__(self, code: str, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extra = extra


#: The longest content type kept with a value (it is sent back as a header).
MAX_CONTENT_TYPE_LENGTH = 255


def valid_content_type(content_type: str) -> bool:
    """
    Whether C{content_type}, surrounding spaces aside, is fit to store with
    a value and send back as a header: 1 to L{MAX_CONTENT_TYPE_LENGTH}
    printable ASCII characters. The server refuses any other; the client
    and C{kvtwist load} refuse them before sending.
    """
    text = content_type.strip()
    return 0 < len(text) <= MAX_CONTENT_TYPE_LENGTH and text.isascii() and text.isprintable()


def is_json_type(content_type: str) -> bool:
    """Whether a Content-Type is JSON (C{application/json} or a C{+json} type)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON_CONTENT_TYPE or media.endswith("+json")


# Strict JSON.


class NotStrictJSON(Exception):
    """
    Raised by L{parse_strict} (and from inside the JSON decoder's hooks),
    and turned into the caller's error by L{strictjson}. Deliberately not a
    C{ValueError}, so it is never mistaken for the decoder's own complaints.

    @ivar code: as for L{ErrorFactory}.
    @ivar detail: the sentence the error carries, naming what was parsed.
    @ivar reason: the same without naming what was parsed, for a caller
        that words its own sentence (the C{kvtwist} command).
    @ivar position: for a syntax error, the offset in the text where the
        decoder stopped; L{None} otherwise.
    """

    def __init__(
        self,
        code: str,
        detail: str,
        reason: Optional[str] = None,
        position: Optional[int] = None,
        **extra: object,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.reason = detail if reason is None else reason
        self.position = position
        self.extra = extra


def _reject_constant(name: str) -> Any:
    raise NotStrictJSON("bad-json", "%s is not valid JSON" % (name,))


def _unique_object(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise NotStrictJSON(
                "duplicate-key", "the JSON object repeats the key %r" % (key,), key=key
            )
        result[key] = value
    return result


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise NotStrictJSON(
            "bad-json", "the number %s is too large (it overflows to infinity)" % (text[:40],)
        )
    return value


# One decoder for every call: json.loads with options builds a new one each
# time.
_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant,
    parse_float=_finite_float,
    object_pairs_hook=_unique_object,
)


def _too_deep(max_depth: Optional[int]) -> NotStrictJSON:
    if max_depth is None:
        return NotStrictJSON("too-deep", "the JSON is nested too deeply")
    return NotStrictJSON(
        "too-deep", "JSON nesting is limited to %d levels" % (max_depth,), limit=max_depth
    )


def _check_depth(value: Any, max_depth: int) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > max_depth:
                raise _too_deep(max_depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def parse_strict(
    data: Union[bytes, str], *, max_depth: Optional[int] = MAX_DEPTH, subject: str = "body"
) -> Any:
    """
    L{strictjson}, raising L{NotStrictJSON} itself: for a caller that words
    its own messages from the rejection's C{reason} and C{position}.
    """
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise NotStrictJSON("bad-encoding", "the %s is not valid UTF-8: %s" % (subject, e))
    if text.startswith("\ufeff"):
        raise NotStrictJSON("bad-json", "a JSON %s must not start with a BOM" % (subject,))
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise _too_deep(max_depth)
    except ValueError as e:
        # NotStrictJSON, raised by the hooks, is not a ValueError: only the
        # decoder's own complaints (and int-size limits) land here.
        raise NotStrictJSON(
            "bad-json",
            "the %s is not valid JSON: %s" % (subject, e),
            reason=str(e),
            position=getattr(e, "pos", None),
        )
    if max_depth is not None:
        _check_depth(value, max_depth)
    try:
        encode_json(value)
    except UnicodeEncodeError:
        raise NotStrictJSON("bad-encoding", "the JSON contains a lone surrogate (\\ud800-\\udfff)")
    return value


def strictjson(
    data: Union[bytes, str],
    error: ErrorFactory = WireError,
    *,
    max_depth: Optional[int] = MAX_DEPTH,
    subject: str = "body",
) -> Any:
    """
    Parse C{data} as strict JSON. Python's C{json} accepts NaN and
    Infinity, keeps the last of duplicate keys, recurses without a useful
    bound and lets lone surrogates through; each of those is refused here.

    @param data: UTF-8 bytes, or text.
    @param error: makes the exception raised (see L{ErrorFactory}).
    @param max_depth: the deepest nesting of arrays and objects accepted;
        L{None} for no limit but Python's recursion limit.
    @param subject: what is parsed, for the messages (C{"the body is not
        valid JSON: ..."}).
    @raise Exception: C{error(code, detail, **extra)} for invalid UTF-8
        (code C{bad-encoding}), a byte order mark or invalid JSON, NaN,
        Infinity or a number that overflows to it (C{bad-json}), a repeated
        object key (C{duplicate-key}, with C{key}), nesting deeper than
        C{max_depth} (C{too-deep}, with C{limit}), or a lone surrogate
        (C{bad-encoding}).
    """
    try:
        return parse_strict(data, max_depth=max_depth, subject=subject)
    except NotStrictJSON as e:
        raise error(e.code, e.detail, **e.extra) from None


# One encoder for every call: json.dumps with options builds a new one each
# time, which was a tenth of kvtwist load's parsing time.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode_json(value: Any) -> bytes:
    """
    The canonical bytes of a JSON value: compact, UTF-8, keys in the order
    given.

    @raise UnicodeEncodeError: if C{value} holds a lone surrogate.
    @raise ValueError: for NaN or Infinity.
    @raise TypeError: for a value that is not JSON data.
    """
    return _ENCODER.encode(value).encode("utf-8")


# Values as JSON fields, and base64.


def encode_base64(data: bytes) -> str:
    """C{data} as standard base64 text, padded (a C{value_base64} field)."""
    return base64.b64encode(data).decode("ascii")


def decode_base64(encoded: Any, error: ErrorFactory = WireError) -> bytes:
    """
    The bytes of a C{value_base64} field: standard base64, padded, nothing
    but its alphabet (no spaces, no newlines, no URL-safe letters).

    @raise Exception: C{error("bad-base64", "value_base64 is not valid
        base64")} if C{encoded} is not such a string.
    """
    try:
        if not isinstance(encoded, str):
            raise TypeError("not a string")
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise error("bad-base64", "value_base64 is not valid base64") from None


def value_fields(value: bytes, content_type: str) -> Dict[str, Any]:
    """
    A value for JSON output, the same on both sides: C{{"value": <JSON>}}
    for a JSON content type whose bytes are strict JSON (L{strictjson}, as a
    request body), else C{{"value_base64": "..."}}. A value stored as
    C{application/json} may still be NaN, Infinity or malformed: it goes as
    base64, so the document that carries it stays strict JSON.
    """
    if is_json_type(content_type):
        try:
            return {"value": strictjson(value)}
        except WireError:
            pass
    return {"value_base64": encode_base64(value)}


def value_field(fields: Mapping[str, Any], error: ErrorFactory = WireError) -> str:
    """
    Which value field C{fields} carry: C{"value"} or C{"value_base64"}.

    @raise Exception: C{error("bad-op", ...)} for neither or both.
    """
    has_json = "value" in fields
    if has_json == ("value_base64" in fields):
        raise error("bad-op", "a set takes exactly one of value and value_base64")
    return "value" if has_json else "value_base64"


def value_from_fields(
    fields: Mapping[str, Any], error: ErrorFactory = WireError
) -> Tuple[bytes, Optional[str]]:
    """
    The way back from L{value_fields}: the bytes of exactly one of
    C{value} (encoded by L{encode_json}) and C{value_base64}, with the
    content type a C{value} implies (C{application/json}), or L{None} for
    base64 (the caller's default or C{content_type} field applies).

    @raise Exception: C{error(code, detail)} for neither or both fields
        (C{bad-op}), a C{value} that is not strict JSON (C{bad-json}), or
        bad base64 (C{bad-base64}).
    """
    if value_field(fields, error) == "value":
        try:
            return encode_json(fields["value"]), JSON_CONTENT_TYPE
        except (TypeError, ValueError) as e:
            raise error("bad-json", "the value is not strict JSON: %s" % (e,)) from None
    return decode_base64(fields["value_base64"], error), None


# Times.


def rfc3339(timestamp: float) -> str:
    """C{timestamp} as an RFC 3339 UTC date-time, to the millisecond."""
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> float:
    """
    An RFC 3339 date-time (C{Z} or an offset required) as epoch seconds.

    @raise ValueError: if it is not one, or has no time zone.
    """
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    return moment.timestamp()


# Revisions and ETags.


def parse_revision(text: str) -> Optional[int]:
    """
    A revision written as ASCII decimal digits (at most 19, so it fits etcd's
    int64), or None. C{str.isdigit} alone would admit superscripts and other
    digits that C{int} then refuses.
    """
    if text.isascii() and text.isdigit() and len(text) <= 19:
        return int(text)
    return None


def etag(mod_revision: int) -> str:
    """The ETag of a key: its mod_revision, quoted (C{'"5"'})."""
    return '"%d"' % (mod_revision,)


def etag_revision(tag: str, weak: bool = False) -> Optional[int]:
    """
    The revision an entity tag names (C{'"5"'}; with C{weak}, C{'W/"5"'}
    too), or L{None} if it names none.
    """
    tag = tag.strip()
    if weak and tag.startswith("W/"):
        tag = tag[2:]
    if len(tag) >= 2 and tag[0] == tag[-1] == '"':
        return parse_revision(tag[1:-1])
    return None


# The ops of a batch (POST /v1/batch).

#: The op kinds of the C{ops} form.
OP_KINDS = ("set", "delete", "incr", "check", "check-absent", "get")
#: The op kinds of a branch of the branching form: checks belong in its
#: C{compare} list.
BRANCH_KINDS = ("set", "delete", "incr", "get")
#: The op kinds a multi-request transaction can stage one by one (it has
#: no increment).
STAGED_KINDS = ("set", "delete", "check", "check-absent", "get")
#: Ops that write (a batch without them commits nothing).
WRITE_KINDS = frozenset({"set", "delete", "incr"})
#: The entry fields a compare may test.
COMPARE_FIELDS = ("version", "create_revision", "mod_revision")


# Each check below raises C{error("bad-op", detail)}; the caller's factory
# names the op (C{"op 3: ..."}).


def op_kind(raw: Any, kinds: Tuple[str, ...], error: ErrorFactory = WireError) -> str:
    """
    The kind of op C{raw} (its C{op}), one of C{kinds}.

    @raise Exception: C{error("bad-op", ...)} unless C{raw} is an object
        whose C{op} is one of C{kinds}.
    """
    if not isinstance(raw, Mapping) or raw.get("op") not in kinds:
        raise error(
            "bad-op", "each op is an object whose op is one of " + ", ".join(sorted(kinds))
        )
    kind: str = raw["op"]
    return kind


def check_revision(raw: Mapping[str, Any], error: ErrorFactory = WireError) -> int:
    """
    The C{revision} of a C{check} op: a non-negative integer (0: absent).

    @raise Exception: C{error("bad-op", ...)} otherwise.
    """
    revision = raw.get("revision")
    if type(revision) is not int or revision < 0:
        raise error("bad-op", "revision must be a non-negative integer")
    return revision


def incr_by(raw: Mapping[str, Any], error: ErrorFactory = WireError) -> int:
    """
    The C{by} of an C{incr} op: an integer, not a bool (default 1).

    @raise Exception: C{error("bad-op", ...)} otherwise.
    """
    by = raw.get("by", 1)
    if type(by) is not int:
        raise error("bad-op", "by must be an integer")
    return by


def set_op(key: str, value: bytes, content_type: str) -> Dict[str, Any]:
    """
    The C{set} op writing C{value} with C{content_type}: its bytes as
    C{value_base64}, so every value round-trips exactly (a C{ttl} is the
    caller's to add).
    """
    return {
        "op": "set",
        "key": key,
        "value_base64": encode_base64(value),
        "content_type": content_type,
    }


def incr_op(key: str, by: int = 1) -> Dict[str, Any]:
    """The C{incr} op adding C{by} to the integer C{key} holds."""
    return {"op": "incr", "key": key, "by": by}

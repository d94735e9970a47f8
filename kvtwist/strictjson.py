"""
Strict JSON for request bodies, and the canonical encoding of JSON values.

Python's C{json} accepts NaN and Infinity, keeps the last of duplicate keys,
recurses without a useful bound and lets lone surrogates through; each of
those is a 400 here (L{kvtwist.errors.InvalidInput}), and nothing is staged.
"""

from __future__ import annotations

import json
import math
from typing import Any, List, Optional, Tuple

from kvtwist.errors import InvalidInput

#: Deepest nesting of arrays and objects accepted in a request body.
MAX_DEPTH = 32
#: Longest key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024


def _reject_constant(name: str) -> Any:
    raise InvalidInput("bad-json", "%s is not valid JSON" % (name,))


def _unique_object(pairs: List[Tuple[str, Any]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise InvalidInput(
                "duplicate-key", "the JSON object repeats the key %r" % (key,), key=key
            )
        result[key] = value
    return result


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidInput(
            "bad-json", "the number %s is too large (it overflows to infinity)" % (text[:40],)
        )
    return value


_decoder = json.JSONDecoder(
    parse_constant=_reject_constant,
    parse_float=_finite_float,
    object_pairs_hook=_unique_object,
)


def _check_depth(value: Any) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > MAX_DEPTH:
                raise InvalidInput(
                    "too-deep",
                    "JSON nesting is limited to %d levels" % (MAX_DEPTH,),
                    limit=MAX_DEPTH,
                )
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def parse(body: bytes) -> Any:
    """
    Parse a request body as strict JSON.

    @raise InvalidInput: for invalid UTF-8, invalid JSON, NaN or Infinity,
        duplicate object keys, nesting deeper than L{MAX_DEPTH}, or lone
        surrogates.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput("bad-encoding", "the body is not valid UTF-8: %s" % (e,))
    if text.startswith("\ufeff"):
        raise InvalidInput("bad-json", "a JSON body must not start with a BOM")
    try:
        value = _decoder.decode(text)
    except RecursionError:
        raise InvalidInput(
            "too-deep", "JSON nesting is limited to %d levels" % (MAX_DEPTH,),
            limit=MAX_DEPTH,
        )
    except ValueError as e:
        # InvalidInput raised by the hooks is not a ValueError, so only the
        # parser's own complaints (and int-size limits) land here.
        raise InvalidInput("bad-json", "the body is not valid JSON: %s" % (e,))
    _check_depth(value)
    try:
        encode(value)
    except UnicodeEncodeError:
        raise InvalidInput(
            "bad-encoding", "the JSON contains a lone surrogate (\\ud800-\\udfff)"
        )
    return value


def encode(value: Any) -> bytes:
    """
    The canonical bytes of a JSON value: compact, UTF-8, keys in the order
    given. What the seed routes store and return.

    @raise UnicodeEncodeError: if C{value} holds a lone surrogate.
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_revision(text: str) -> Optional[int]:
    """
    A revision written as ASCII decimal digits (at most 19, so it fits etcd's
    int64), or None. C{str.isdigit} alone would admit superscripts and other
    digits that C{int} then refuses.
    """
    if text.isascii() and text.isdigit() and len(text) <= 19:
        return int(text)
    return None


def check_key(key: str) -> str:
    """
    Validate a key: 1 to L{MAX_KEY_BYTES} UTF-8 bytes, no lone surrogates.

    @raise InvalidInput: otherwise.
    """
    if not isinstance(key, str):
        raise InvalidInput("bad-key", "keys are strings; got %s" % (type(key).__name__,))
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput("bad-key", "the key contains a lone surrogate")
    if size == 0:
        raise InvalidInput("bad-key", "the key is empty")
    if size > MAX_KEY_BYTES:
        raise InvalidInput(
            "key-too-long",
            "keys are limited to %d UTF-8 bytes; this one has %d" % (MAX_KEY_BYTES, size),
            limit=MAX_KEY_BYTES,
            size=size,
        )
    return key


def decode_key(raw: bytes) -> str:
    """
    Decode a percent-decoded path segment into a key.

    @raise InvalidInput: if it is not valid UTF-8 or not a valid key.
    """
    try:
        key = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("bad-key", "the key is not valid UTF-8")
    return check_key(key)

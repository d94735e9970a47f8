# -*- test-case-name: tests.unit.test_wire,tests.unit.test_web_v1 -*-
"""
Strict JSON for request bodies, and the canonical encoding of JSON values;
keys as requests name them.

The rules of strict JSON are L{kvtwist.wire.strictjson}'s; what breaks one
is a 400 here (L{kvtwist.errors.InvalidInput}), and nothing is staged.
"""

from __future__ import annotations

import json
from typing import Any

from kvtwist.errors import InvalidInput
from kvtwist.wire import MAX_DEPTH, parse_revision, strictjson

__all__ = [
    "MAX_DEPTH",
    "MAX_KEY_BYTES",
    "check_key",
    "decode_key",
    "encode",
    "parse",
    "parse_revision",
]

#: Longest key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024


def parse(body: bytes) -> Any:
    """
    Parse a request body as strict JSON (L{kvtwist.wire.strictjson}).

    @raise InvalidInput: for invalid UTF-8, invalid JSON, NaN or Infinity,
        duplicate object keys, nesting deeper than L{MAX_DEPTH}, or lone
        surrogates.
    """
    return strictjson(body, InvalidInput)


def encode(value: Any) -> bytes:
    """
    The canonical bytes of a JSON value: compact, UTF-8, keys in the order
    given. What the seed routes store and return.

    @raise UnicodeEncodeError: if C{value} holds a lone surrogate.
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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

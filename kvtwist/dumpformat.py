# -*- test-case-name: tests.unit.test_dumpload -*-
"""
The line format of C{kvtwist dump} (and of a snapshot's key lines, which
C{kvtwist load} reads alike): one JSON object per key. docs/cli.md
describes it.

L{parse_record} reads a line into a L{Record}, strictly (no NaN, no
repeated keys, one of C{value} and C{value_base64}); L{record_line} writes
a listing item as a line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from kvtwist import client
from kvtwist.wire import (
    encode_base64,
    encode_json,
    parse_rfc3339,
    strictjson,
    valid_content_type,
    value_from_fields,
)

__all__ = ["DumpFormatError", "Record", "parse_record", "record_line"]


class DumpFormatError(ValueError):
    """
    A line of a dump is not a record: not strict JSON, not an object, or
    without a usable C{key}, value, C{content_type} or C{expires}.

    @ivar line: the 1-based line number.
    """

    def __init__(self, line: int, detail: str) -> None:
        super().__init__("line %d: %s" % (line, detail))
        self.line = line


@dataclass(frozen=True)
class Record:
    """
    One key of a dump.

    @ivar expires: when it expires, in seconds since the epoch, or L{None}.
    """

    key: str
    value: bytes
    content_type: str
    expires: Optional[float] = None


def parse_record(line: bytes, number: int) -> Optional[Record]:
    """
    The record on one line of a dump (L{None} for a blank line, and for the
    header and end lines of a snapshot).

    Fields: C{key} (a non-empty string); exactly one of C{value} (JSON) and
    C{value_base64}; C{content_type} (default C{application/json} with
    C{value}, C{application/octet-stream} with C{value_base64});
    C{expires} (RFC 3339 or null, default null). Other fields are ignored.

    @param number: the line's number, for error messages.
    @raise DumpFormatError: if the line is not such a record.
    """
    if not line.strip():
        return None
    # No nesting limit but Python's: a dump holds what the server stored.
    document = strictjson(
        line,
        lambda code, detail, **extra: DumpFormatError(number, "not strict JSON: " + detail),
        max_depth=None,
        subject="line",
    )
    if not isinstance(document, dict):
        raise DumpFormatError(number, "a record is a JSON object")
    if "key" not in document and (document.get("snapshot") == "kvtwist" or document.get("end") is True):
        # The header or end line of a snapshot (GET /v1/snapshot): its key
        # lines are records, so a snapshot loads like a dump.
        return None
    key = document.get("key")
    if not isinstance(key, str) or not key:
        raise DumpFormatError(number, "key must be a non-empty string")

    def refused(code: str, detail: str, **extra: object) -> DumpFormatError:
        if code == "bad-op":
            detail = "a record has exactly one of value and value_base64"
        return DumpFormatError(number, detail)

    # The value fields read as a batch's set op reads them (kvtwist.wire).
    value, implied_type = value_from_fields(document, refused)
    default_type = implied_type or client.DEFAULT_CONTENT_TYPE
    content_type = document.get("content_type", default_type)
    if not isinstance(content_type, str) or not valid_content_type(content_type):
        raise DumpFormatError(number, "content_type must be non-empty printable ASCII")
    expires = document.get("expires")
    if expires is not None:
        if not isinstance(expires, str):
            raise DumpFormatError(number, "expires must be an RFC 3339 date-time or null")
        try:
            expires = parse_rfc3339(expires)
        except (ValueError, OverflowError):
            raise DumpFormatError(number, "expires is not an RFC 3339 date-time: %r" % (expires,))
    return Record(key, value, content_type, expires)


def record_line(item: Mapping[str, Any], exact_value: Optional[bytes] = None) -> bytes:
    """
    The dump line (with its newline) of a listing item with values.

    @param exact_value: the value's bytes as stored, to write as
        C{value_base64} whatever the item carries.
    @raise ValueError: if the item's inline value cannot be written as
        strict JSON (pass C{exact_value} then).
    """
    record: Dict[str, Any] = {"key": item["key"]}
    if exact_value is not None:
        record["value_base64"] = encode_base64(exact_value)
    elif "value" in item:
        encode_json(item["value"])
        record["value"] = item["value"]
    else:
        record["value_base64"] = item["value_base64"]
    record["content_type"] = item.get("content_type", client.DEFAULT_CONTENT_TYPE)
    record["expires"] = item.get("expires")
    return encode_json(record) + b"\n"

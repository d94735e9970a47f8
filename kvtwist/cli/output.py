# -*- test-case-name: tests.unit.test_cli -*-
"""
How the C{kvtwist} command prints: one line of JSON per result, values
that are text as text (L{kvtwist.client.text_of}), exact bytes through a
binary stdout, and a failed check of a conflict for people. docs/cli.md
gives each command's output.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, TextIO

from kvtwist import client

__all__ = ["describe_conflict", "has_value", "print_json", "readable", "text_value", "write_bytes"]


def print_json(out: TextIO, value: Any) -> None:
    """Write C{value} as one line of JSON (non-ASCII as itself)."""
    out.write(json.dumps(value, ensure_ascii=False) + "\n")


def write_bytes(out: TextIO, data: bytes) -> None:
    """
    Write C{data} exactly: through the stream's binary buffer when it has
    one (a real stdout), else decoded (a test's StringIO).
    """
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        out.write(data.decode("utf-8", "replace"))
        return
    out.flush()
    buffer.write(data)
    buffer.flush()


def readable(item: Mapping[str, Any]) -> Dict[str, Any]:
    """
    A listing item, entry, event or batch result for output: a text value
    (L{client.text_of}) as C{"text"} in place of C{"value_base64"}.
    """
    encoded = item.get("value_base64")
    text = None
    if encoded is not None:
        try:
            data = client.decode_value_base64(encoded)
        except ValueError:
            pass
        else:
            text = client.text_of(data, item.get("content_type") or client.DEFAULT_CONTENT_TYPE)
    if text is None:
        return dict(item)
    return {("text" if name == "value_base64" else name): (text if name == "value_base64" else v)
            for name, v in item.items()}


def text_value(item: Mapping[str, Any]) -> str:
    """
    A value of a listing item, event or get result on one line of text:
    JSON as JSON; text as itself when it is one printable line, else as a
    JSON string (quoted, escaped); other bytes as C{base64:...}.
    """
    item = readable(item)
    if "value" in item:
        return json.dumps(item["value"], ensure_ascii=False)
    if "text" in item:
        text = item["text"]
        return text if text.isprintable() else json.dumps(text, ensure_ascii=False)
    return "base64:" + str(item.get("value_base64", ""))


def has_value(item: Mapping[str, Any]) -> bool:
    """Whether a listing item or event carries its value."""
    return "value" in item or "value_base64" in item


def _describe_revision(revision: Any) -> str:
    if revision == 0:
        return "absent"
    if revision is None:
        return "unknown"
    return "revision %s" % (revision,)


def describe_conflict(conflict: Mapping[str, Any]) -> str:
    """One failed check of a 409, for people."""
    check = conflict.get("check")
    if check == "absent":
        expected = "absent"
    elif check == "present":
        expected = "present"
    else:
        expected = _describe_revision(conflict.get("expected"))
    tag = conflict.get("tag")
    if type(tag) is int:
        where = " (op %d)" % (tag,)
    elif tag == "observed":
        where = " (changed by another commit)"
    elif isinstance(tag, str):
        where = " (%s)" % (tag,)
    else:
        where = ""
    return "conflict on %s%s: expected %s, found %s" % (
        json.dumps(conflict.get("key"), ensure_ascii=False), where, expected,
        _describe_revision(conflict.get("actual")),
    )

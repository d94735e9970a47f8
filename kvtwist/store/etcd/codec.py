# -*- test-case-name: tests.contract.test_store_etcd -*-
"""
How kvtwist's data looks in etcd: base64 (the JSON gateway's encoding of
keys and values, decoded strictly everywhere), the key layout under the
store's prefix (L{KeySpace}) and the value envelope (L{encode_value},
L{decode_value}). docs/etcd.md describes both encodings.
"""

from __future__ import annotations

import base64
import json
from typing import Optional, Tuple

from kvtwist.errors import StoreCorrupt
from kvtwist.model import Entry
from kvtwist.store.etcd.errors import EtcdError

__all__ = [
    "ENVELOPE_VERSION",
    "KeySpace",
    "Row",
    "b64",
    "decode_value",
    "encode_value",
    "mod_compare",
    "prefix_end",
    "unb64",
]

#: The value-envelope format this module writes and reads.
ENVELOPE_VERSION = 1


def b64(data: bytes) -> str:
    """C{data} as the gateway's JSON carries bytes: standard base64."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """
    The bytes of a base64 field of the gateway's JSON, strictly: anything
    but the standard alphabet with correct padding is refused, so a damaged
    answer is not silently read as other bytes.

    @raise ValueError: (L{binascii.Error} or L{UnicodeEncodeError}) if
        C{text} is not strict base64.
    """
    return base64.b64decode(text.encode("ascii"), validate=True)


def prefix_end(key: bytes) -> bytes:
    """
    The etcd C{range_end} that selects every key starting with C{key}: the
    key with its last byte below 0xff incremented (etcd's own rule).
    """
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    # All 0xff (or empty): "\0" means "to the end of the keyspace".
    return b"\x00"


def encode_value(
    value: bytes, content_type: str, expires: Optional[float], commit_id: str
) -> bytes:
    """The etcd value for one entry: a JSON header line, then the raw bytes."""
    header = json.dumps(
        {"v": ENVELOPE_VERSION, "ct": content_type, "exp": expires, "c": commit_id},
        separators=(",", ":"),
        sort_keys=True,
        allow_nan=False,
    )
    # ensure_ascii (the default) keeps newlines escaped inside the header, so
    # the first b"\n" always ends it.
    return header.encode("ascii") + b"\n" + value


def decode_value(key: str, data: bytes) -> Tuple[bytes, str, Optional[float], str]:
    """
    Split an etcd value into (value, content_type, expires, commit_id).

    @raise StoreCorrupt: if C{data} is not a kvtwist envelope.
    """
    head, newline, value = data.partition(b"\n")
    try:
        if not newline:
            raise ValueError("no header line")
        header = json.loads(head.decode("ascii"))
        if not isinstance(header, dict) or header.get("v") != ENVELOPE_VERSION:
            raise ValueError("unknown header")
        content_type = header["ct"]
        expires = header["exp"]
        commit_id = header.get("c", "")
        if not isinstance(content_type, str) or not isinstance(commit_id, str):
            raise ValueError("bad header field")
        if expires is not None:
            if isinstance(expires, bool) or not isinstance(expires, (int, float)):
                raise ValueError("bad expiry")
            expires = float(expires)
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise StoreCorrupt("the value of key %r in etcd is not a kvtwist value: %s" % (key, e))
    return value, content_type, expires, commit_id


def mod_compare(etcd_key: bytes, mod_revision: int) -> dict:
    """
    A compare that holds while the key's mod_revision is unchanged (etcd
    compares a missing key as mod_revision 0).
    """
    return {
        "key": b64(etcd_key),
        "target": "MOD",
        "result": "EQUAL",
        "mod_revision": str(mod_revision),
    }


class Row:
    """One kvtwist key as etcd holds it, expired or not."""

    __slots__ = ("entry", "commit_id")

    def __init__(self, entry: Entry, commit_id: str) -> None:
        self.entry = entry
        self.commit_id = commit_id


class KeySpace:
    """
    The etcd keys of one store: a kvtwist key C{k} lives at C{prefix +
    "kv/" + k} (UTF-8); what follows the last kvtwist key (C{kv/} then the
    byte 0xff) is reserved for lease anchors.

    @ivar prefix: the store's prefix (a str).
    @ivar data: the etcd key every kvtwist key starts with.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.data = (prefix + "kv/").encode("utf-8")

    def etcd_key(self, key: str) -> bytes:
        """The etcd key of kvtwist key C{key}."""
        return self.data + key.encode("utf-8")

    def range_end(self, start: bytes) -> bytes:
        """
        The end of the range of kvtwist keys starting with C{start}: never
        past the last kvtwist key, where lease anchors follow.
        """
        return min(prefix_end(start), self.data + b"\xff")

    def decode_key(self, raw_key: bytes) -> str:
        """The kvtwist key of an etcd key in this store's range."""
        if not raw_key.startswith(self.data):
            raise EtcdError("etcd returned a key outside the range asked for")
        try:
            return raw_key[len(self.data):].decode("utf-8")
        except UnicodeDecodeError:
            raise StoreCorrupt("a key under %r in etcd is not UTF-8" % (self.prefix,))

    def row(self, kv: dict) -> Row:
        """Decode one etcd kv of this store into a L{Row}."""
        key = self.decode_key(unb64(kv["key"]))
        value, content_type, expires, commit_id = decode_value(
            key, unb64(kv.get("value", ""))
        )
        entry = Entry(
            key=key,
            value=value,
            content_type=content_type,
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
            version=int(kv.get("version", 0)),
            expires=expires,
        )
        return Row(entry, commit_id)

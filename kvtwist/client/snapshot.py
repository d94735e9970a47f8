# -*- test-case-name: tests.unit.test_snapshot -*-
"""
Snapshots (C{GET /v1/snapshot}): every key of a kvcache at one revision,
as JSON Lines, taken online while writes go on (see
L{kvtwist.web.v1.snapshot} for the format).
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO, Dict, Optional

import treq
from twisted.internet.defer import Deferred

from kvtwist.client._wire import _headers, _join, _query
from kvtwist.client.errors import KVClientError, _bad_response, _error

#: What the server sends a snapshot as.
SNAPSHOT_MEDIA = b"application/x-ndjson"


class _Lines:
    """
    Copies a snapshot stream to C{out}, keeping its first and last lines:
    the header and the trailer that proves the stream whole.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._tail = b""
        self.first: Optional[bytes] = None
        self.last: Optional[bytes] = None
        self.lines = 0
        self.bytes = 0

    def feed(self, data: bytes) -> None:
        self._out.write(data)
        self.bytes += len(data)
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if self.first is None:
                self.first = line
            self.last = line
            self.lines += 1


def _incomplete(detail: str) -> KVClientError:
    return KVClientError(
        200, {"status": 200, "code": "snapshot-incomplete", "detail": detail}
    )


async def _save(http: Any, target: str, out: BinaryIO, token: Optional[str]) -> Dict[str, Any]:
    response = await http.request(
        "GET", target, headers=_headers(token, accept=SNAPSHOT_MEDIA), unbuffered=True
    )
    if response.code != 200:
        raise _error(response.code, await treq.content(response))
    lines = _Lines(out)
    await treq.collect(response, lines.feed)
    try:
        header = json.loads(lines.first or b"null")
        trailer = json.loads(lines.last or b"null")
    except ValueError:
        raise _bad_response(200, "the answer is not a kvtwist snapshot")
    if not isinstance(header, dict) or header.get("snapshot") != "kvtwist":
        raise _bad_response(200, "the answer is not a kvtwist snapshot")
    if not (isinstance(trailer, dict) and trailer.get("end") is True):
        raise _incomplete("the snapshot stream was cut short (no end line): do not keep it")
    if trailer.get("keys") != lines.lines - 2 or trailer.get("revision") != header.get("revision"):
        raise _incomplete("the snapshot's end line does not match what arrived")
    return {"revision": header["revision"], "keys": trailer["keys"], "bytes": lines.bytes}


def save_snapshot(
    http: Any, url: str, out: BinaryIO, prefix: str = "", *, token: Optional[str] = None
) -> Deferred:
    """
    Stream a snapshot of every key (under C{prefix}) at one revision into
    C{out} (a binary file), checking that it arrived whole.

    @return: a Deferred firing with C{{"revision", "keys", "bytes"}}.
    @raise TypeError: at once, for a C{prefix} that is not a str.
    @raise KVClientError: (in the Deferred) for an error answer (501
        C{history-unsupported} from a store without history), or
        C{snapshot-incomplete} if the stream ended without its end line
        (then what C{out} holds must not be kept).
    """
    if not isinstance(prefix, str):
        raise TypeError("prefix is a str, not %s" % (type(prefix).__name__,))
    target = _join(url, "v1", "snapshot") + _query(prefix=prefix or None)
    return Deferred.fromCoroutine(_save(http, target, out, token))

# -*- test-case-name: tests.unit.test_encoded -*-
"""
The answer to a read of a cached key, encoded once and written many times:
the GET hot path of C{GET /{key}} and C{GET /v1/kv/{key}}.

A hit on the read cache (L{kvtwist.store.cache.CachedStore.peek_encoded})
gives an L{EncodedEntry}: the header lines of the route's 200 answer for
that entry (content type, ETag, revisions, length), built by L{encode_seed}
or L{encode_v1} (from the same L{Response} the ordinary path answers
with) on the key's first hit and dropped with the entry when a
commit changes the key. L{write_entry} then puts the status line, the
request's own headers (Server, Date, Connection), those lines and the
stored value on the wire in one write, instead of setting each header
through twisted.web and having it encode them again for every request.

Everything here runs on the reactor thread.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Optional, Tuple

from twisted.web.http_headers import Headers
from twisted.web.server import Request

from kvtwist.interfaces import IReadCache
from kvtwist.model import Entry
from kvtwist.web.compression import LargeBodyGzip
from kvtwist.web.resource import Response, etag, readable_key, write_response
from kvtwist.web.v1.base import entry_headers

_STATUS_200 = b" 200 OK\r\n"


def encode_headers(headers: Iterable[Tuple[bytes, bytes]]) -> bytes:
    """
    Header lines, each ending in CRLF, as twisted.web writes them: names in
    its canonical case, values sanitised, in the order given.
    """
    canonical = Headers()
    for name, value in headers:
        canonical.addRawHeader(name, value)
    return b"".join(
        name + b": " + value + b"\r\n"
        for name, values in canonical.getAllRawHeaders()
        for value in values
    )


class EncodedEntry:
    """
    The header lines of one route's 200 answer to a read of C{entry}, each
    ending in CRLF, Content-Length included (v1's KV-Revision, the store's
    revision, is added per answer).
    """

    __slots__ = ("entry", "head")

    def __init__(self, entry: Entry, head: bytes) -> None:
        self.entry = entry
        self.head = head

    def __sizeof__(self) -> int:
        # What the cache charges for it: the header bytes too (the entry
        # is charged on its own).
        return object.__sizeof__(self) + sys.getsizeof(self.head)


def _head(response: Response) -> bytes:
    """
    The header lines of a 200 L{Response} of a value: its Content-Type,
    its headers in order, then Content-Length.
    """
    lines = [] if response.content_type is None else [(b"content-type", response.content_type)]
    lines += response.headers.items()
    lines.append((b"content-length", b"%d" % (len(response.body),)))
    return encode_headers(lines)


def encode_seed(entry: Entry) -> EncodedEntry:
    """C{GET /{key}}'s headers (L{seed_response}'s): Content-Type, ETag, Content-Length."""
    return EncodedEntry(entry, _head(seed_response(entry)))


def encode_v1(entry: Entry) -> EncodedEntry:
    """
    C{GET /v1/kv/{key}}'s headers (L{v1_entry_response}'s): Content-Type,
    ETag, KV-Create-Revision, KV-Version, KV-Expires, Content-Length.
    """
    return EncodedEntry(entry, _head(v1_entry_response(entry)))


def peek_encoded(
    store: Any, raw_key: bytes, request: Request, encode: Callable[[Entry], EncodedEntry]
) -> Optional[EncodedEntry]:
    """
    C{encode}'s L{EncodedEntry} (L{encode_seed} or L{encode_v1}) of
    C{raw_key} if the store's read cache holds it live and the requester
    may read it, without any Deferred; else None (then take the ordinary
    path, which also answers bad keys, absent and expired keys, and
    refusals). The cache keeps one encoded form per key: a key read on
    both routes in turn is encoded again at each switch.
    """
    if not IReadCache.providedBy(store):
        return None
    key = readable_key(raw_key, request)
    return store.peek_encoded(key, encode) if key is not None else None


def seed_response(entry: Entry) -> Response:
    """The L{Response} of C{GET /{key}} for C{entry}."""
    return Response(
        200,
        entry.value,
        entry.content_type.encode("utf-8"),
        {b"etag": etag(entry.mod_revision)},
    )


def write_entry(request: Request, encoded: EncodedEntry, revision: Optional[int] = None) -> None:
    """
    Answer C{request} 200 with C{encoded}'s entry, and finish it; with
    C{revision} (v1: the store's, as KV-Revision) after its headers. HEAD
    gets the same headers and no body.

    This writes what twisted.web's C{Request.write} and C{finish} would for
    the same answer (the status line, the headers already set on the
    request, then these), and keeps the request's bookkeeping as they do
    (C{code}, C{sentLength}, C{startedWriting}), so the access log, metrics
    and keep-alive see an ordinary answer. A request that twisted.web would
    alter on its first write (a content encoder, cookies, Last-Modified or
    an ETag set through its own API: kvtwist sets none) takes the ordinary
    path instead; a value small enough never to be compressed
    (L{kvtwist.web.compression}) does not.
    """
    if request.finished or request._disconnected:
        return
    entry = encoded.entry
    encoder = request._encoder
    if (
        (
            encoder is not None
            and not (isinstance(encoder, LargeBodyGzip) and encoder.skips(len(entry.value)))
        )
        or request.cookies
        or request.lastModified is not None
        or request.etag is not None
    ):
        response = seed_response(entry) if revision is None else v1_response(entry, revision)
        write_response(request, response)
        return
    if request.code != 200:
        # Only ever the class default here; set like setResponseCode would.
        request.setResponseCode(200)
    request.startedWriting = 1
    lines = [request.clientproto, _STATUS_200]
    for name, values in request.responseHeaders.getAllRawHeaders():
        for value in values:
            lines += (name, b": ", value, b"\r\n")
    if revision is None:
        lines += (encoded.head, b"\r\n")
    else:
        lines += (encoded.head, b"Kv-Revision: %d\r\n\r\n" % (revision,))
    if request.method != b"HEAD":
        lines.append(entry.value)
        request.sentLength = len(entry.value)
    request.channel.writeSequence(lines)
    request.finish()


def v1_entry_response(entry: Entry) -> Response:
    """
    The 200 L{Response} of C{GET /v1/kv/{key}} for C{entry}: the one
    builder of that answer, for the cached path (L{encode_v1}) and the
    ordinary one alike. Without KV-Revision, the store's revision at the
    time of the answer: L{v1_response} or the resource adds it.
    """
    return Response(200, entry.value, entry.content_type.encode("utf-8"), entry_headers(entry))


def v1_response(entry: Entry, revision: int) -> Response:
    """The L{Response} of C{GET /v1/kv/{key}} for C{entry} at C{revision}."""
    response = v1_entry_response(entry)
    response.headers[b"kv-revision"] = b"%d" % (revision,)
    return response

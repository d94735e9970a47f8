# -*- test-case-name: tests.unit.test_snapshot -*-
"""
C{GET /v1/snapshot?prefix=P}: every key (under C{P}) at one revision, as
JSON Lines, while writes go on: a consistent online backup.

The revision is the store's when the snapshot starts; every page is read
at it from the store's history (L{kvtwist.interfaces.IHistoricalStore}),
so the snapshot is one picture however long it takes and whatever is
written meanwhile (only a compaction past it, beyond the retention, could
interrupt it). A store without history answers 501 C{history-unsupported}.

The stream (C{application/x-ndjson}, one JSON object a line):

  - a header: C{{"snapshot": "kvtwist", "format": 1, "revision": R,
    "prefix": P}};
  - one line per live key, in key order: its metadata as a listing gives
    it (C{key}, C{create_revision}, C{mod_revision}, C{version},
    C{content_type}, C{size}, C{expires}) and C{value_base64}, the bytes
    exactly as stored;
  - a trailer: C{{"end": true, "keys": N, "revision": R}}. A stream
    without it was cut short (a failure is logged and the connection
    aborted): a client must not keep it.

It is read a page at a time and written only as fast as the client reads
(a push producer), so a snapshot of a large store holds one page in memory.
With auth on, only the keys the token may read are in it.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from kvtwist.auth import Token, principal_of
from kvtwist.errors import KVError
from kvtwist.interfaces import IHistoricalStore
from kvtwist.listing import list_readable
from kvtwist.model import Entry, Page
from kvtwist.web.flow import Drain
from kvtwist.web.v1.base import V1Resource, describe, query_arg
from kvtwist.web.v1.history import historical
from kvtwist.wire import encode_base64

log = Logger()

#: The C{format} of the header line: bumped if the line shapes change.
SNAPSHOT_FORMAT = 1
#: Keys read from the store per page.
SNAPSHOT_PAGE = 1000
SNAPSHOT_CONTENT_TYPE = b"application/x-ndjson"


def json_line(document: Dict[str, Any]) -> bytes:
    """One line of the stream."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def key_line(entry: Entry) -> bytes:
    """The line of one key: its metadata and its exact bytes."""
    document = describe(entry)
    document["value_base64"] = encode_base64(entry.value)
    return json_line(document)


@implementer(IPushProducer)
class _Flow:
    """Whether the client takes more, and when it does again; whether it left."""

    def __init__(self, request: Request) -> None:
        self.closed = False
        self._drain = Drain()
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._gone)

    def drained(self) -> Deferred:
        """A Deferred firing once the connection takes writes (at once if it does)."""
        return self._drain.wait(self.closed)

    def pauseProducing(self) -> None:
        self._drain.pause()

    def resumeProducing(self) -> None:
        self._drain.resume()

    def stopProducing(self) -> None:
        self._gone(None)

    def _gone(self, result: object) -> None:
        self.closed = True
        self._drain.release()


async def stream_snapshot(
    request: Request,
    flow: _Flow,
    store: IHistoricalStore,
    token: Token,
    prefix: str,
    page: Page,
    max_bytes: Optional[int],
) -> None:
    """
    Write C{page}, the first, and every further page of readable keys under
    C{prefix} at its revision, then the trailer.
    """
    revision = page.revision
    count = 0
    while True:
        request.write(b"".join(key_line(entry) for entry in page.entries))
        count += len(page.entries)
        if not (page.more and page.entries):
            break
        await flow.drained()
        if flow.closed:
            return
        page = await list_readable(
            store, token, prefix, page.entries[-1].key, SNAPSHOT_PAGE, max_bytes, revision
        )
        if flow.closed:
            return
    request.write(json_line({"end": True, "keys": count, "revision": revision}))
    request.unregisterProducer()
    request.finish()


class Snapshot(V1Resource):
    """C{GET /v1/snapshot?prefix=P}: a consistent snapshot as JSON Lines."""

    route = "/v1/snapshot"
    parameters = {"GET": ("prefix",)}
    #: Written as it goes, page by page: never gzipped whole.
    compressible = False

    def render_GET(self, request: Request) -> int:
        try:
            prefix = query_arg(request, "prefix") or ""
            store = historical(self.context.store)
        except KVError as error:
            refusal = fail(error)
            return self.respond(request, lambda request: refusal)
        token = principal_of(request)
        max_bytes = self.context.limits.max_list_bytes
        # The first page is read before anything is sent, so a store that
        # cannot serve (closed, compacted) is an ordinary problem answer.
        first = Deferred.fromCoroutine(list_readable(
            store, token, prefix, None, SNAPSHOT_PAGE, max_bytes, store.revision
        ))

        def start(page: Page) -> None:
            request.setResponseCode(200)
            request.setHeader(b"content-type", SNAPSHOT_CONTENT_TYPE)
            request.setHeader(b"cache-control", b"no-store")
            request.setHeader(b"kv-revision", b"%d" % (self.context.store.revision,))
            request.write(json_line({
                "snapshot": "kvtwist", "format": SNAPSHOT_FORMAT,
                "revision": page.revision, "prefix": prefix,
            }))
            flow = _Flow(request)
            d = Deferred.fromCoroutine(
                stream_snapshot(request, flow, store, token, prefix, page, max_bytes)
            )
            d.addErrback(failed)

        def failed(reason) -> None:
            # The headers are gone: all that is left is to cut the stream
            # short, so the client sees no trailer and keeps nothing.
            if reason.check(KVError):
                log.warn("a snapshot stream stopped: {detail}", detail=reason.value.detail)
            else:
                log.failure("a snapshot stream failed; aborting it", reason)
            transport = request.channel.transport if request.channel else None
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]  # every Twisted stream transport (TCP, UNIX, TLS) has it; ITransport does not declare it

        def refused(reason) -> None:
            self.respond(request, lambda request: reason)

        first.addCallbacks(start, refused)
        return NOT_DONE_YET

# -*- test-case-name: tests.contract.test_store_etcd -*-
"""
The body of one etcd watch answer, read line by line: the protocol both the
store's long-running watch (L{kvtwist.store.etcd.watchloop}) and the
history's bounded replay (L{kvtwist.store.etcd.history}) read.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from kvtwist.errors import StoreUnavailable
from kvtwist.store.etcd.errors import describe

__all__ = ["WATCH_LINE_MAX", "WatchStream"]

#: One line of the watch stream (one etcd watch response) may not be bigger:
#: etcd sends at most 1000 revisions per response, each under its request
#: limit, so this only stops a broken peer from exhausting memory.
WATCH_LINE_MAX = 256 * 1024 * 1024


class WatchStream(Protocol):
    """
    The body of one C{/v3/watch} answer: etcd's gateway sends one JSON
    document per line (an error document may end the body without a
    newline). Each goes to C{on_document(stream, line)} as it arrives.

    @ivar created: fires when etcd says the watch was created; fails if the
        stream ends first.
    @ivar done: fires (never fails) with why the stream ended, once its
        connection is gone.
    @ivar reason: why the stream was aborted, if it was.
    @ivar compacted: the compact revision when etcd canceled the watch for
        it, else 0.
    @ivar http_error: the status when the answer was not 200 (its body is
        then the reason).
    @ivar token_refused: whether etcd refused the auth token (or wanted one).
    """

    def __init__(self, on_document: Callable[["WatchStream", bytes], None]) -> None:
        self._on_document = on_document
        self._chunks: List[bytes] = []
        self._size = 0
        self.created: Deferred = Deferred(lambda _: self.abort("cancelled"))
        self.done: Deferred = Deferred()
        self.reason: Optional[str] = None
        self.compacted = 0
        self.http_error = 0
        self.token_refused = False
        self.closing = False

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if self.http_error:
            self._keep(data)
            return
        if b"\n" not in data:
            self._keep(data)
            return
        self._chunks.append(data)
        lines = b"".join(self._chunks).split(b"\n")
        rest = lines.pop()
        self._chunks, self._size = ([rest], len(rest)) if rest else ([], 0)
        for line in lines:
            if self.closing:
                return
            if line.strip():
                self._on_document(self, line)

    def _keep(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > WATCH_LINE_MAX:
            self.abort("a watch response over %d bytes" % (WATCH_LINE_MAX,))

    def abort(self, reason: str) -> None:
        """Stop reading, remember why, and drop the connection."""
        if self.reason is None:
            self.reason = reason
        if self.closing:
            return
        self.closing = True
        stop = getattr(self.transport, "stopProducing", None)
        if stop is not None:
            stop()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        rest = b"".join(self._chunks).strip()
        self._chunks = []
        if rest and not self.closing:
            if self.http_error:
                self.reason = "HTTP %d: %s" % (
                    self.http_error,
                    rest[:200].decode("utf-8", "replace"),
                )
            else:
                self._on_document(self, rest)
        if self.reason is None:
            if reason is None or reason.check(ResponseDone):
                self.reason = "etcd ended the watch stream"
            else:
                self.reason = "the watch connection was lost (%s)" % (
                    describe(reason.value),
                )
        if not self.created.called:
            self.created.errback(Failure(StoreUnavailable(self.reason)))
        self.done.callback(self.reason)

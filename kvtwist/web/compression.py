# -*- test-case-name: tests.unit.test_compression -*-
"""
gzip for answers over 1 KiB, when the client asks for it
(C{Accept-Encoding: gzip}), through twisted.web's own encoder.

twisted.web applies a content encoding when the resource a request reaches
provides C{_IEncodingResource} (what C{EncodingResourceWrapper} does):
L{kvtwist.web.resource.KVResource} provides it, and hands each request a
L{LargeBodyGzip}. Twisted's C{GzipEncoderFactory} picks its encoder when
the request starts, before the answer's size is known, and compresses
everything; L{LargeBodyGzip} waits for the answer's first write to decide:

 - an answer of at most L{MIN_SIZE} bytes (by its C{Content-Length}), a
   204, a 304, or an answer with a body of none, goes as it is;
 - a larger one is compressed with C{GzipEncoderFactory}'s encoder (which
   sets C{Content-Encoding: gzip}) when the client accepts gzip, and says
   C{Vary: Accept-Encoding} either way. An answer written whole in one
   write (every kvtwist answer but streams) is compressed whole, so it
   keeps an exact C{Content-Length} (of the compressed bytes); HEAD gets
   the same headers as GET.

ETags stay as they are (strong, the key's mod_revision) on compressed
answers: they name the stored value's version, which C{If-Match} and
C{If-None-Match} compare on writes and reads alike, and kvtwist serves no
byte ranges, the one thing a strong tag shared by two encodings could mix
up. A weak tag (as some servers send with gzip) would never match an
C{If-Match}, so a browser or any gzip client could not write back what it
read.

Event streams are never compressed (their resource opts out): each event
must reach the client when it is written, and a compressor holds bytes
back until it has a block's worth.
"""

from __future__ import annotations

from typing import Optional

from twisted.web.iweb import _IRequestEncoder
from twisted.web.server import GzipEncoderFactory, Request
from zope.interface import implementer

#: Answers of more bytes than this are compressed (when the client asks).
MIN_SIZE = 1024

_GZIP = GzipEncoderFactory()
#: A fast compression level: answers are compressed on the reactor thread.
_GZIP.compressLevel = 6


@implementer(_IRequestEncoder)
class LargeBodyGzip:
    """
    The content encoder of one request: decides at the answer's first
    write (see the module docstring), then passes the bytes through or
    compresses them with twisted.web's gzip encoder.
    """

    __slots__ = ("_request", "_decided", "_encoder", "_whole")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._decided = False
        self._encoder = None
        self._whole = False

    @staticmethod
    def skips(size: int) -> bool:
        """Whether an answer of C{size} bytes goes uncompressed."""
        return size <= MIN_SIZE

    def _decide(self, first: bytes) -> None:
        self._decided = True
        request = self._request
        if request.code in (204, 304):
            return
        declared = request.responseHeaders.getRawHeaders(b"content-length")
        length: Optional[int] = int(declared[0]) if declared else None
        if length is not None and self.skips(length):
            return
        request.responseHeaders.addRawHeader(b"vary", b"Accept-Encoding")
        self._encoder = _GZIP.encoderForRequest(request)
        self._whole = length is not None and length == len(first)

    def encode(self, data: bytes) -> bytes:
        if not self._decided:
            self._decide(data)
        encoder = self._encoder
        if encoder is None:
            return data
        if self._whole:
            self._encoder = None
            body = encoder.encode(data) + encoder.finish()
            self._request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % (len(body),)])
            return body
        return encoder.encode(data)

    def finish(self) -> bytes:
        encoder, self._encoder = self._encoder, None
        self._decided = True
        return encoder.finish() if encoder is not None else b""

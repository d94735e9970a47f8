"""
The naive Twisted design kvcache avoids (a thread hop per GET halves
throughput: docs/architecture.md, "Design decisions"): every GET hops to
a thread (C{deferToThread}) to read a C{shelve} file, then back to the
reactor to answer.

    python -m benchmarks.servers.naive --port P --data DIR [--no-access-log]

At startup it writes L{KEY} into a fresh shelf in C{DIR}; it serves
C{GET /{key}} only (200 with the JSON value, or 404).
"""

from __future__ import annotations

import json
import os
import dbm.dumb
import shelve
import threading
from typing import List, Optional
from urllib.parse import unquote

from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from benchmarks.servers.common import DOCUMENT, KEY, log_like_twistd, parse_args, quiet_site_class, serve


class ShelfReader:
    """
    A shelf shared by the reactor's thread pool. The lock is there because
    shelve over dbm is not thread-safe; it is held only for the read.
    """

    def __init__(self, path: str) -> None:
        self._shelf = shelve.Shelf(dbm.dumb.open(path, "c"))
        self._lock = threading.Lock()

    def put(self, key: str, value: object) -> None:
        with self._lock:
            self._shelf[key] = value
            self._shelf.sync()

    def read(self, key: str) -> Optional[bytes]:
        """Runs in a pool thread: the JSON text of C{key}, or None."""
        with self._lock:
            try:
                value = self._shelf[key]
            except KeyError:
                return None
        return json.dumps(value).encode("utf-8")


class ThreadPerGet(Resource):
    """C{GET /{key}}, read in a thread."""

    isLeaf = True

    def __init__(self, reader: ShelfReader) -> None:
        super().__init__()
        self._reader = reader

    def render_GET(self, request: Request):
        key = unquote(request.path[1:].decode("utf-8", "replace"))
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(body: Optional[bytes]) -> None:
            if gone:
                return
            if body is None:
                request.setResponseCode(404)
                body = b'{"error": "not found"}'
            request.setHeader(b"content-type", b"application/json")
            request.write(body)
            request.finish()

        deferToThread(self._reader.read, key).addCallback(answer)
        return NOT_DONE_YET


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args("naive thread-per-GET Twisted server over shelve", argv)
    os.makedirs(args.data, exist_ok=True)
    reader = ShelfReader(os.path.join(args.data, "naive-shelf"))
    reader.put(KEY, DOCUMENT)
    log_like_twistd()
    site_class = quiet_site_class() if args.no_access_log else Site
    serve(site_class(ThreadPerGet(reader)), args.port)


if __name__ == "__main__":
    main()

"""
The baseline: a seed-style server, C{http.server.ThreadingHTTPServer} over
C{shelve}, with the seed's API (C{GET /{key}}, C{POST /set}, C{POST
/commit}) and the seed's durability: C{/commit} writes the shelf and calls
C{sync()}, which flushes to the OS but never fsyncs.

    python -m benchmarks.servers.baseline --port P --data DIR

It keeps http.server's defaults on purpose, because that is what the seed
was: HTTP/1.0 (one connection per request), a listen backlog of 5, one new
thread per connection, and an access-log line per request on stderr. The
shelf sits on C{dbm.dumb} explicitly, as the seed's did on Python 3.11
(3.13's default, dbm.sqlite3, refuses use from the handler threads).
"""

from __future__ import annotations

import json
import os
import dbm.dumb
import shelve
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional
from urllib.parse import unquote

from benchmarks.servers.common import parse_args


class SeedState:
    """The shelf and the shared pending queue, behind one lock."""

    def __init__(self, path: str) -> None:
        self.lock = threading.Lock()
        self.shelf = shelve.Shelf(dbm.dumb.open(path, "c"))
        self.pending: Dict[str, object] = {}


class SeedHandler(BaseHTTPRequestHandler):
    """The seed's routes; anything else is a 404."""

    state: SeedState  # set on the subclass made in main()

    def _send(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        key = unquote(self.path[1:])
        with self.state.lock:
            try:
                value = self.state.shelf[key]
            except KeyError:
                value = KeyError
        if value is KeyError:
            self._send(404, b'{"error": "not found"}')
        else:
            self._send(200, json.dumps(value).encode("utf-8"))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/set":
            self._set(body)
        elif self.path == "/commit":
            self._commit()
        else:
            self._send(404, b'{"error": "not found"}')

    def _set(self, body: bytes) -> None:
        try:
            pairs = json.loads(body)
        except ValueError:
            pairs = None
        if not isinstance(pairs, dict):
            self._send(400, b'{"error": "expected a JSON object"}')
            return
        state = self.state
        with state.lock:
            outcome = {k: ("updated" if k in state.shelf else "created") for k in pairs}
            state.pending.update(pairs)
        status = 201 if all(v == "created" for v in outcome.values()) else 200
        self._send(status, json.dumps(outcome).encode("utf-8"))

    def _commit(self) -> None:
        state = self.state
        with state.lock:
            pending, state.pending = state.pending, {}
            for key, value in pending.items():
                state.shelf[key] = value
            # The seed's idea of durable: flushed to the OS, never fsynced.
            state.shelf.sync()
        self._send(204)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args("seed-style http.server + shelve baseline", argv)
    os.makedirs(args.data, exist_ok=True)
    attributes = {"state": SeedState(os.path.join(args.data, "seed-shelf"))}
    if args.no_access_log:
        attributes["log_message"] = lambda self, format, *args: None
    handler = type("Handler", (SeedHandler,), attributes)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.serve_forever()


if __name__ == "__main__":
    main()

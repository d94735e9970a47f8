"""
A config watcher over Server-Sent Events.

    .venv/bin/python examples/config_watcher.py --url http://127.0.0.1:8080 --prefix config/
    .venv/bin/python examples/config_watcher.py --prefix config/ --events 10

Keeps a local copy of every key under a prefix, up to date:

    1. reads a snapshot of the prefix (C{GET /v1/kv/?prefix=...&values=1},
       page by page) and notes the revision of its first page;
    2. opens the change stream from that revision on, C{GET
       /v1/watch?prefix=...&values=1&after=<revision>}: every commit after
       it arrives as Server-Sent Events, one per changed key, each with
       C{id:} (the revision), C{event:} (C{put}, C{delete} or C{expire})
       and C{data:} (JSON: the key, and for a put its value);
    3. applies each event to the copy and prints it.

Starting the stream at the first page's revision means no change is
missed between the snapshot and the stream (a change the later pages
already showed is applied twice, which is harmless). If the server no
longer has the history back to that revision (410), the watcher takes a
new snapshot and starts again. Heartbeat comments (C{: heartbeat}) and the
C{retry:} hint are skipped, as the SSE format says.

Output:

    config/mode = "fast"
    watching config/ from revision 12
    put config/mode = "slow" (revision 13)
    delete config/old (revision 14)

With C{--events N} it stops after N events, closing the stream.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import quote

import treq
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import react

from kvtwist import client

#: Snapshots the watcher takes before it gives up on a server whose history
#: keeps running out (each 410 costs one).
MAX_RESYNCS = 3


@dataclass
class Event:
    """One Server-Sent Event: its C{id}, C{event} type and C{data} text."""

    id: Optional[str]
    event: str
    data: str


class SSEParser:
    """
    The Server-Sent Events wire format, incrementally: feed it bytes as
    they arrive, get back the events they complete.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._data: List[str] = []
        self._event = ""
        self._id: Optional[str] = None

    def feed(self, chunk: bytes) -> List[Event]:
        self._pending += chunk
        events = []
        *lines, self._pending = self._pending.split(b"\n")
        for raw in lines:
            text = raw.rstrip(b"\r").decode("utf-8")
            if not text:
                # A blank line ends an event (if it carried data).
                if self._data:
                    events.append(Event(self._id, self._event or "message", "\n".join(self._data)))
                self._data, self._event = [], ""
                continue
            if text.startswith(":"):
                continue  # a comment: heartbeats
            name, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id":
                self._id = value
            # "retry" and unknown fields are ignored.
        return events


class _StreamReader(Protocol):
    """Feeds a response body to an L{SSEParser}; stops after C{limit} events."""

    def __init__(self, on_event: Callable[[Event], None], limit: Optional[int]) -> None:
        self.parser = SSEParser()
        self.on_event = on_event
        self.limit = limit
        self.count = 0
        self.done: Deferred = Deferred()
        self._stopping = False

    def dataReceived(self, data: bytes) -> None:
        for event in self.parser.feed(data):
            if self._stopping:
                return
            self.count += 1
            self.on_event(event)
            if self.limit is not None and self.count >= self.limit:
                self._stopping = True
                # Closes the connection: the server stops streaming to us.
                self.transport.stopProducing()

    def connectionLost(self, reason: Any) -> None:
        if self._stopping:
            self.done.callback(self.count)
        else:
            self.done.errback(reason)


@dataclass
class ConfigCopy:
    """The local copy: key -> decoded value, and the last revision applied."""

    values: Dict[str, Any] = field(default_factory=dict)
    revision: int = 0

    def apply(self, event: Event) -> str:
        """Apply one event; return its line of output."""
        data = json.loads(event.data)
        key = data["key"]
        self.revision = int(event.id) if event.id else self.revision
        if event.event == "put":
            value = _value(data)
            self.values[key] = value
            return "put %s = %s (revision %d)" % (key, json.dumps(value), self.revision)
        self.values.pop(key, None)
        return "%s %s (revision %d)" % (event.event, key, self.revision)


def _value(item: Dict[str, Any]) -> Any:
    """A value of a listing item or event: JSON inline, else base64 text."""
    if "value" in item:
        return item["value"]
    if "value_base64" in item:
        return base64.b64decode(item["value_base64"]).decode("utf-8", "replace")
    return None  # too large to ride along in an event


async def snapshot(http: Any, url: str, prefix: str, copy: ConfigCopy) -> int:
    """Fill C{copy} from a listing; return the revision of its first page."""
    copy.values.clear()
    first: Optional[int] = None
    async for page in client.iter_pages(http, url, prefix, values=True):
        if first is None:
            first = page["revision"]
        for item in page["items"]:
            copy.values[item["key"]] = _value(item)
    copy.revision = first or 0
    return copy.revision


class HistoryGone(Exception):
    """The server answered 410: it no longer has the events we asked for."""


async def stream(
    http: Any, url: str, prefix: str, after: int, on_event: Callable[[Event], None],
    limit: Optional[int],
) -> int:
    """
    Stream the events of C{prefix} after revision C{after} to C{on_event},
    until C{limit} events (or the server closes the stream: an error).

    @return: the number of events received.
    @raise HistoryGone: for a 410.
    """
    target = "%s/v1/watch?prefix=%s&values=1&after=%d" % (
        url.rstrip("/"), quote(prefix, safe=""), after)
    response = await http.get(
        target, headers={b"Accept": [b"text/event-stream"]}, unbuffered=True
    )
    if response.code == 410:
        await treq.content(response)
        raise HistoryGone()
    if response.code != 200:
        body = await treq.content(response)
        raise RuntimeError("GET %s: %d %s" % (target, response.code, body[:200]))
    reader = _StreamReader(on_event, limit)
    response.deliverBody(reader)
    return await reader.done


async def watch_config(
    http: Any, url: str, prefix: str, out: Any, events: Optional[int] = None
) -> ConfigCopy:
    """
    Keep a copy of C{prefix} up to date and print what changes, until
    C{events} events (for ever if L{None}).
    """
    copy = ConfigCopy()

    def show(event: Event) -> None:
        out.write(copy.apply(event) + "\n")
        out.flush()

    for _ in range(MAX_RESYNCS):
        after = await snapshot(http, url, prefix, copy)
        for key in sorted(copy.values):
            out.write("%s = %s\n" % (key, json.dumps(copy.values[key])))
        out.write("watching %s from revision %d\n" % (prefix or "every key", after))
        out.flush()
        try:
            await stream(http, url, prefix, after, show, events)
            return copy
        except HistoryGone:
            out.write("the server's history no longer reaches revision %d: resyncing\n"
                      % (after,))
    raise RuntimeError("gave up after %d resyncs" % (MAX_RESYNCS,))


def main(reactor: Any, *argv: str, http: Any = None, out: Any = None) -> Deferred:
    parser = argparse.ArgumentParser(description="Watch a prefix of kvcache keys.")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="kvcache base URL")
    parser.add_argument("--prefix", default="config/", help="the keys to watch")
    parser.add_argument("--events", type=int, default=None, help="stop after N events")
    args = parser.parse_args(argv)
    d = Deferred.fromCoroutine(
        watch_config(http or treq, args.url, args.prefix, out or sys.stdout, args.events)
    )
    return d.addCallback(lambda copy: None)


if __name__ == "__main__":
    react(main, sys.argv[1:])

"""
Watching keys: long-polls on C{GET /v1/kv/{key}?index=N&wait=S} and the
Server-Sent Events stream C{GET /v1/watch?prefix=P}.

Both subscribe to the L{kvtwist.events.ChangeHub}, count against
C{Limits.max_watchers}, and release everything the moment the client goes
away (C{notifyFinish}).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IPushProducer
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from kvtwist.auth import principal_of
from kvtwist.errors import InvalidInput, KVError, LimitExceeded
from kvtwist.strictjson import parse_revision
from kvtwist.events import Event
from kvtwist.web.v1.base import V1Context, V1Resource, flag_arg, query_arg, value_fields

#: Values larger than this are left out of events even with values=1.
MAX_EVENT_VALUE = 64 * 1024


class WatcherCount:
    """Admission for long-polls and streams: at most C{limit} at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def admit(self) -> Callable[[], None]:
        """
        Take a slot and return the function that gives it back (once).

        @raise LimitExceeded: (429) when every slot is taken.
        """
        if self.active >= self.limit:
            raise LimitExceeded("max_watchers", self.limit, self.active + 1, too_many=True)
        self.active += 1
        released = []

        def release() -> None:
            if not released:
                released.append(True)
                self.active -= 1

        return release


def wait_seconds(request: Request, context: V1Context) -> float:
    """
    The long-poll's wait: C{?wait=} capped at C{max_wait}, default
    C{default_wait}, plus up to 1/16 of it as jitter so that many pollers
    woken together do not all come back at the same instant.

    @raise InvalidInput: for a wait that is not a non-negative number.
    """
    limits = context.limits
    raw = query_arg(request, "wait")
    if raw is None:
        wait = limits.default_wait
    else:
        try:
            wait = float(raw)
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= 1e9:
            raise InvalidInput("bad-parameter", "wait must be a number of seconds", parameter="wait")
    wait = min(wait, limits.max_wait)
    return wait + context.random() * wait / 16


async def wait_for_change(
    request: Request, context: V1Context, key: str, wait: float
) -> None:
    """
    Hold until a commit touches C{key}, C{wait} seconds pass, or the client
    leaves; every subscription and timer is released in each case.
    """
    release = context.watchers.admit()
    woken: Deferred = Deferred()

    def wake(*_: Any) -> None:
        if not woken.called:
            woken.callback(None)

    subscription = context.hub.subscribe(lambda k: k == key, wake)
    timer = context.clock.callLater(wait, wake)
    request.notifyFinish().addBoth(wake)
    try:
        await woken
    finally:
        subscription.cancel()
        if timer.active():
            timer.cancel()
        release()


def event_data(event: Event, with_values: bool) -> Dict[str, Any]:
    """The JSON C{data} of one event."""
    data: Dict[str, Any] = {"key": event.key, "revision": event.revision}
    entry = event.entry
    if entry is not None:
        data.update(
            version=entry.version,
            content_type=entry.content_type,
            size=len(entry.value),
        )
        if with_values and len(entry.value) <= MAX_EVENT_VALUE:
            data.update(value_fields(entry.value, entry.content_type))
    return data


def encode_event(event: Event, with_values: bool) -> bytes:
    """The Server-Sent Events frame of one event."""
    data = json.dumps(event_data(event, with_values), ensure_ascii=False)
    return (
        "id: %d\nevent: %s\ndata: %s\n\n" % (event.revision, event.kind, data)
    ).encode("utf-8")


@implementer(IPushProducer)
class EventStream:
    """
    One open event stream, holding at most C{Limits.watch_buffer} bytes
    that its reader has not taken.

    Writes go straight to the connection unless it pushed back
    (C{pauseProducing}); then they queue. What was written just before the
    push-back still waits in the transport, so it counts too until the
    transport has flushed (C{resumeProducing}). A write that would take
    the count past the buffer cuts the reader off instead: the connection
    is aborted, its queued bytes dropped. That holds for one commit's
    events and for the C{?after=} backlog alike, so a commit whose events
    alone pass the buffer disconnects every stream it reaches.
    """

    def __init__(self, request: Request, context: V1Context, matches, with_values: bool):
        self._request = request
        self._context = context
        self._with_values = with_values
        self._paused = False
        self._queued: List[bytes] = []
        self._queued_bytes = 0
        self._closed = False
        self._release = context.watchers.admit()
        self._subscription = context.hub.subscribe(matches, self._on_events)
        self._heartbeat = context.clock.callLater(context.limits.heartbeat, self._beat)
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._finished)

    def send(self, events: List[Event]) -> None:
        """
        Send C{events} (those of one commit go out in one write), or cut
        the reader off as soon as their frames pass what the buffer has
        left: a long backlog is never encoded whole.
        """
        room = self._context.limits.watch_buffer - self._queued_bytes
        frames = []
        for event in events:
            frame = encode_event(event, self._with_values)
            room -= len(frame)
            if room < 0:
                self._cut_off()
                return
            frames.append(frame)
        if frames:
            self._write(b"".join(frames))

    def _on_events(self, revision: int, events: Tuple[Event, ...]) -> None:
        self.send(list(events))

    def _beat(self) -> None:
        self._write(b": heartbeat\n\n")
        if not self._closed:
            self._heartbeat = self._context.clock.callLater(
                self._context.limits.heartbeat, self._beat
            )

    def _write(self, data: bytes) -> None:
        if self._closed:
            return
        if self._queued_bytes + len(data) > self._context.limits.watch_buffer:
            self._cut_off()
            return
        if self._paused:
            self._queued.append(data)
            self._queued_bytes += len(data)
            return
        self._request.write(data)
        # Pushed back during this write: the bytes wait in the transport.
        self._queued_bytes = len(data) if self._paused else 0

    def _cut_off(self) -> None:
        """Disconnect a reader too slow for its buffer, dropping what it has not taken."""
        self._close()
        transport = self._request.channel.transport if self._request.channel else None
        if transport is not None:
            transport.abortConnection()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        # The transport has flushed everything written before.
        self._paused = False
        queued, self._queued, self._queued_bytes = self._queued, [], 0
        for data in queued:
            self._write(data)

    def stopProducing(self) -> None:
        self._close()

    def _finished(self, result: object) -> None:
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._subscription.cancel()
        if self._heartbeat.active():
            self._heartbeat.cancel()
        self._queued = []
        self._release()


def resume_point(request: Request) -> Optional[int]:
    """
    Where a stream resumes: C{Last-Event-ID} (what browsers send on
    reconnect) or C{?after=}; None to start from now.

    @raise InvalidInput: if it is not a revision.
    """
    raw = request.getHeader(b"last-event-id")
    text = raw.decode("latin-1") if raw is not None else query_arg(request, "after")
    if text is None:
        return None
    revision = parse_revision(text.strip())
    if revision is None:
        raise InvalidInput("bad-parameter", "the resume point must be a revision")
    return revision


class Watch(V1Resource):
    """C{GET /v1/watch?prefix=P&values=1}: a Server-Sent Events stream."""

    route = "/v1/watch"
    # Events must reach the client as they are written: a compressor would
    # hold them back.
    compressible = False
    parameters = {"GET": ("prefix", "values", "after")}

    def render_GET(self, request: Request) -> int:
        try:
            prefix = query_arg(request, "prefix") or ""
            with_values = flag_arg(request, "values")
            resume = resume_point(request)
            token = principal_of(request)

            def matches(key: str) -> bool:
                # Streams carry only keys the token may read.
                return key.startswith(prefix) and token.may_read(key)

            backlog = self.context.hub.since(resume, matches) if resume is not None else []
            if self.context.watchers.active >= self.context.watchers.limit:
                self.context.watchers.admit()  # raises the 429
        except KVError as error:
            refusal = fail(error)
            return self.respond(request, lambda request: refusal)
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"kv-revision", b"%d" % (self.context.store.revision,))
        # Send the headers and a reconnect hint at once, so clients know the
        # stream is open before the first event.
        request.write(b"retry: 1000\n\n")
        stream = EventStream(request, self.context, matches, with_values)
        stream.send(backlog)
        return NOT_DONE_YET

# -*- test-case-name: tests.unit.test_watch -*-
"""
Watching keys: long-polls on C{GET /v1/kv/{key}?index=N&wait=S} and the
Server-Sent Events stream C{GET /v1/watch?prefix=P}.

Both subscribe to the L{kvtwist.events.ChangeHub}, count against
C{Limits.max_watchers}, and release everything the moment the client goes
away (C{notifyFinish}).

Resuming a stream (C{Last-Event-ID}, C{?after=}): on a store that keeps
history (L{kvtwist.interfaces.IHistoricalStore}) the events missed are
replayed from the store's history, so a resume works across restarts and
is refused (410) only for a compacted revision; the stream subscribes to
the live feed first, holds what arrives while it replays, and sends it
after, so nothing is missed or sent twice. On other stores the change
feed's bounded in-memory history is the source.

The wire: C{id:} is the revision; the events of one commit go out
together, every one but the last carrying C{"more_in_commit": true}, so a
client knows when a commit has arrived whole and may resume from it.
Heartbeats are C{progress} events whose C{id:} is the revision the stream
has delivered everything up to (on a quiet prefix, the store's), a fresh
resume point.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from kvtwist.auth import principal_of
from kvtwist.errors import HistoryGone, InvalidInput, KVError
from kvtwist.interfaces import IHistoricalStore
from kvtwist.strictjson import parse_revision
from kvtwist.events import Event, commit_events
from kvtwist.web.flow import Drain
from kvtwist.web.v1.base import V1Context, V1Resource, describe, flag_arg, query_arg, value_fields

log = Logger()

#: Values larger than this are left out of events even with values=1.
MAX_EVENT_VALUE = 64 * 1024
#: History records read per trip to the store while a stream replays.
REPLAY_BATCH = 1000


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


def event_data(event: Event, with_values: bool, with_previous: bool = False) -> Dict[str, Any]:
    """
    The JSON C{data} of one event; with C{with_previous}, C{prev}: the key's
    metadata and value before the change (L{None} if it did not exist).
    """
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
    if with_previous:
        previous = event.previous
        data["prev"] = (
            describe(previous, len(previous.value) <= MAX_EVENT_VALUE)
            if previous is not None
            else None
        )
    return data


def encode_event(
    event: Event, with_values: bool, with_previous: bool = False, more_in_commit: bool = False
) -> bytes:
    """
    The Server-Sent Events frame of one event; C{more_in_commit} when
    another event of its commit follows it.
    """
    document = event_data(event, with_values, with_previous)
    if more_in_commit:
        document["more_in_commit"] = True
    data = json.dumps(document, ensure_ascii=False)
    return (
        "id: %d\nevent: %s\ndata: %s\n\n" % (event.revision, event.kind, data)
    ).encode("utf-8")


def progress_frame(revision: int) -> bytes:
    """A C{progress} event: everything up to C{revision} has been delivered."""
    return b'id: %d\nevent: progress\ndata: {"revision": %d}\n\n' % (revision, revision)


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

    With C{replaying}, live events are held (counted against the same
    buffer) until L{go_live}: the caller first sends the history with
    L{send_replayed}, as fast as the reader takes it (L{drained}).

    @ivar position: the revision the client has been sent everything up to.
    """

    def __init__(
        self,
        request: Request,
        context: V1Context,
        matches,
        with_values: bool,
        with_previous: bool = False,
        replaying: bool = False,
        position: Optional[int] = None,
    ):
        self._request = request
        self._context = context
        self._matches = matches
        self._with_values = with_values
        self._with_previous = with_previous
        self._drain = Drain()
        self._queued: List[bytes] = []
        self._queued_bytes = 0
        self._replaying = replaying
        self._held: List[Tuple[int, bytes]] = []
        self._held_bytes = 0
        self.closed = False
        self.position = position if position is not None else context.hub.position
        self._release = context.watchers.admit()
        self._subscription = context.hub.subscribe(matches, self._on_events)
        self._heartbeat = context.clock.callLater(context.limits.heartbeat, self._beat)
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._finished)

    def _encode(self, events: List[Event], room: int) -> Optional[bytes]:
        """
        The frames of C{events} (whole commits), or L{None} as soon as they
        pass C{room} bytes: a long backlog is never encoded whole.
        """
        frames = []
        for index, event in enumerate(events):
            following = events[index + 1] if index + 1 < len(events) else None
            frame = encode_event(
                event, self._with_values, self._with_previous,
                following is not None and following.revision == event.revision,
            )
            room -= len(frame)
            if room < 0:
                return None
            frames.append(frame)
        return b"".join(frames)

    def send(self, events: List[Event]) -> None:
        """
        Send C{events} (those of one commit go out in one write), or cut
        the reader off as soon as their frames pass what the buffer has
        left.
        """
        if not events:
            return
        data = self._encode(events, self._context.limits.watch_buffer - self._queued_bytes)
        if data is None:
            self.cut_off()
            return
        self._write(data)
        self.position = max(self.position, events[-1].revision)

    def send_replayed(self, revision: int, events: Tuple[Event, ...]) -> None:
        """Send one commit read from the history (the events this stream matches)."""
        self.send([event for event in events if self._matches(event.key)])
        self.position = max(self.position, revision)

    def go_live(self, upto: int) -> None:
        """The history is sent up to C{upto}: send what was held, then live events."""
        self._replaying = False
        self.position = max(self.position, upto)
        held, self._held, self._held_bytes = self._held, [], 0
        for revision, data in held:
            if revision > upto:
                self._write(data)
                self.position = max(self.position, revision)

    def drained(self) -> Deferred:
        """A Deferred firing once the connection takes writes (at once if it does)."""
        return self._drain.wait(self.closed)

    def _on_events(self, revision: int, events: Tuple[Event, ...]) -> None:
        if not self._replaying:
            self.send(list(events))
            return
        room = self._context.limits.watch_buffer - self._queued_bytes - self._held_bytes
        data = self._encode(list(events), room)
        if data is None:
            self.cut_off()
            return
        self._held.append((revision, data))
        self._held_bytes += len(data)

    def _beat(self) -> None:
        if not self._replaying:
            # Every commit the feed has delivered reached this stream, or
            # did not match it: the client has seen everything up to there.
            self.position = max(self.position, self._context.hub.position)
        self._write(progress_frame(self.position))
        if not self.closed:
            self._heartbeat = self._context.clock.callLater(
                self._context.limits.heartbeat, self._beat
            )

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._queued_bytes + len(data) > self._context.limits.watch_buffer:
            self.cut_off()
            return
        if self._drain.paused:
            self._queued.append(data)
            self._queued_bytes += len(data)
            return
        self._request.write(data)
        # Pushed back during this write: the bytes wait in the transport.
        self._queued_bytes = len(data) if self._drain.paused else 0

    def cut_off(self) -> None:
        """
        Disconnect the reader (too slow for its buffer, or a replay that
        failed), dropping what it has not taken: it resumes where it was.
        """
        self._close()
        # TCP and TLS transports both abort (ITCPTransport); the channel's
        # declared ITransport does not say so.
        transport: Any = self._request.channel.transport if self._request.channel else None
        if transport is not None:
            transport.abortConnection()

    def pauseProducing(self) -> None:
        self._drain.pause()

    def resumeProducing(self) -> None:
        # The transport has flushed everything written before.
        self._drain.paused = False
        queued, self._queued, self._queued_bytes = self._queued, [], 0
        for data in queued:
            self._write(data)
        self._drain.release()

    def stopProducing(self) -> None:
        self._close()

    def _finished(self, result: object) -> None:
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._subscription.cancel()
        if self._heartbeat.active():
            self._heartbeat.cancel()
        self._queued = []
        self._held = []
        self._release()
        self._drain.release()


async def replay(stream: EventStream, store: IHistoricalStore, after: int, upto: int) -> None:
    """
    Send C{stream} the commits after C{after} up to C{upto} from the
    store's history, a bounded read at a time and only as fast as the
    client takes them, then switch it to the live events.
    """
    position = after
    while position < upto and not stream.closed:
        commits = await store.changes(position, upto, REPLAY_BATCH)
        if not commits:
            break
        for commit in commits:
            await stream.drained()
            if stream.closed:
                return
            stream.send_replayed(commit.revision, commit_events(commit))
        position = commits[-1].revision
    if not stream.closed:
        stream.go_live(upto)


def _replay_failed(reason, stream: EventStream) -> None:
    log.failure("replaying a watch from the history failed; dropping it", reason)
    stream.cut_off()


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
    """C{GET /v1/watch?prefix=P&values=1&prev=1}: a Server-Sent Events stream."""

    route = "/v1/watch"
    # Events must reach the client as they are written: a compressor would
    # hold them back.
    compressible = False
    parameters = {"GET": ("prefix", "values", "after", "prev")}

    def render_GET(self, request: Request) -> int:
        store = self.context.store
        history = IHistoricalStore(store) if IHistoricalStore.providedBy(store) else None
        try:
            prefix = query_arg(request, "prefix") or ""
            with_values = flag_arg(request, "values")
            with_previous = flag_arg(request, "prev")
            resume = resume_point(request)
            token = principal_of(request)

            def matches(key: str) -> bool:
                # Streams carry only keys the token may read.
                return key.startswith(prefix) and token.may_read(key)

            backlog: List[Event] = []
            if resume is not None and history is not None:
                if resume < history.compact_revision:
                    raise HistoryGone(resume, history.compact_revision)
            elif resume is not None:
                backlog = self.context.hub.since(resume, matches)
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
        upto = self.context.hub.position
        replay_from = resume if history is not None and resume is not None and resume < upto else None
        stream = EventStream(
            request, self.context, matches, with_values, with_previous,
            replaying=replay_from is not None, position=resume,
        )
        if history is not None and replay_from is not None:
            Deferred.fromCoroutine(replay(stream, history, replay_from, upto)).addErrback(
                _replay_failed, stream
            )
        else:
            stream.send(backlog)
        return NOT_DONE_YET

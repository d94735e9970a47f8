# -*- test-case-name: tests.unit.test_client_watch -*-
"""
Watching (docs/api.md, "Watching"): L{watch} follows the Server-Sent Events
feed as a L{Watch} that resumes by itself after a disconnect; L{wait_for} is
one long-poll on a key.
"""

from __future__ import annotations

import math
import random as _random
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Set, cast

import treq
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from kvtwist.client._wire import (
    _ACCEPT_ANY,
    _Answer,
    _headers,
    _join,
    _key_url,
    KeyValue,
    _query,
    _request,
)
from kvtwist.client.errors import (
    _bad_response,
    _error,
    KVClientError,
    NotFoundError,
    _problem_from_body,
)
from kvtwist.client.kv import _entry_from
from kvtwist.client.sse import EventStreamParser, SSEComment
from kvtwist.client.watch_events import (
    PROGRESS,
    HistoryGone,
    WatchEvent,
    progress_revision,
    watch_event,
)


#: Answers to a stream request that are worth asking again later.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

#: Failures of a stream that a reconnection may cure.
_RETRY_ERRORS = (
    error.ConnectError,
    error.DNSLookupError,
    error.ConnectionLost,
    error.ConnectionDone,
    error.TimeoutError,
    TimeoutError,
    ResponseFailed,  # includes ResponseNeverReceived
    RequestTransmissionFailed,
)


class _StreamProtocol(Protocol):
    """
    Receives one event stream's body for a L{Watch}. (treq's C{collect}
    does the same job but keeps the transport to itself, and a watch needs
    it: to close the stream, and to pause it while the consumer catches
    up.)
    """

    def __init__(self, watch: "Watch", finished: Deferred) -> None:
        self._watch = watch
        self._finished = finished
        self._failure: Optional[Failure] = None

    def connectionMade(self) -> None:
        self._watch._attach(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None:
            return
        try:
            self._watch._received(data)
        except Exception:
            # Nothing more of this stream can be trusted.
            self._failure = Failure()
            if self.transport is not None:
                self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._watch._detach()
        if self._failure is not None:
            self._finished.errback(self._failure)
        elif self._watch._timed_out:
            self._finished.errback(error.TimeoutError("no data on the event stream"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(None)
        else:
            self._finished.errback(reason)


class _Discard(Protocol):
    """Closes a response body unread; C{closed} fires once it is gone."""

    def __init__(self, closed: Deferred) -> None:
        self._closed = closed

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed.callback(None)


class Watch:
    """
    The changes to keys under a prefix, from C{GET /v1/watch} (Server-Sent
    Events), as an async iterator of L{WatchEvent}; L{watch} opens one.

        async with client.watch(treq, url, "jobs/") as events:
            async for event in events:
                print(event.revision, event.kind, event.key)

    (C{async for} over Deferreds: run it in a coroutine wrapped with
    C{Deferred.fromCoroutine}, or under C{task.react}.)

    The stream opens when L{watch} is called, and events are queued from
    then on, so changes made after L{when_open} fires are never missed
    even before iterating starts. It yields each change once, in revision
    order, and the events of one commit one after another.

    B{Resuming.} When the connection drops (or sends nothing, heartbeats
    included, for C{idle_timeout} seconds), it reconnects with
    C{Last-Event-ID}, and the server replays what was missed from its
    history (kept on disk, so also across a server restart): no event is
    lost and none is yielded twice. The resume point is the last revision
    seen whole: the server marks every event but the last of a commit
    (C{more_in_commit}), and its heartbeats are C{progress} events whose
    id is the revision it has sent everything up to, so a watch on a quiet
    prefix resumes from the present, not from its last change. Only if a
    connection breaks inside a commit does the watch resume from the
    revision before it, dropping the replayed events it already yielded.
    With neither C{after} nor an event yet, it resumes from the
    C{KV-Revision} the first stream opened at.

    B{Backoff.} The first reconnection after a stream that delivered
    something is immediate; each further attempt without progress waits
    twice as long as the one before (from C{retry_delay}, else the
    server's C{retry:} hint, else 1 s; at most C{max_delay}), scaled by a
    random factor in [0.5, 1] so clients cut off together do not come back
    together. Attempts that do not even open a stream (refused
    connections, 429 and 5xx answers) count towards C{max_retries}; past
    it the last error is raised from the iteration.

    B{Errors} (raised from the iteration, after every event received
    before them): L{HistoryGone} (410) when the resume point has left the
    server's history; L{KVClientError} for other refusals (401, 403, 400)
    and for a stream that is not a kvcache event stream (C{bad-response});
    the connection error that exhausted C{max_retries}; or, with
    C{reconnect=False}, the first failure (a clean end of the stream just
    ends the iteration then).

    B{Flow control.} When more than C{max_buffer} events wait to be
    consumed, the connection is paused until half of them are; a server
    whose buffer for the watch then overflows cuts it off, and the watch
    resumes where it was.

    One consumer at a time. L{close} (or leaving the C{async with})
    releases the connection; always do it, or the connection stays open.

    @ivar last_revision: the revision events are known up to: the last
        event's or progress event's, else C{after}, else the revision the
        stream opened at.
    @ivar reconnects: how many times it reconnected.
    @ivar retry: the server's reconnection hint in seconds, if it sent one.
    """

    def __init__(
        self,
        http: Any,
        target: str,
        headers: Headers,
        after: Optional[int],
        reconnect: bool,
        clock: IReactorTime,
        retry_delay: Optional[float],
        max_delay: float,
        max_retries: Optional[int],
        idle_timeout: Optional[float],
        max_buffer: int,
        random: Callable[[], float],
        on_retry: Optional[Callable[[Optional[Failure], float], None]],
    ) -> None:
        self._http = http
        self._target = target
        self._headers = headers
        self._reconnect = reconnect
        self._clock = clock
        self._retry_delay = retry_delay
        self._max_delay = max_delay
        self._max_retries = max_retries
        self._idle_timeout = idle_timeout
        self._max_buffer = max_buffer
        self._random = random
        self._on_retry = on_retry
        self.last_revision: Optional[int] = after
        self.reconnects = 0
        self.retry: Optional[float] = None
        # The keys of last_revision already yielded, and whether that commit
        # is known to have arrived whole (see the class docstring).
        self._keys_at_last: Set[str] = set()
        self._complete = True
        self._events: Deque[WatchEvent] = deque()
        self._wakeup: Optional[Deferred] = None
        self._open_waiters: List[Deferred] = []
        self._close_waiters: List[Deferred] = []
        self._open = False
        self._closed = False
        self._done = False
        self._failure: Optional[Failure] = None
        self._request: Optional[Deferred] = None
        self._sleep: Optional[Deferred] = None
        self._transport: Any = None
        self._paused = False
        self._idle: Optional[IDelayedCall] = None
        self._timed_out = False
        self._progress = False
        self._stream_opened = False
        self._opened_at: Optional[int] = after
        self._parser = EventStreamParser()
        Deferred.fromCoroutine(self._run()).addBoth(self._ended)

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._done:
            state = "done"
        else:
            state = "open" if self._open else "connecting"
        return "<Watch %s %s after %s>" % (self._target, state, self.last_revision)

    # -- the consumer's side ---------------------------------------------------

    def __aiter__(self) -> "Watch":
        return self

    async def __anext__(self) -> WatchEvent:
        if self._wakeup is not None:
            raise RuntimeError("a Watch has one consumer at a time")
        while True:
            if self._events:
                event = self._events.popleft()
                if self._paused and len(self._events) <= self._max_buffer // 2:
                    self._unpause()
                return event
            if self._failure is not None:
                failure, self._failure = self._failure, None
                failure.raiseException()
            if self._done or self._closed:
                raise StopAsyncIteration
            self._wakeup = Deferred()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    async def __aenter__(self) -> "Watch":
        return self

    async def __aexit__(self, *exc_info: Any) -> bool:
        await self.close()
        return False

    def when_open(self) -> Deferred:
        """
        A Deferred firing once a stream is open (at once if one is), with
        the store's revision when it opened (C{KV-Revision}): every change
        after it will be yielded. It fails with the watch's error if the
        watch ends first (C{CancelledError} if it was closed).
        """
        if self._open:
            return succeed(self._opened_at)
        d: Deferred = Deferred()
        if self._done:
            d.errback(self._end_failure())
        else:
            self._open_waiters.append(d)
        return d

    def close(self) -> Deferred:
        """
        Stop watching: drop the connection (or the reconnection under way)
        and end the iteration; events not yet consumed are discarded.

        @return: a Deferred firing with L{None} once the connection is
            closed.
        """
        if not self._closed and not self._done:
            self._closed = True
            self._events.clear()
            self._cancel_idle()
            if self._sleep is not None:
                self._sleep.cancel()
            if self._request is not None:
                self._request.cancel()
            if self._transport is not None:
                self._transport.loseConnection()
        self._closed = True
        self._wake()
        d: Deferred = Deferred()
        if self._done:
            d.callback(None)
        else:
            self._close_waiters.append(d)
        return d

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.called:
            self._wakeup.callback(None)

    def _end_failure(self) -> Failure:
        if self._failure is not None:
            return self._failure
        if self._closed:
            return Failure(CancelledError("the watch was closed"))
        return Failure(error.ConnectionDone("the event stream ended"))

    def _ended(self, result: Any) -> None:
        """The connection loop is over: for good, failed, or closed."""
        self._done = True
        self._open = False
        self._cancel_idle()
        if isinstance(result, Failure) and not self._closed:
            self._failure = result
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.errback(self._end_failure())
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)
        self._wake()

    # -- the connection loop ---------------------------------------------------

    def _resume_point(self) -> Optional[int]:
        if self.last_revision is None:
            return None
        if self._complete:
            return self.last_revision
        # The last commit may have arrived in part: ask for it again, and
        # _accept drops the keys already yielded.
        return max(0, self.last_revision - 1)

    def _delay(self, failures: int) -> float:
        if failures == 0:
            return 0.0
        base = self._retry_delay
        if base is None:
            base = self.retry if self.retry is not None else 1.0
        delay = min(self._max_delay, base * 2 ** min(failures - 1, 32))
        return delay * (0.5 + 0.5 * self._random())

    async def _run(self) -> None:
        failures = 0  # attempts since the last progress: the backoff
        refusals = 0  # attempts that opened no stream: for max_retries
        while True:
            self._progress = False
            self._stream_opened = False
            error_: Optional[Failure] = None
            try:
                try:
                    await self._stream_once()
                finally:
                    self._cancel_idle()
            except CancelledError:
                if self._closed:
                    return
                if not self._timed_out:
                    raise
                error_ = Failure(error.TimeoutError("no answer from the event stream"))
            except Exception as e:
                if self._closed:
                    return
                if not self._retryable(e):
                    raise
                error_ = Failure()
            if self._closed:
                return
            if not self._reconnect:
                if error_ is not None:
                    error_.raiseException()
                return
            failures = 0 if self._progress else failures + 1
            refusals = 0 if self._stream_opened else refusals + 1
            if self._max_retries is not None and refusals > self._max_retries:
                assert error_ is not None
                error_.raiseException()
            delay = self._delay(failures)
            if self._on_retry is not None:
                self._on_retry(error_, delay)
            if delay > 0:
                self._sleep = deferLater(self._clock, delay, lambda: None)
                try:
                    await self._sleep
                except CancelledError:
                    return
                finally:
                    self._sleep = None
            if self._closed:
                return
            self.reconnects += 1

    @staticmethod
    def _retryable(e: Exception) -> bool:
        if isinstance(e, HistoryGone):
            return False
        if isinstance(e, KVClientError):
            return e.status in _RETRY_STATUSES
        return isinstance(e, _RETRY_ERRORS)

    async def _stream_once(self) -> None:
        """
        One connection: open the stream and read it until it ends (cleanly:
        the server finished it). Sets C{_stream_opened} once the server
        accepted it.

        @raise: L{HistoryGone}, L{KVClientError} for a refusal, or the
            connection's failure.
        """
        headers = self._headers.copy()
        resume = self._resume_point()
        if resume is not None:
            headers.setRawHeaders(b"Last-Event-ID", [b"%d" % (resume,)])
        self._timed_out = False
        self._arm_idle()
        try:
            self._request = self._http.request(
                "GET", self._target, headers=headers, unbuffered=True
            )
            response = await self._request
        finally:
            self._request = None
        media = (response.headers.getRawHeaders(b"content-type") or [b""])[-1]
        media = media.split(b";", 1)[0].strip().lower()
        if response.code == 200 and media != b"text/event-stream":
            # Not ours (a proxy's page, say): close it unread.
            closed: Deferred = Deferred()
            response.deliverBody(_Discard(closed))
            await closed
            raise _bad_response(200, "the server did not answer with an event stream")
        if response.code != 200:
            # Read the problem under the idle timer too (and cancellable).
            self._request = treq.content(response)
            try:
                body = await self._request
            finally:
                self._request = None
                self._cancel_idle()
            if response.code == 410:
                raise HistoryGone(410, _problem_from_body(410, body))
            raise _error(response.code, body)
        revisions = response.headers.getRawHeaders(b"kv-revision") or [b""]
        opened_at: Optional[int] = int(revisions[-1]) if revisions[-1].strip().isdigit() else None
        if self.last_revision is None and opened_at is not None:
            self.last_revision = opened_at
            self._complete = True
        self._opened_at = opened_at if opened_at is not None else self.last_revision
        self._parser = EventStreamParser()
        finished: Deferred = Deferred()
        response.deliverBody(_StreamProtocol(self, finished))
        self._stream_opened = True
        self._open = True
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.callback(self._opened_at)
        try:
            await finished
        finally:
            self._open = False
            self._cancel_idle()

    # -- the stream's side -----------------------------------------------------

    def _attach(self, transport: Any) -> None:
        self._transport = transport
        self._paused = False
        if self._closed:
            transport.loseConnection()

    def _detach(self) -> None:
        self._transport = None
        self._paused = False

    def _received(self, data: bytes) -> None:
        """Bytes of the stream: parse them and queue the new events."""
        self._arm_idle()
        try:
            messages = self._parser.feed(data)
        except ValueError as e:
            raise _bad_response(200, str(e))
        if self._parser.retry is not None:
            self.retry = self._parser.retry / 1000.0
        queued = False
        for message in messages:
            if isinstance(message, SSEComment):
                # A heartbeat is a write of its own: everything before it,
                # the last commit included, has arrived whole.
                self._complete = True
                self._progress = True
                continue
            if message.event == PROGRESS:
                self._progressed(progress_revision(message))
                continue
            event = watch_event(message)
            if event is None:
                continue
            self._progress = True
            if self._accept(event):
                self._events.append(event)
                queued = True
            if not event.data.get("more_in_commit"):
                # The server marks every event but the last of a commit:
                # this commit has arrived whole.
                self._complete = True
        if queued:
            self._wake()
        backlog = len(self._events) > self._max_buffer
        if backlog and not self._paused and self._transport is not None:
            self._paused = True
            self._cancel_idle()
            self._transport.pauseProducing()

    def _accept(self, event: WatchEvent) -> bool:
        """Whether C{event} is new (not replayed after a resume); track it."""
        last = self.last_revision
        if last is not None and event.revision < last:
            return False
        if last is not None and event.revision == last:
            if self._complete or event.key in self._keys_at_last:
                return False
            self._keys_at_last.add(event.key)
            return True
        self.last_revision = event.revision
        self._keys_at_last = {event.key}
        self._complete = False
        return True

    def _progressed(self, revision: int) -> None:
        """
        A progress event: the server has sent everything up to C{revision}
        (matching this watch), so that is the resume point now.
        """
        self._progress = True
        if self.last_revision is None or revision > self.last_revision:
            self.last_revision = revision
            self._keys_at_last = set()
        self._complete = True

    def _unpause(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._arm_idle()
            self._transport.resumeProducing()

    def _arm_idle(self) -> None:
        """(Re)start the idle timer: it fires if nothing arrives for a while."""
        # Paused, silence is ours, not the server's.
        if self._idle_timeout is None or self._closed or self._paused:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)
        else:
            self._idle = self._clock.callLater(self._idle_timeout, self._idled)

    def _cancel_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _idled(self) -> None:
        self._idle = None
        self._timed_out = True
        if self._request is not None:
            self._request.cancel()
        elif self._transport is not None:
            self._transport.loseConnection()


def _seconds(value: Any, name: str, allow_none: bool = True) -> Optional[float]:
    """
    @raise TypeError: unless C{value} is an int or float (or L{None}).
    @raise ValueError: unless it is 0 or more and finite.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s is a number of seconds, not %s" % (name, type(value).__name__))
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError("%s must be 0 or more seconds and finite: %r" % (name, value))
    return float(value)


def _revision(value: Any, name: str) -> int:
    """
    @raise TypeError: unless C{value} is an int (not a bool).
    @raise ValueError: if it is negative.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("%s is a revision (an int), not %s" % (name, type(value).__name__))
    if value < 0:
        raise ValueError("%s must not be negative: %d" % (name, value))
    return value


def watch(
    http: Any,
    url: str,
    prefix: str = "",
    *,
    after: Optional[int] = None,
    values: bool = False,
    token: Optional[str] = None,
    reconnect: bool = True,
    clock: Optional[IReactorTime] = None,
    retry_delay: Optional[float] = None,
    max_delay: float = 30.0,
    max_retries: Optional[int] = 8,
    idle_timeout: Optional[float] = 60.0,
    max_buffer: int = 10_000,
    random: Callable[[], float] = _random.random,
    on_retry: Optional[Callable[[Optional[Failure], float], None]] = None,
) -> Watch:
    """
    Watch the keys that start with C{prefix} (C{GET /v1/watch?prefix=P}):
    a L{Watch}, an async iterator of L{WatchEvent}s that resumes by itself
    after a disconnect. See L{Watch} for the guarantees, backoff and
    errors.

    @param after: yield the changes after this revision (replayed from the
        server's history, then live); by default only those after the
        stream opens.
    @param values: include small values in the events (C{values=1}).
    @param reconnect: resume after a disconnect; with C{False} the first
        disconnect ends the iteration (a failure is raised).
    @param clock: the L{IReactorTime} for backoff and idle timers (the
        global reactor by default).
    @param retry_delay: the first backoff delay in seconds (default: the
        server's C{retry:} hint, else 1 s).
    @param max_delay: the longest backoff delay.
    @param max_retries: attempts in a row that may fail to open a stream
        before the watch gives up (L{None}: never).
    @param idle_timeout: seconds without a byte (heartbeats included)
        after which the connection is taken as dead and reopened; keep it
        above the server's heartbeat interval (15 s by default). L{None}
        disables it.
    @param max_buffer: events queued for the consumer before the
        connection is paused.
    @param random: a source of floats in [0, 1) for the backoff's jitter.
    @param on_retry: called before each reconnection with the L{Failure}
        that ended the last attempt (L{None} if the server ended the stream
        cleanly) and the seconds until the next one: to log it. An
        exception it raises ends the watch.
    @return: a L{Watch}, already connecting.
    @raise TypeError, ValueError: at once, for a bad argument or token.
    """
    if not isinstance(prefix, str):
        raise TypeError("prefix is a str, not %s" % (type(prefix).__name__,))
    if after is not None:
        _revision(after, "after")
    _seconds(retry_delay, "retry_delay")
    if not _seconds(max_delay, "max_delay", allow_none=False):
        raise ValueError("max_delay must be above 0 seconds")
    if max_retries is not None:
        _revision(max_retries, "max_retries")
    if idle_timeout is not None and not _seconds(idle_timeout, "idle_timeout"):
        raise ValueError("idle_timeout must be above 0 seconds")
    if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
        raise ValueError("max_buffer must be an int of 1 or more: %r" % (max_buffer,))
    target = _join(url, "v1", "watch") + _query(
        prefix=prefix or None, values="1" if values else None
    )
    headers = _headers(token, accept=b"text/event-stream")
    if clock is None:
        from twisted.internet import reactor

        clock = cast(IReactorTime, reactor)
    return Watch(
        http, target, headers, after, reconnect, clock, retry_delay, max_delay, max_retries,
        idle_timeout, max_buffer, random, on_retry,
    )


def wait_for(
    http: Any,
    url: str,
    key: str,
    index: int,
    *,
    wait: Optional[float] = None,
    token: Optional[str] = None,
) -> Deferred:
    """
    One long-poll (C{GET /v1/kv/{key}?index=N&wait=S}): wait until C{key}
    changes after revision C{index} (written, deleted or expired), or
    until the wait ends, and read it then.

    The answer is at once if the key's C{mod_revision} is already above
    C{index}, or if it was deleted or expired after C{index}. A missing key
    wakes only when it appears. At the end of the wait the unchanged state
    comes back: compare the entry's C{mod_revision} with C{index} to tell.
    To wait again, pass the entry's C{mod_revision} as the next C{index}.
    (After L{None} for a key deleted after C{index}, the same C{index}
    answers at once again: wait from a later revision, or use L{watch}.)

    @param index: a revision (0: wait for the key to exist).
    @param wait: seconds to hold at most (the server's default, 60, when
        L{None}; capped by its C{max_wait}, stretched by up to 1/16 as
        jitter).
    @return: a Deferred firing with the L{KeyValue}, or L{None} if the key
        does not exist (then).
    @raise TypeError, ValueError: at once, for a bad key, index or wait.
    @raise KVClientError: (in the Deferred) for an error answer (429 when
        the server's watcher limit is reached).
    """
    index = _revision(index, "index")
    seconds = _seconds(wait, "wait")
    wait_text = None
    if seconds is not None:
        wait_text = "%d" % (seconds,) if seconds.is_integer() else repr(seconds)
    target = _key_url(url, key) + _query(index="%d" % (index,), wait=wait_text)
    d = _request(http, "GET", target, {200, 404}, token, accept=_ACCEPT_ANY)

    def answered(answer: _Answer) -> Optional[KeyValue]:
        if answer.status == 404:
            problem = _problem_from_body(404, answer.body)
            if problem.get("code") != "key-not-found":
                raise NotFoundError(404, problem)
            return None
        return _entry_from(key, answer)

    return d.addCallback(answered)

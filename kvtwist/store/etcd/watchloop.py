# -*- test-case-name: tests.contract.test_store_etcd -*-
"""
The store's watch: one etcd watch over its key range at a time, restarted
on the next endpoint whenever it ends, which turns each etcd revision into
one L{CommitResult} for the listeners, in order, and tells reset listeners
when they may have missed changes (docs/etcd.md, "Watch" and "Reset hook").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set, Tuple

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.errors import StoreCorrupt, StoreUnavailable
from kvtwist.model import Change, CommitResult
from kvtwist.store.etcd.codec import b64, prefix_end, unb64
from kvtwist.store.etcd.delivery import Delivery
from kvtwist.store.etcd.errors import EtcdError, describe, is_token_refusal
from kvtwist.store.etcd.stream import WatchStream
from kvtwist.store.rules import live

if TYPE_CHECKING:  # pragma: no cover
    from kvtwist.store.etcd.store import EtcdStore

__all__ = ["Recorder", "WatchLoop", "WatchReset"]

log = Logger()

#: Pauses between attempts to (re)start the watch once every endpoint has
#: failed in a row: doubling from the first to the second, so a restarted
#: member or a returning quorum is found within a second without spinning.
RETRY_FIRST = 0.1
RETRY_MAX = 1.0


@dataclass(frozen=True)
class WatchReset:
    """
    What reset listeners hear (see L{EtcdStore.add_reset_listener} and
    docs/etcd.md, "Reset hook").

    @ivar watching: C{False} when the watch was just lost; C{True} when it
        runs (again), or when lost history was found while it runs.
    @ivar history_lost: listeners did not, and will never, hear some change
        at or below C{revision}: a change feed must drop its history up to
        C{revision} (resumes from before it are gone).
    @ivar revision: with C{watching=False}, the last revision the watch had
        covered (other clients' changes after it may be missing); with
        C{watching=True}, the watch delivers every change after it (and with
        C{history_lost}, not every change up to it was delivered).
    @ivar reason: a sentence for logs and readiness reports.
    """

    watching: bool
    history_lost: bool
    revision: int
    reason: str


class WatchLoop:
    """
    The watch of one L{EtcdStore}: the sequencer of its L{Delivery} while
    it runs.

    @param enabled: whether the store runs a watch at all (see
        L{EtcdStore}'s C{watch}).

    @ivar live: whether a watch runs now.
    @ivar endpoint: the endpoint the running watch is on, or L{None}.
    @ivar seen: the largest revision whose watch events were processed.
    @ivar task: the loop (L{_loop}) while it runs.
    @ivar stopping: L{stop} was called: no watch starts again.
    @ivar stream: the watch stream being read, if any.
    @ivar recorders: what wants to learn the results the watch delivers
        (L{record}).
    """

    def __init__(self, store: "EtcdStore", delivery: Delivery, enabled: bool) -> None:
        self._store = store
        self._delivery = delivery
        self._reactor = store.reactor
        self.enabled = enabled
        self.live = False
        self.endpoint: Optional[str] = None
        self.seen = 0
        self.task: Optional[Deferred] = None
        self.stopping = False
        self.stream: Optional[WatchStream] = None
        self.recorders: Set[Recorder] = set()
        self._request: Optional[Deferred] = None
        self._sleep: Optional[Deferred] = None
        # Lost history already reported up to this revision.
        self._gap_reported = 0
        self._stall_call: Any = None
        self._resets: List[Callable[[WatchReset], None]] = []

    @property
    def running(self) -> bool:
        """Whether the loop runs (a lost watch will be resumed)."""
        return self.task is not None

    @property
    def reactor(self) -> Any:
        """The reactor the watch's requests and timers run on."""
        return self._reactor

    @property
    def timeout(self) -> float:
        """Seconds the watch waits for etcd, and own results for the watch."""
        return self._store.timeout

    def add_reset_listener(self, listener: Callable[[WatchReset], None]) -> None:
        """See L{EtcdStore.add_reset_listener}."""
        self._resets.append(listener)

    def start(self, revision: int) -> Deferred:
        """
        Start the loop, watching from the revision after C{revision}.

        @return: a Deferred that fires once the first watch runs, or fails
            once every endpoint has failed in a row.
        """
        self.stopping = False
        self.seen = self._delivery.delivered = max(self._delivery.delivered, revision)
        self._gap_reported = self.seen
        ready: Deferred = Deferred()
        self.task = Deferred.fromCoroutine(self._loop(ready))
        return ready

    def record(self) -> "Recorder":
        """
        Start keeping what the watch delivers, per revision, to learn the
        result of a change etcd made on the store's behalf (a revoke).
        """
        recorder = Recorder(self)
        self.recorders.add(recorder)
        return recorder

    def _recorded(self, revision: int, result: Optional[CommitResult]) -> None:
        for recorder in list(self.recorders):
            recorder.saw(revision, result)

    async def _loop(self, ready: Deferred) -> None:
        """
        Keep a watch running until L{stop}: start one on the current
        endpoint, and whenever it ends, tell reset listeners and start the
        next one on the next endpoint, from the last revision processed.
        C{ready} fires once the first watch runs, or fails once every
        endpoint has failed in a row (then L{EtcdStore.open} fails).
        """
        failures = 0
        index = self._store.gateway.current
        count = len(self._store.endpoints)
        reasons: List[str] = []
        # After a compaction: the next watch starts from the current revision
        # (fresh), and its reset says history was lost (lost, the reason).
        fresh = False
        lost = ""
        try:
            while not self.stopping:
                endpoint = self._store.endpoints[index]
                compacted = 0
                if fresh:
                    reason = await self._skip_to_current()
                    if not reason:
                        fresh = False
                        continue
                else:
                    reason, compacted = await self._attempt(endpoint, ready, lost)
                    if self.live:
                        if self.stopping:
                            break
                        # It ran: whatever ended it, the next attempt
                        # begins a fresh round over the endpoints.
                        failures = 0
                        reasons = []
                        lost = ""
                        self.lost(reason)
                if self.stopping:
                    break
                if compacted:
                    self._store.history.learned(compacted)
                    fresh = True
                    lost = (
                        "etcd compacted its history up to revision %d before the "
                        "watch could resume after revision %d"
                        % (compacted, self.seen)
                    )
                    log.warn("etcd watch: {lost}; resuming from the current revision", lost=lost)
                    continue
                failures += 1
                reasons.append(reason)
                if failures >= count and not ready.called:
                    ready.errback(
                        Failure(StoreUnavailable(
                            "the etcd watch could not be started: " + "; ".join(reasons[-count:])
                        ))
                    )
                    if self.stopping:
                        break
                index = (index + 1) % count
                delay = 0.0
                if failures >= count:
                    delay = min(
                        RETRY_FIRST * 2 ** min(failures - count, 8), RETRY_MAX
                    )
                self._sleep = deferLater(self._reactor, delay)
                try:
                    await self._sleep
                except CancelledError:
                    break
                finally:
                    self._sleep = None
        except Exception:
            log.failure("the etcd watch loop failed")
            if not ready.called:
                ready.errback(Failure(StoreUnavailable("the etcd watch failed to start")))
        finally:
            self.live = False
            self.endpoint = None

    async def _skip_to_current(self) -> str:
        """
        After a compaction: learn the current revision and treat everything
        up to it as delivered (it is lost history). Returns why it failed,
        or the empty string.
        """
        try:
            document = await self._store.call(
                "/v3/kv/range", {"key": b64(self._store.keys.data), "count_only": True}
            )
            current = int(document["header"]["revision"])
        except Exception as e:
            return "the current revision could not be read: %s" % (describe(e),)
        if current > self.seen:
            self.seen = current
        if current > self._delivery.delivered:
            self._delivery.delivered = current
        self._delivery.own_direct = {r for r in self._delivery.own_direct if r > self.seen}
        self._delivery.deliver()
        return ""

    async def _attempt(self, endpoint: str, ready: Deferred, lost: str) -> Tuple[str, int]:
        """
        Run one watch on C{endpoint} from the revision after C{_watch_seen}
        until it ends. If etcd refused its auth token before it began (it
        expired), it is tried once more with a new one.

        @return: why it ended (or could not start), and the compacted
            revision when etcd refused it for that, else 0.
        """
        reason, compacted, refused = await self._once(endpoint, ready, lost)
        if refused and not self.stopping:
            reason, compacted, _ = await self._once(endpoint, ready, lost)
        return reason, compacted

    async def _once(
        self, endpoint: str, ready: Deferred, lost: str
    ) -> Tuple[str, int, bool]:
        """
        L{_attempt}'s one watch; also says whether etcd refused the
        auth token before the watch began (the gateway then gets a new one).
        """
        start = self.seen + 1
        body = {
            "create_request": {
                "key": b64(self._store.keys.data),
                "range_end": b64(prefix_end(self._store.keys.data)),
                "start_revision": str(start),
                "prev_kv": True,
            }
        }
        # The gateway sends it over its TLS, with the auth token, and asks
        # etcd to cancel it when its member loses the leader, rather than
        # leave it silent in a minority.
        request = self._store.gateway.open_stream(endpoint, "/v3/watch", body)
        request.addTimeout(self.timeout, self._reactor)
        self._request = request
        try:
            response, token = await request
        except Exception as e:
            if isinstance(e, (CancelledError, DeferTimeoutError)) and not self.stopping:
                why = "no answer to the watch within %gs" % (self.timeout,)
                return "%s: %s" % (endpoint, why), 0, False
            return "%s: %s" % (endpoint, describe(e)), 0, False
        finally:
            self._request = None
        stream = WatchStream(self.document)
        self.stream = stream
        if response.code != 200:
            stream.http_error = response.code
        # Bounds the wait for etcd's "created" (or for an error body's end).
        timer = self._reactor.callLater(
            self.timeout, stream.abort, "no watch created within %gs" % (self.timeout,)
        )
        try:
            response.deliverBody(stream)
            try:
                await stream.created
            except Exception:
                await stream.done
                if stream.token_refused:
                    self._store.gateway.token_refused(token)
                return (
                    "%s: %s" % (endpoint, stream.reason or "the watch ended at once"),
                    stream.compacted,
                    stream.token_refused,
                )
            finally:
                if timer.active():
                    timer.cancel()
            if self.stopping:
                stream.abort("the store is closing")
            else:
                self.started(endpoint, start, lost)
                if not ready.called:
                    ready.callback(None)
            reason = await stream.done
            return "%s: %s" % (endpoint, reason), stream.compacted, False
        finally:
            if timer.active():
                timer.cancel()
            if not stream.done.called and stream.transport is not None:
                # Wait for the connection to go, so close() leaves nothing.
                stream.abort("the store is closing")
                await stream.done
            self.stream = None

    def started(self, endpoint: str, start: int, lost: str) -> None:
        """A watch was created: listeners will hear every change from C{start}."""
        self.live = True
        self.endpoint = endpoint
        reason = "watching from revision %d on %s" % (start, endpoint)
        if lost:
            reason += "; " + lost
            self._gap_reported = max(self._gap_reported, start - 1)
            # Anchors made or deleted in the gap were not seen: count again.
            Deferred.fromCoroutine(self._store.client_leases.recount()).addErrback(
                lambda f: log.warn("etcd: leases not counted again: {e}", e=describe(f.value))
            )
        self._notify_resets(WatchReset(True, bool(lost), start - 1, reason))
        self._delivery.deliver()

    def lost(self, reason: str) -> None:
        """The running watch ended: say so, and deliver own commits directly."""
        self.live = False
        self.endpoint = None
        log.info("etcd watch lost: {reason}", reason=reason)
        self._notify_resets(
            WatchReset(False, False, self.seen, "the etcd watch was lost: " + reason)
        )
        self._delivery.deliver()

    def _notify_resets(self, reset: WatchReset) -> None:
        for listener in list(self._resets):
            try:
                listener(reset)
            except Exception:
                log.failure("a watch reset listener failed")

    def stop(self) -> Deferred:
        """
        End the watch (for close or a failed open).

        @return: a Deferred firing once its connection is gone.
        """
        self.stopping = True
        if self._stall_call is not None and self._stall_call.active():
            self._stall_call.cancel()
        self._stall_call = None
        for pending in (self._request, self._sleep):
            if pending is not None and not pending.called:
                pending.cancel()
        if self.stream is not None:
            self.stream.abort("the store is closing")
        task, self.task = self.task, None
        self._delivery.own_direct.clear()
        if task is None:
            return succeed(None)
        finished: Deferred = Deferred()

        def ended(result: object) -> None:
            # Let the aborted connection's last callbacks run before the
            # caller closes the pool.
            self._reactor.callLater(0, finished.callback, None)

        task.addBoth(ended)
        return finished

    def held_changed(self) -> None:
        """
        While the watch runs and own results wait for it, make sure they do
        not wait longer than a timeout (see L{_stalled}).
        """
        if self.live and self._delivery.held:
            if self._stall_call is None or not self._stall_call.active():
                _, oldest = self._delivery.oldest_held()
                delay = max(0.0, oldest + self.timeout - self._reactor.seconds())
                self._stall_call = self._reactor.callLater(delay, self._stalled)
        elif self._stall_call is not None:
            if self._stall_call.active():
                self._stall_call.cancel()
            self._stall_call = None

    def _stalled(self) -> None:
        """
        An own commit has waited a timeout for the watch: the watch is stuck
        (e.g. on a member that cannot see etcd's leader but was not told so).
        End it; the loop starts another on the next endpoint, and own
        commits are delivered directly meanwhile.
        """
        self._stall_call = None
        if not (self.live and self._delivery.held):
            return
        revision, oldest = self._delivery.oldest_held()
        if self._reactor.seconds() - oldest < self.timeout:
            self.held_changed()
            return
        reason = "the watch did not deliver revision %d within %gs of its commit" % (
            revision,
            self.timeout,
        )
        if self.stream is not None:
            self.stream.abort(reason)
        else:
            self.lost(reason)

    def document(self, stream: "WatchStream", line: bytes) -> None:
        """Handle one document of a watch stream (see L{WatchStream})."""
        try:
            document = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            stream.abort("the watch sent a line that is not JSON")
            return
        if not isinstance(document, dict):
            stream.abort("the watch sent a document that is not an object")
            return
        error = document.get("error")
        if error is not None:
            # The gateway's stream error (e.g. "no leader"); the connection
            # ends with it.
            message = error.get("message") if isinstance(error, dict) else error
            stream.token_refused = is_token_refusal(str(message))
            stream.abort("etcd ended the watch: %s" % (message,))
            return
        result = document.get("result")
        if not isinstance(result, dict):
            stream.abort("the watch sent a document without a result")
            return
        if result.get("canceled"):
            compacted = int(result.get("compact_revision") or 0)
            stream.compacted = compacted
            why = result.get("cancel_reason") or (
                "revision %d is compacted" % (compacted,) if compacted else "no reason given"
            )
            # e.g. "rpc error: code = Unauthenticated desc = etcdserver:
            # invalid auth token", for a token that expired.
            stream.token_refused = is_token_refusal(str(why))
            if "PermissionDenied" in str(why):
                why = (
                    "%s (kvtwist's etcd user may not read its key prefix, or etcd's "
                    "auth is on and kvtwist has no credentials)" % (why,)
                )
            stream.abort("etcd canceled the watch: %s" % (why,))
            return
        if result.get("created") and not stream.created.called:
            stream.created.callback(None)
        events = result.get("events")
        if events:
            try:
                self.events(events)
            except (KeyError, TypeError, ValueError) as e:
                stream.abort("the watch sent a malformed event: %s" % (describe(e),))
                return
        self._store.saw(result.get("header"))

    def events(self, events: List[dict]) -> None:
        """
        Deliver watch events, one L{CommitResult} per revision, in order,
        skipping revisions already processed or already delivered.
        """
        groups: Dict[int, List[dict]] = {}
        for event in events:
            groups.setdefault(int(event["kv"]["mod_revision"]), []).append(event)
        for revision in sorted(groups):
            if revision <= self.seen:
                continue
            self.seen = revision
            if revision > self._store.revision:
                self._store.revision = revision
            leases = self._store.client_leases
            leases.follow(groups[revision])
            if all(leases.is_reserved(unb64(e["kv"]["key"])) for e in groups[revision]):
                # Only lease anchors changed: no kvtwist key did.
                self._recorded(revision, None)
                continue
            if revision <= self._delivery.delivered:
                if revision in self._delivery.own_direct:
                    # Delivered directly while the watch was down.
                    self._delivery.own_direct.discard(revision)
                elif revision > self._gap_reported:
                    self._lost_history(
                        "another client's change at revision %d reached the watch "
                        "after this store's commits up to revision %d had been "
                        "delivered" % (revision, self._delivery.delivered)
                    )
                continue
            own = self._delivery.held_result(revision)
            if own is None:
                try:
                    own = self.result_of(revision, groups[revision])
                except (StoreCorrupt, EtcdError) as e:
                    # The change happened, but listeners cannot be told
                    # what it was: they must treat what they know as stale.
                    log.error("etcd watch: revision {revision}: {e}", revision=revision, e=e)
                    self._delivery.delivered = revision
                    self._lost_history(
                        "the change at revision %d could not be decoded: %s" % (revision, e)
                    )
                    continue
            self._delivery.notify(revision, own)
            self._recorded(revision, own)
        self._delivery.own_direct = {r for r in self._delivery.own_direct if r > self.seen}
        self._delivery.deliver()

    def _lost_history(self, reason: str) -> None:
        """Tell reset listeners that changes up to C{_delivered} were missed."""
        self._gap_reported = self._delivery.delivered
        log.warn("etcd watch: history lost: {reason}", reason=reason)
        self._notify_resets(WatchReset(self.live, True, self._delivery.delivered, reason))

    def result_of(self, revision: int, events: List[dict]) -> CommitResult:
        """
        The L{CommitResult} of one revision's watch events: PUT is C{put};
        DELETE is C{expire} when the deleted value had expired by the
        store's clock, else C{delete}; C{previous} from C{prev_kv}.
        """
        now = self._store.clock.seconds()
        leases = self._store.client_leases
        ends = leases.ended(events)
        changes = []
        for event in events:
            kv = event["kv"]
            if leases.is_reserved(unb64(kv["key"])):
                continue
            prev = event.get("prev_kv")
            previous = self._store.keys.row(prev).entry if prev else None
            if event.get("type", "PUT") == "DELETE":
                key = self._store.keys.decode_key(unb64(kv["key"]))
                if previous is not None and not previous.is_live(now):
                    changes.append(Change("expire", key, None, previous))
                else:
                    # A lease's end labels it (expire, or delete if revoked).
                    changes.append(leases.label(Change("delete", key, None, previous), prev, ends))
            else:
                entry = self._store.keys.row(kv).entry
                changes.append(Change("put", entry.key, entry, live(previous, now)))
        return CommitResult(revision, tuple(changes))


class Recorder:
    """What the watch delivered, per revision, while a change waits for it."""

    def __init__(self, loop: "WatchLoop") -> None:
        self._loop = loop
        self._results: Dict[int, Optional[CommitResult]] = {}
        self._waiting: Optional[Tuple[int, Deferred]] = None

    def saw(self, revision: int, result: Optional[CommitResult]) -> None:
        self._results[revision] = result
        if self._waiting is not None and revision >= self._waiting[0]:
            waiter = self._waiting[1]
            self._waiting = None
            waiter.callback(None)

    async def result(self, revision: int) -> CommitResult:
        """
        The result the watch delivered for C{revision} (no changes if it
        touched no kvtwist key); after the timeout without the watch getting
        there, a result without changes.
        """
        loop = self._loop
        timeout = loop.timeout
        # A watch that is down delivers it when it runs again: not waited for.
        if loop.seen < revision and loop.live:
            waiter: Deferred = Deferred()
            self._waiting = (revision, waiter)
            waiter.addTimeout(timeout, loop.reactor)
            try:
                await waiter
            except (CancelledError, DeferTimeoutError):
                log.warn(
                    "etcd watch: revision {revision} not delivered within {timeout}s",
                    revision=revision, timeout=timeout,
                )
        return self._results.get(revision) or CommitResult(revision, ())

    def stop(self) -> None:
        self._loop.recorders.discard(self)

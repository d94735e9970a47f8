# -*- test-case-name: tests.unit.test_watch -*-
"""
The change feed: every committed change as an event, a bounded history to
resume from, and subscriptions for long-polls and event streams.

L{ChangeHub} listens to the store (L{IKeyValueStore.add_listener}), so it
sees each commit once, in revision order, after the read cache has been
updated: a woken watcher that reads the key sees the new state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional, Set, Tuple

from kvtwist.errors import HistoryGone
from kvtwist.interfaces import IKeyValueStore, IWatchedStore
from kvtwist.model import CommitResult, Entry


@dataclass(frozen=True)
class Event:
    """
    One key changed by one commit: C{kind} is put, delete or expire;
    C{entry} the key after it (L{None} when removed), C{previous} before it
    (L{None} when it did not exist).
    """

    revision: int
    kind: str
    key: str
    entry: Optional[Entry]
    previous: Optional[Entry] = None


def commit_events(result: CommitResult) -> Tuple[Event, ...]:
    """The events of one commit, in its change order."""
    return tuple(
        Event(result.revision, change.kind, change.key, change.entry, change.previous)
        for change in result.changes
    )


Deliver = Callable[[int, Tuple[Event, ...]], None]


class Subscription:
    """A subscriber's interest: events whose key C{matches}."""

    def __init__(self, hub: "ChangeHub", matches: Callable[[str], bool], deliver: Deliver):
        self._hub = hub
        self.matches = matches
        self._deliver = deliver

    def deliver(self, revision: int, events: Tuple[Event, ...]) -> None:
        """Pass on the events of one commit that match, if any."""
        wanted = tuple(event for event in events if self.matches(event.key))
        if wanted:
            self._deliver(revision, wanted)

    def cancel(self) -> None:
        """Stop receiving events (idempotent)."""
        self._hub._subscriptions.discard(self)


#: What one kept event costs beyond its key and value bytes (the Event, its
#: Entry and their fields, measured at about 400 bytes on CPython 3.11), so
#: that many small events are not counted as free.
EVENT_OVERHEAD = 400


def event_bytes(event: Event) -> int:
    """The bytes one event is counted for in the history's byte bound."""
    size = EVENT_OVERHEAD + len(event.key)
    if event.entry is not None:
        size += len(event.entry.value)
    return size


class ChangeHub:
    """
    Events of the last changes (whole commits), at most C{max_events} of
    them holding at most C{max_bytes} (L{event_bytes}), and the
    subscriptions to future ones.

    The byte bound keeps committed values out of memory beyond it: the
    read cache is bounded on its own, and without this bound 10,000 kept
    events of 1 MiB values held 10 GiB. A commit larger than C{max_bytes}
    by itself leaves the history at once, so resuming from before it is a
    410 (list again, then watch).
    """

    def __init__(
        self, store: IKeyValueStore, max_events: int, max_bytes: Optional[int] = None
    ) -> None:
        self._store = store
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._commits: Deque[Tuple[int, Tuple[Event, ...], int]] = deque()
        self._count = 0
        self._bytes = 0
        self._horizon: Optional[int] = None
        self._position: Optional[int] = None
        self._subscriptions: Set[Subscription] = set()
        store.add_listener(self.on_commit)
        if IWatchedStore.providedBy(store):
            IWatchedStore(store).add_reset_listener(self.on_reset)

    @property
    def horizon(self) -> int:
        """
        Every event after this revision is in the history. Before any event
        it is the store's current revision: nothing older is known here.
        """
        if self._horizon is None:
            return self._store.revision
        return self._horizon

    @property
    def position(self) -> int:
        """
        The revision every subscriber has been given the events up to: the
        last commit delivered, or the store's revision before any.
        """
        if self._position is None:
            return self._store.revision
        return self._position

    @property
    def subscribers(self) -> int:
        """How many subscriptions are live."""
        return len(self._subscriptions)

    def on_commit(self, result: CommitResult) -> None:
        """Record a commit's events and deliver them (a store listener)."""
        if self._horizon is None:
            self._horizon = result.revision - 1
        events = commit_events(result)
        size = sum(event_bytes(event) for event in events) if self._max_bytes else 0
        self._commits.append((result.revision, events, size))
        self._count += len(events)
        self._bytes += size
        # Trim whole commits, so a commit is never half in the history.
        while self._commits and (
            (self._count > self._max_events and len(self._commits) > 1)
            or (self._max_bytes is not None and self._bytes > self._max_bytes)
        ):
            revision, dropped, dropped_size = self._commits.popleft()
            self._count -= len(dropped)
            self._bytes -= dropped_size
            self._horizon = revision
        self._position = max(self.position, result.revision)
        for subscription in list(self._subscriptions):
            subscription.deliver(result.revision, events)

    def on_reset(self, reset) -> None:
        """
        The store's change feed missed changes up to C{reset.revision}
        (etcd compaction, a lost watch): resuming from before it is gone.
        C{reset} is what L{IWatchedStore.add_reset_listener} describes.
        """
        if reset.history_lost:
            self._commits.clear()
            self._count = 0
            self._bytes = 0
            self._horizon = max(self.horizon, reset.revision)

    def history(self) -> List[Tuple[int, Tuple[Event, ...]]]:
        """The kept commits, oldest first: C{(revision, events)} each."""
        return [(revision, events) for revision, events, _ in self._commits]

    def since(self, revision: int, matches: Callable[[str], bool]) -> List[Event]:
        """
        The events after C{revision} whose key C{matches}, in order.

        @raise HistoryGone: if events after C{revision} have been dropped.
        """
        if revision < self.horizon:
            raise HistoryGone(revision, self.horizon)
        return [
            event
            for commit_revision, events, _ in self._commits
            if commit_revision > revision
            for event in events
            if matches(event.key)
        ]

    def removed_since(self, key: str, revision: int) -> bool:
        """
        Whether C{key} was deleted or expired after C{revision} (or that
        cannot be ruled out because the history no longer reaches back).
        """
        if revision < self.horizon:
            return True
        for commit_revision, events, _ in reversed(self._commits):
            if commit_revision <= revision:
                break
            for event in events:
                if event.key == key and event.kind != "put":
                    return True
        return False

    def subscribe(self, matches: Callable[[str], bool], deliver: Deliver) -> Subscription:
        """Deliver future events whose key C{matches}; cancel when done."""
        subscription = Subscription(self, matches, deliver)
        self._subscriptions.add(subscription)
        return subscription

# -*- test-case-name: tests.unit.test_client_watch -*-
"""
What a watch (L{kvtwist.client.watch}) reads from the server's event
stream: L{WatchEvent}s, built from its change messages by L{watch_event};
the revision a progress heartbeat vouches for (L{progress_revision}); and
L{HistoryGone}, the 410 for a resume point older than the server's history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional

from kvtwist.client.errors import KVClientError, _bad_response, _one_line
from kvtwist.client.sse import ServerSentEvent

#: The kinds of change event the server sends (docs/api.md, "Watching").
WATCH_KINDS = ("put", "delete", "expire")
#: The event type of the server's heartbeats: its id is a resume point.
PROGRESS = "progress"


def progress_revision(message: ServerSentEvent) -> int:
    """
    The revision of a progress event (its C{id}, which its data repeats).

    @raise KVClientError: C{bad-response} if it has none.
    """
    if not (message.id.isascii() and message.id.isdigit()):
        raise _bad_response(200, "a progress event has no revision id: %r" % (_one_line(message.id),))
    return int(message.id)


@dataclass(frozen=True)
class WatchEvent:
    """
    One changed key, as L{watch} yields it.

    @ivar revision: the revision of the commit that changed it (the SSE
        C{id}); every event of one commit has the same revision.
    @ivar kind: C{"put"}, C{"delete"} or C{"expire"} (removed by the TTL
        sweeper).
    @ivar key: the key.
    @ivar data: the event's whole JSON C{data}: C{key}, C{revision}, and
        for a put C{version}, C{content_type}, C{size}, and with
        C{values=True} C{value} (JSON content types) or C{value_base64}
        (values over 64 KiB are left out).
    """

    revision: int
    kind: str
    key: str
    data: Dict[str, Any]

    @property
    def version(self) -> Optional[int]:
        """The key's version after a put; L{None} for deletes and expiries."""
        version = self.data.get("version")
        return version if type(version) is int else None

    def as_item(self) -> Dict[str, Any]:
        """The event as one JSON object: C{revision}, C{kind}, C{key}, then the rest of C{data}."""
        item: Dict[str, Any] = {"revision": self.revision, "kind": self.kind, "key": self.key}
        for name, value in self.data.items():
            item.setdefault(name, value)
        return item


class HistoryGone(KVClientError):
    """
    A 410 from C{/v1/watch}: the events after the resume point have left
    the server's history (compacted; on a store without history, its
    bounded memory, or it restarted since), so some changes can no longer
    be replayed. Read the state again (L{list_all})
    and watch from the revision that listing was read at.
    """

    @property
    def oldest_revision(self) -> Optional[int]:
        """The oldest revision the server can resume from, if it said."""
        revision = self.problem.get("oldest_revision")
        return revision if type(revision) is int else None

    @property
    def requested_revision(self) -> Optional[int]:
        """The resume point that was refused, if the server said."""
        revision = self.problem.get("requested_revision")
        return revision if type(revision) is int else None


def watch_event(message: ServerSentEvent) -> Optional[WatchEvent]:
    """
    The L{WatchEvent} of one message, or L{None} for a message of another
    type (a later server may send more; they are skipped).

    @raise KVClientError: C{bad-response} for a change event that is not a
        JSON object with a key and a revision.
    """
    if message.event not in WATCH_KINDS:
        return None
    try:
        data = json.loads(message.data)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("key"), str):
        raise _bad_response(200, "an event's data is not a JSON object with a key: %r"
                            % (_one_line(message.data),))
    revision = data.get("revision")
    if message.id.isdigit() and message.id.isascii():
        if revision is not None and revision != int(message.id):
            raise _bad_response(200, "an event's id (%s) is not its revision (%r)"
                                % (message.id, revision))
        revision = int(message.id)
    if type(revision) is not int or revision < 0:
        raise _bad_response(200, "an event has no revision")
    return WatchEvent(revision, message.event, data["key"], data)

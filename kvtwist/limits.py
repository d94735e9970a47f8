# -*- test-case-name: tests.unit.test_http_limits -*-
"""
Every limit kvtwist enforces, with its default, in one place.

L{Limits} is built by L{kvtwist.tap} from the options and handed to the
Resource tree; C{GET /v1/limits} reports it as is. L{WatcherCount} holds
C{max_watchers} across the whole tree (long-polls and streams alike).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, List, Optional

from kvtwist.errors import LimitExceeded
from kvtwist.strictjson import MAX_DEPTH, MAX_KEY_BYTES

MiB = 1024 * 1024

#: etcd's default C{--max-txn-ops}.
ETCD_MAX_TXN_OPS = 128
#: etcd's default C{--max-request-bytes} (1.5 MiB).
ETCD_MAX_REQUEST_BYTES = 1536 * 1024


#: Seconds per unit of an age in C{--history-retention}.
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_AGE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")


@dataclass(frozen=True)
class HistoryRetention:
    """
    How much history the store keeps before compacting it automatically:
    at most C{revisions} revisions and at most C{seconds} of age (L{None}:
    no bound of that kind). With both, the stricter one decides: the
    history never holds more than either allows.

    Written C{1h,1000000} (an age with a unit s, m, h or d; a bare integer
    is a count of revisions), one of the two, or C{forever}.
    """

    revisions: Optional[int] = 1_000_000
    seconds: Optional[float] = 3600.0

    @classmethod
    def parse(cls, value: Any) -> "HistoryRetention":
        """
        @raise ValueError: with what is wrong, for anything but the forms above.
        """
        if isinstance(value, HistoryRetention):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise ValueError("must be an age (30m, 1h, 7d), a number of revisions, both (1h,1000000), or forever")
        if value.strip().lower() == "forever":
            return cls(None, None)
        revisions: Optional[int] = None
        seconds: Optional[float] = None
        for part in (p.strip().lower() for p in value.split(",")):
            age = _AGE.fullmatch(part)
            if age is not None and seconds is None:
                seconds = float(age.group(1)) * _AGE_UNITS[age.group(2)]
                if seconds <= 0:
                    raise ValueError("the age kept must be above 0")
            elif part.isascii() and part.isdigit() and revisions is None:
                revisions = int(part)
                if revisions < 1:
                    raise ValueError("the revisions kept must be 1 or more")
            else:
                raise ValueError(
                    "%r is not an age (30m, 1h, 7d) or a number of revisions, "
                    "each given at most once" % (part,)
                )
        return cls(revisions, seconds)

    def __str__(self) -> str:
        if self.revisions is None and self.seconds is None:
            return "forever"
        parts = []
        if self.seconds is not None:
            for unit in "dhm":
                if self.seconds % _AGE_UNITS[unit] == 0:
                    parts.append("%d%s" % (self.seconds // _AGE_UNITS[unit], unit))
                    break
            else:
                parts.append("%gs" % (self.seconds,))
        if self.revisions is not None:
            parts.append("%d" % (self.revisions,))
        return ",".join(parts)


@dataclass(frozen=True)
class Limits:
    """
    @ivar max_body: request body bytes (413 beyond).
    @ivar max_key_bytes: UTF-8 bytes in a key (400 beyond; fixed).
    @ivar max_json_depth: nesting of a JSON body (400 beyond; fixed).
    @ivar max_keys_per_request: keys named by one request (413 beyond).
    @ivar max_staged_ops: ops staged in one queue or transaction (413 beyond).
    @ivar max_staged_bytes: bytes staged in one queue or transaction (413
        beyond): key and value bytes plus a measured overhead per op
        (L{kvtwist.staging.OP_OVERHEAD}).
    @ivar max_staged_bytes_total: bytes staged, counted the same way, by
        every transaction and the shared queue of this process together
        (503 beyond). The default, 512 MiB, is eight transactions at
        C{max_staged_bytes} or about two million small staged ops: with the
        read cache and the interpreter the process stays inside a 2 GiB
        machine, where the unbounded staging of 1000 open transactions
        could reach 64 GiB.
    @ivar max_open_transactions: transactions open at once (429 beyond).
    @ivar max_leases: leases held at once (429 beyond).
    @ivar max_lease_ttl: the longest lease ttl, in seconds (400 beyond).
    @ivar txn_timeout: seconds an idle transaction lives.
    @ivar max_list_limit: the largest page a listing returns.
    @ivar max_list_bytes: key and value bytes one page of a listing reads;
        a page ends early (with C{next}) once it holds this many, and
        always holds at least one entry.
    @ivar max_batch_ops: ops in one C{POST /v1/batch} (413 beyond).
    @ivar max_watchers: open long-polls and event streams (429 beyond).
    @ivar watch_history: events kept for resuming event streams.
    @ivar watch_history_bytes: bytes of keys and values the events kept for
        resuming may hold; the oldest commits leave the history beyond
        either bound.
    @ivar heartbeat: seconds between event-stream heartbeat comments.
    @ivar default_wait: seconds a long-poll waits when C{wait} is not given.
    @ivar max_wait: the longest C{wait} a long-poll may ask for.
    @ivar watch_buffer: bytes an event stream may hold that its reader has
        not taken; a write past it disconnects the stream.
    @ivar sweep_interval: seconds between expiry sweeps.
    @ivar sweep_batch: expired keys removed per sweep commit.
    @ivar cache_bytes: the read cache's bound, in bytes (C{--cache-size}
        is in MiB).
    @ivar request_timeout: seconds from a request's first byte until it
        must be complete, body included (408 and close beyond). Twisted's
        idle timeout alone is reset by every byte, so a client dripping one
        byte a second would hold its connection for ever.
    @ivar idle_timeout: seconds a connection may sit without sending a
        byte, between requests or before the first one (closed beyond).
    @ivar max_connections: connections open at once, over every listener;
        further ones are closed at once.
    @ivar max_header_bytes: bytes of a request line, and of the request
        line and headers together (414 or 431 beyond).
    @ivar max_headers: header lines in one request (431 beyond).
    @ivar history_retention: the L{HistoryRetention} automatic compaction
        keeps (stores with history only).
    @ivar compact_batch: history records one compaction step may remove
        (or one commit's, if more), so commits never wait long behind it.
    @ivar compact_interval: seconds between automatic compaction checks.
    @ivar etcd_max_txn_ops: on an etcd store, etcd's C{--max-txn-ops}: one
        commit is one etcd transaction, so it may touch (check or write) at
        most this many keys (413 beyond); L{None} on other stores.
    @ivar etcd_max_request_bytes: on an etcd store, etcd's
        C{--max-request-bytes}: the largest commit request (413 beyond).
    """

    max_body: int = 1 * MiB
    max_key_bytes: int = MAX_KEY_BYTES
    max_json_depth: int = MAX_DEPTH
    max_keys_per_request: int = 100_000
    max_staged_ops: int = 100_000
    max_staged_bytes: int = 64 * MiB
    max_staged_bytes_total: int = 512 * MiB
    max_open_transactions: int = 1000
    max_leases: int = 10_000
    max_lease_ttl: float = 86_400.0
    txn_timeout: float = 300.0
    max_list_limit: int = 1000
    max_list_bytes: int = 4 * MiB
    max_batch_ops: int = 100_000
    max_watchers: int = 1000
    watch_history: int = 10_000
    watch_history_bytes: int = 32 * MiB
    heartbeat: float = 15.0
    default_wait: float = 60.0
    max_wait: float = 600.0
    watch_buffer: int = 1 * MiB
    sweep_interval: float = 1.0
    sweep_batch: int = 1000
    cache_bytes: int = 64 * MiB
    request_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 1024
    max_header_bytes: int = 16384
    max_headers: int = 100
    history_retention: HistoryRetention = HistoryRetention()
    compact_batch: int = 10_000
    compact_interval: float = 10.0
    etcd_max_txn_ops: Optional[int] = None
    etcd_max_request_bytes: Optional[int] = None

    def as_dict(self) -> dict:
        """The limits in force as a JSON-ready dict (the etcd ones only on etcd)."""
        return {name: value for name, value in asdict(self).items() if value is not None}


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
        released: List[bool] = []

        def release() -> None:
            if not released:
                released.append(True)
                self.active -= 1

        return release

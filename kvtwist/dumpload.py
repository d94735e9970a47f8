# -*- test-case-name: tests.unit.test_dumpload -*-
"""
C{kvtwist dump} and C{kvtwist load}'s engine: copy keys out of a kvcache
as JSON lines (L{kvtwist.dumpformat}), and back in, with treq.

L{dump} writes the store at one revision, whatever is written meanwhile;
L{load} writes the lines back in atomic batches sized to the server's
limits, a few in flight at once, and keeps a checkpoint it can resume
from. docs/cli.md ("dump and load") gives the design: how a dump stays at
one revision, what C{exact} keeps, how batches are sized, ordered,
retried and checkpointed. The commands are L{kvtwist.cli.commands.dumpload}.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from collections import deque
from typing import (
    Any, BinaryIO, Callable, Deque, Dict, List, Mapping, Optional, Set, Tuple,
)

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from kvtwist import client
from kvtwist.dumpformat import DumpFormatError, Record, parse_record, record_line
from kvtwist.files import whole_file
from kvtwist.limits import Limits
from kvtwist.wire import encode_json, set_op

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_BATCH",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_RETRIES",
    "Checkpoint",
    "CheckpointMismatch",
    "dump",
    "load",
    "pause_before",
    "scan",
]

#: Keys per listing page: the server's default maximum (C{max_list_limit}).
DEFAULT_PAGE_SIZE = 1000
#: Listings a dump tries before it gives up on a store that keeps changing.
DEFAULT_ATTEMPTS = 5
#: Keys per load batch (one request, one commit).
DEFAULT_BATCH = 1000
#: Further tries of a load batch that met a conflict or a 503.
DEFAULT_RETRIES = 3
#: Batches a load keeps in flight.
DEFAULT_CONCURRENCY = 2
#: Seconds before the second try of a dump or a load batch; doubled each
#: time, up to L{MAX_PAUSE}.
FIRST_PAUSE = 0.1
#: The longest pause between tries: a growing pause with no cap made 30
#: attempts wait for hours.
MAX_PAUSE = 5.0


def pause_before(tries: int) -> float:
    """Seconds to wait after C{tries} failed tries (1 or more)."""
    return min(MAX_PAUSE, FIRST_PAUSE * 2 ** min(tries - 1, 32))


#: What a checkpoint file says it is.
CHECKPOINT_FORMAT = "kvtwist-load-checkpoint/1"
#: A dump to stdout is held in memory up to this size, then in a temp file.
SPOOL_BYTES = 16 * 1024 * 1024


class CheckpointMismatch(ValueError):
    """
    A checkpoint does not belong to this load: a different input, or a
    different server. Start again with C{restart=True} (C{--restart}).
    """


# -- dump ---------------------------------------------------------------------


def dump(
    http: Any,
    url: str,
    out: BinaryIO,
    *,
    prefix: str = "",
    page_size: int = DEFAULT_PAGE_SIZE,
    attempts: int = DEFAULT_ATTEMPTS,
    exact: bool = False,
    token: Optional[str] = None,
    clock: Any = None,
) -> Deferred:
    """
    Write every key that starts with C{prefix}, as the store held it at one
    revision, to C{out} as JSON lines (see the module docstring).

    Nothing reaches C{out} until a whole consistent listing has been read
    (attempts are spooled to memory or a temporary file), so a failed dump
    writes nothing.

    @param http: the treq-like client.
    @param out: a binary stream.
    @param page_size: keys per listing request (at most the server's
        C{max_list_limit}).
    @param attempts: listings tried before giving up on a changing store.
    @param exact: write every value as C{value_base64}, its exact bytes.
    @param clock: an C{IReactorTime} for the pause between attempts (none
        without it).
    @return: a Deferred firing with C{{"keys": <count>, "revision": <the
        revision dumped>, "attempts": <listings read>}}.
    @raise TypeError, ValueError: at once, for bad arguments.
    @raise client.ConflictError: (in the Deferred) with code
        C{revision-changed} if every attempt saw the store change.
    @raise client.KVClientError: (in the Deferred) for an error answer.
    """
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError("attempts must be a positive integer")
    client.iter_pages(http, url, prefix, limit=page_size, values=True)  # checks the arguments
    return Deferred.fromCoroutine(
        _dump(http, url, out, prefix, page_size, attempts, exact, token, clock)
    )


class _Changed(Exception):
    """The store changed during this listing."""


async def _dump(
    http: Any,
    url: str,
    out: BinaryIO,
    prefix: str,
    page_size: int,
    attempts: int,
    exact: bool,
    token: Optional[str],
    clock: Any,
) -> Dict[str, Any]:
    seen: List[int] = []
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        for attempt in range(1, attempts + 1):
            if attempt > 1 and clock is not None:
                await deferLater(clock, pause_before(attempt - 1), lambda: None)
            spool.seek(0)
            spool.truncate()
            try:
                revision, count = await _list_once(
                    http, url, spool, prefix, page_size, exact, token
                )
            except _Changed as changed:
                seen.extend(r for r in changed.args if r not in seen)
                continue
            spool.seek(0)
            shutil.copyfileobj(spool, out)
            return {"keys": count, "revision": revision, "attempts": attempt}
    raise client.ConflictError(
        409,
        {
            "status": 409,
            "title": "Conflict",
            "code": "revision-changed",
            "detail": "the store changed during each of %d listings (revisions %s); "
            "nothing was written: retry when it is quieter, or with more attempts"
            % (attempts, ", ".join(str(r) for r in seen[:10])),
            "revisions": seen,
            "detected": "client",
        },
    )


async def _list_once(
    http: Any,
    url: str,
    spool: Any,
    prefix: str,
    page_size: int,
    exact: bool,
    token: Optional[str],
) -> Tuple[int, int]:
    """One listing into C{spool}: C{(revision, keys)}, or L{_Changed}."""
    revision: Optional[int] = None
    count = 0
    pages = client.iter_pages(http, url, prefix, limit=page_size, values=True, token=token)
    try:
        async for page in pages:
            if revision is None:
                revision = page.get("revision")
            elif page.get("revision") != revision:
                raise _Changed(revision, page.get("revision"))
            for item in page["items"]:
                spool.write(await _line(http, url, item, exact, token, revision))
                count += 1
    finally:
        await pages.aclose()  # type: ignore[attr-defined]  # an async generator's
    return (revision if revision is not None else 0), count


async def _line(
    http: Any, url: str, item: Mapping[str, Any], exact: bool, token: Optional[str], revision: Any
) -> bytes:
    """The dump line of one item, fetching its exact bytes when needed."""
    if not exact or "value_base64" in item:
        try:
            return record_line(item)
        except ValueError:
            if "value" not in item:
                raise
            # An inline value strict JSON cannot hold (NaN): fetch the bytes.
    try:
        # As of the listing's revision: a write since then changes nothing.
        entry = await client.get_entry(http, url, item["key"], revision=revision, token=token)
    except client.KVClientError as e:
        if e.code != "history-unsupported":
            raise
        entry = await client.get_entry(http, url, item["key"], token=token)
    if entry.mod_revision != item.get("mod_revision"):
        # Written after the listing's revision: this attempt is stale.
        raise _Changed(revision, entry.revision)
    return record_line(item, exact_value=entry.value)


# -- load ---------------------------------------------------------------------


def scan(source: BinaryIO) -> Dict[str, int]:
    """
    Check every line of C{source} (a seekable binary stream) before a load
    sends anything, and go back to its start.

    @return: C{{"lines", "records"}}.
    @raise DumpFormatError: for the first line that is not a record.
    """
    source.seek(0)
    lines = records = 0
    for lines, line in enumerate(source, 1):
        if parse_record(line, lines) is not None:
            records += 1
    source.seek(0)
    return {"lines": lines, "records": records}


class Checkpoint:
    """
    The checkpoint file of a resumable load: a small JSON document written
    atomically (a temporary file beside it, fsynced, then renamed), so a
    load killed at any instant leaves the previous checkpoint or the new
    one, never half of one.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> Optional[Dict[str, Any]]:
        """
        The saved state, or L{None} if there is none.

        @raise CheckpointMismatch: if the file is not a load checkpoint.
        """
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CheckpointMismatch("cannot read the checkpoint %s: %s" % (self.path, e))
        try:
            state = json.loads(data.decode("utf-8"))
        except ValueError:
            state = None
        if (
            not isinstance(state, dict)
            or state.get("format") != CHECKPOINT_FORMAT
            or type(state.get("lines")) is not int
            or not isinstance(state.get("sha256"), str)
        ):
            raise CheckpointMismatch("%s is not a kvtwist load checkpoint" % (self.path,))
        return state

    def write(self, state: Mapping[str, Any]) -> None:
        with whole_file(self.path, prefix=".kvtwist-checkpoint-") as f:
            f.write(json.dumps(dict(state, format=CHECKPOINT_FORMAT)).encode("utf-8"))

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _resume(
    source: BinaryIO, checkpoint: Optional[Checkpoint], url: str, restart: bool
) -> Tuple[int, Any, Dict[str, Any]]:
    """
    Where a load starts: C{(lines to skip, the hash of those lines, the
    checkpoint's state)}, with C{source} positioned after them.

    @raise CheckpointMismatch: if the checkpoint is for another input or
        server.
    """
    hasher = hashlib.sha256()
    state = checkpoint.read() if checkpoint is not None and not restart else None
    if state is None:
        return 0, hasher, {}
    assert checkpoint is not None  # a state was read from it
    if state.get("url") != url:
        raise CheckpointMismatch(
            "the checkpoint %s is for a load into %s, not %s: pass --restart "
            "(restart=True) to load everything again (loads are idempotent)"
            % (checkpoint.path, state.get("url"), url)
        )
    done = state["lines"]
    for _ in range(done):
        line = source.readline()
        if not line:
            break
        hasher.update(line)
    if hasher.hexdigest() != state["sha256"]:
        raise CheckpointMismatch(
            "the input does not start with the %d lines the checkpoint %s recorded: "
            "pass --restart (restart=True) to load it from the first line"
            % (done, checkpoint.path)
        )
    return done, hasher, state


def load(
    http: Any,
    url: str,
    source: BinaryIO,
    *,
    batch: int = DEFAULT_BATCH,
    checkpoint: Optional[str] = None,
    restart: bool = False,
    retries: int = DEFAULT_RETRIES,
    concurrency: int = DEFAULT_CONCURRENCY,
    token: Optional[str] = None,
    clock: Any = None,
    on_progress: Optional[Callable[[int], object]] = None,
) -> Deferred:
    """
    Write the records of C{source} (dump lines) to the server, up to
    C{batch} keys per commit (see the module docstring).

    @param source: a binary stream of dump lines, read once from its
        current position (or from after the lines a checkpoint covers).
    @param checkpoint: the checkpoint file's path, to resume from and to
        keep up to date; L{None} for a load that cannot be resumed.
    @param restart: ignore an existing checkpoint (and overwrite it).
    @param retries: further tries of a batch after a conflict or a 503.
    @param concurrency: batches in flight at once (the next is read and
        encoded meanwhile); batches in flight never share a key.
    @param clock: the C{IReactorTime} that decides what is left of each
        TTL and times the pause before a retry; the global reactor by
        default.
    @param on_progress: called with the number of records handled (loaded,
        or skipped as expired) after each batch; at the start, with the
        number a checkpoint says are done already.
    @return: a Deferred firing with C{{"lines", "records", "loaded",
        "expired", "transactions", "resumed_at_line", "revision"}}: lines
        and records read in all (this run and the runs it resumes), keys
        loaded, expired records skipped and commits made in this run, the
        line it started after, and the revision of its last commit
        (L{None} if it committed nothing).
    @raise ValueError: at once, for a bad C{batch}, C{retries} or
        C{concurrency}.
    @raise CheckpointMismatch: at once, if the checkpoint is for another
        input or server.
    @raise DumpFormatError: (in the Deferred) at the first bad line; the
        batches before it are committed and checkpointed. (L{scan} finds
        bad lines before anything is sent.)
    @raise client.KVClientError: (in the Deferred) for an error answer
        (after the retries, for a conflict or a 503).
    """
    for name, number, low in (
        ("batch", batch, 1), ("retries", retries, 0), ("concurrency", concurrency, 1)
    ):
        if isinstance(number, bool) or not isinstance(number, int) or number < low:
            raise ValueError("%s must be an integer of at least %d" % (name, low))
    if clock is None:
        from twisted.internet import reactor as clock
    keeper = Checkpoint(checkpoint) if checkpoint is not None else None
    skipped, hasher, state = _resume(source, keeper, url, restart)
    return Deferred.fromCoroutine(
        _load(http, url, source, batch, keeper, skipped, hasher, state, retries, concurrency,
              token, clock, on_progress)
    )


#: Bytes kept free per op with a TTL: C{,"ttl":} and the seconds left,
#: added when the batch is sent (the TTL left depends on that moment).
_TTL_BYTES = 32
#: Bytes of C{{"ops":[} and C{]}}.
_ENVELOPE_BYTES = 16


@dataclass(frozen=True)
class _BatchLimits:
    """
    How big one C{POST /v1/batch} of a load may be: C{body} bytes and
    C{ops} ops, from the server's C{/v1/limits}.
    """

    body: int
    ops: int

    @classmethod
    def of(cls, limits: Mapping[str, Any]) -> "_BatchLimits":
        """
        The bounds a batch must keep within: the request body
        (C{max_body}), the ops of a batch and the keys of a request; on
        etcd also one etcd transaction's ops and, with room for etcd's own
        encoding of every key and value, its request bytes.
        """
        defaults = Limits()

        def number(name: str, default: Optional[int]) -> Optional[int]:
            value = limits.get(name, default)
            return value if type(value) is int and value > 0 else default

        body = number("max_body", defaults.max_body) or defaults.max_body
        etcd_bytes = number("etcd_max_request_bytes", None)
        if etcd_bytes is not None:
            body = min(body, etcd_bytes // 2)
        ops = [number(name, None) for name in (
            "max_batch_ops", "max_keys_per_request", "max_staged_ops", "etcd_max_txn_ops")]
        return cls(body, min([n for n in ops if n is not None] or [defaults.max_batch_ops]))


async def _batch_limits(http: Any, url: str, token: Optional[str]) -> _BatchLimits:
    """
    The server's batch bounds; the defaults for a server that does not show
    its C{/v1/limits} (404) or not to this token (403): a batch past them
    is then refused with a 413 that names the limit.
    """
    try:
        return _BatchLimits.of(await client.get_limits(http, url, token=token))
    except client.KVClientError as error:
        if error.status in (403, 404):
            return _BatchLimits.of({})
        raise


def _set_op(record: Record) -> bytes:
    """The batch op that writes C{record}, without its TTL, as JSON."""
    return encode_json(set_op(record.key, record.value, record.content_type))


class _Unit:
    """
    Records committed together: one batch, or one record too big for a
    batch body (written alone with a PUT).

    @ivar items: each record with its op, in input order.
    @ivar size: the batch body's bytes so far, room for TTLs included.
    @ivar lines: the input lines read once it is complete, C{sha256}
        their hash and C{records_done} the records on them (its
        checkpoint).
    """

    def __init__(self) -> None:
        self.items: List[Tuple[Record, bytes]] = []
        self.size = _ENVELOPE_BYTES
        self.lines = 0
        self.sha256 = ""
        self.records_done = 0

    def add(self, record: Record, op: bytes) -> None:
        self.items.append((record, op))
        self.size += len(op) + 1 + (_TTL_BYTES if record.expires is not None else 0)


async def _load(
    http: Any,
    url: str,
    source: BinaryIO,
    batch: int,
    keeper: Optional[Checkpoint],
    skipped: int,
    hasher: Any,
    state: Dict[str, Any],
    retries: int,
    concurrency: int,
    token: Optional[str],
    clock: Any,
    on_progress: Optional[Callable[[int], object]],
) -> Dict[str, Any]:
    records = state.get("records", 0)
    if on_progress is not None and records:
        on_progress(records)
    result: Dict[str, Any] = {
        "lines": skipped,
        "records": records,
        "loaded": 0,
        "expired": 0,
        "transactions": 0,
        "resumed_at_line": skipped,
        "revision": None,
    }
    bounds = await _batch_limits(http, url, token)
    # Up to `concurrency` units are committed while the next is read and
    # encoded: the client's parsing and the server's work overlap. Units in
    # flight never share a key (a later record of a key must land later),
    # and they are checkpointed strictly in input order, so a checkpoint
    # never covers a unit that might not have committed: resuming sends
    # again at most what was in flight, which is idempotent.
    flight: Deque[Tuple[Deferred, _Unit, Set[str]]] = deque()
    unit = _Unit()
    number = skipped

    async def settle() -> None:
        """Wait for the oldest unit in flight, then checkpoint it."""
        done, sent, _ = flight.popleft()
        counts, _ = await done
        result["loaded"] += counts["loaded"]
        result["expired"] += counts["expired"]
        if counts["revision"] is not None:
            result["transactions"] += 1
            result["revision"] = counts["revision"]
        if keeper is not None:
            keeper.write(
                {
                    "url": url,
                    "lines": sent.lines,
                    "sha256": sent.sha256,
                    "records": sent.records_done,
                    "revision": result["revision"],
                }
            )
        if on_progress is not None:
            on_progress(len(sent.items))

    async def send(full: _Unit, lines: int, sha256: str) -> None:
        full.lines, full.sha256, full.records_done = lines, sha256, result["records"]
        keys = {record.key for record, _ in full.items}
        while flight and (len(flight) >= concurrency
                          or any(not keys.isdisjoint(other) for _, _, other in flight)):
            await settle()
        flight.append((
            Deferred.fromCoroutine(_commit_unit(http, url, full, bounds, retries, token, clock)),
            full, keys,
        ))

    try:
        for line in source:
            number += 1
            previous_hash = hasher.hexdigest()
            hasher.update(line)
            record = parse_record(line, number)
            if record is None:
                continue
            try:
                op = _set_op(record)
            except ValueError as e:
                raise DumpFormatError(number, "the key cannot be sent: %s" % (e,))
            extra = len(op) + 1 + _TTL_BYTES
            if unit.items and unit.size + extra > bounds.body:
                # Full by bytes: commit what it holds, checkpointed before
                # this line; this record starts the next unit.
                await send(unit, number - 1, previous_hash)
                unit = _Unit()
            result["records"] += 1
            unit.add(record, op)
            if len(unit.items) >= min(batch, bounds.ops) or unit.size > bounds.body:
                await send(unit, number, hasher.hexdigest())
                unit = _Unit()
        if unit.items:
            await send(unit, number, hasher.hexdigest())
        while flight:
            await settle()
    except BaseException as stopped:
        # Nothing is left running: on a failed or cancelled commit the
        # rest is dropped (it may or may not commit; a resume sends it
        # again); after a bad line, what went out before it is committed
        # and checkpointed.
        while flight:
            if isinstance(stopped, DumpFormatError):
                await settle()
            else:
                done = flight.popleft()[0]
                done.addErrback(lambda _: None)
                done.cancel()
        raise
    result["lines"] = number
    if keeper is not None:
        keeper.remove()
    return result


async def _commit_unit(
    http: Any,
    url: str,
    unit: _Unit,
    bounds: _BatchLimits,
    retries: int,
    token: Optional[str],
    clock: Any,
) -> Tuple[Dict[str, Any], _Unit]:
    """
    Commit C{unit}, retrying conflicts and 503s: C{({"loaded", "expired",
    "revision"}, unit)} (revision L{None} if every record had expired).
    Records whose expiry has passed are skipped; the others get the TTL
    left; the last live record of a key wins, as it would one after the
    other.
    """
    for attempt in range(retries + 1):
        if attempt:
            await deferLater(clock, pause_before(attempt), lambda: None)
        now = clock.seconds()
        latest: Dict[str, bytes] = {}
        live: List[Tuple[Record, Optional[float]]] = []
        for record, op in unit.items:
            ttl = None if record.expires is None else record.expires - now
            if ttl is not None and ttl <= 0:
                continue
            live.append((record, ttl))
            latest.pop(record.key, None)
            latest[record.key] = op if ttl is None else (
                op[:-1] + b',"ttl":' + repr(ttl).encode("ascii") + b"}")
        counts: Dict[str, Any] = {
            "loaded": len(live), "expired": len(unit.items) - len(live), "revision": None}
        if not live:
            return counts, unit
        ops = list(latest.values())
        try:
            if len(ops) == 1 and len(ops[0]) + _ENVELOPE_BYTES > bounds.body:
                # Too big for a batch body with its base64: a PUT takes the bytes.
                record, ttl = live[-1]
                answer = await client.put(http, url, record.key, record.value,
                                          content_type=record.content_type, ttl=ttl,
                                          token=token)
                counts["revision"] = answer.get("mod_revision")
            else:
                answer = await client.batch_encoded(
                    http, url, b'{"ops":[' + b",".join(ops) + b"]}", token=token
                )
                counts["revision"] = answer.get("revision")
        except client.KVClientError as error:
            if attempt < retries and _retryable(error):
                continue
            raise
        return counts, unit
    raise AssertionError("unreachable")  # pragma: no cover


def _retryable(error: client.KVClientError) -> bool:
    """A conflict with another writer, or a store briefly unavailable."""
    return isinstance(error, client.ConflictError) or error.status == 503

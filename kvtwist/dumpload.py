"""
C{kvtwist dump} and C{kvtwist load}: copy keys out of a kvcache as JSON
lines, and back in, with treq.

The format is one JSON object per line, one line per key, in key order:

    {"key": "flags/beta", "value": true, "content_type": "application/json", "expires": null}
    {"key": "logo", "value_base64": "iVBORw0K...", "content_type": "image/png",
     "expires": "2030-01-01T00:00:00.000Z"}

C{value} holds a value stored with a JSON content type, as JSON; every
other value is C{value_base64}. C{expires} is the key's expiry as the
server reports it (RFC 3339, UTC) or C{null}.

L{dump} reads the listing (C{GET /v1/kv/?values=1}) page by page,
following each page's cursor, so on a server that keeps history every page
is read at the first page's revision however much is written meanwhile:
what it writes is exactly the store at one revision, which it returns, and
it never fails because of writes. On a server without history (etcd, for
now) pages are read at their own revisions: L{dump} notes the first page's
and, if a later page was read at another (some commit happened in
between), throws away what it has and starts again, up to C{attempts}
times with a growing pause (at most L{MAX_PAUSE}); a store that never holds
still for a whole listing then fails the dump with L{client.ConflictError}
(C{revision-changed}) rather than a mixture.

By default a JSON value is written as JSON, so a dump is easy to read and
edit, and L{load} writes it back as compact JSON: equal as JSON, but not
byte for byte if it was stored with other spacing or spelling (C{1e3}
becomes C{1000.0}). With C{exact=True} every value is written as
C{value_base64}, the bytes exactly as stored: for JSON values that takes
one extra C{GET} per key, whose ETag must be the revision the listing gave
(else the store changed, and the attempt starts again). A JSON value that
strict JSON cannot hold (C{NaN}) is always fetched that way.

L{load} reads such lines and writes them in batches (C{POST /v1/batch},
one request and one atomic commit per batch): up to C{batch} keys, and no
more ops or bytes than the server takes in one request (its C{/v1/limits}:
C{max_body}, C{max_batch_ops}, C{max_keys_per_request}, and on etcd one
etcd transaction's ops and bytes). A value too big for any batch body is
written alone with a C{PUT}. C{concurrency} batches are in flight at once
while the next is read, and batches in flight never share a key. Each
batch is applied whole or not at all. Within a batch the last record of a
key wins, as it would one after the other. A key with an expiry gets the
TTL that is left of it; one that has already expired is skipped. Keys the
input does not name are left alone. Loading is idempotent (a key written
twice holds the same value), so a batch whose commit was cut off can
simply be sent again. A store that is briefly unavailable (503), or a
conflict, is retried, C{retries} times per batch.

Resuming: after each committed batch (in input order: a batch is
checkpointed once it and every batch before it have committed), L{load}
writes a checkpoint file
(atomically: written beside it, then renamed) with the number of input
lines done, a SHA-256 of those lines, and the server's URL. A later load
with the same checkpoint skips those lines, after checking that the input
starts with exactly the lines the checkpoint hashed and goes to the same
URL (else it refuses with L{CheckpointMismatch}; C{restart=True} starts
from the first line, which is always safe). A load that finishes removes
its checkpoint.

The C{kvtwist} command's glue is here too: L{add_dump_load_commands} adds
the two subcommands to its parser and L{COMMANDS} holds their handlers,
which L{kvtwist.cli} runs like its own commands.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime
from collections import deque
from typing import (
    Any, BinaryIO, Callable, Deque, Dict, List, Mapping, Optional, Set, TextIO, Tuple,
)

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from kvtwist import client
from kvtwist.files import check_directory, whole_file, write_whole
from kvtwist.limits import Limits

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_BATCH",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_RETRIES",
    "CheckpointMismatch",
    "DumpFormatError",
    "Record",
    "dump",
    "load",
    "parse_record",
    "record_line",
    "scan",
    "add_dump_load_commands",
    "COMMANDS",
    "INTERRUPTED",
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
#: Seconds each request of the commands may take without C{--timeout}.
DEFAULT_REQUEST_TIMEOUT = 60.0


class DumpFormatError(ValueError):
    """
    A line of a dump is not a record: not strict JSON, not an object, or
    without a usable C{key}, value, C{content_type} or C{expires}.

    @ivar line: the 1-based line number.
    """

    def __init__(self, line: int, detail: str) -> None:
        super().__init__("line %d: %s" % (line, detail))
        self.line = line


class CheckpointMismatch(ValueError):
    """
    A checkpoint does not belong to this load: a different input, or a
    different server. Start again with C{restart=True} (C{--restart}).
    """


# -- records ------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """
    One key of a dump.

    @ivar expires: when it expires, in seconds since the epoch, or L{None}.
    """

    key: str
    value: bytes
    content_type: str
    expires: Optional[float] = None


def _reject_constant(name: str) -> Any:
    raise ValueError("%s is not JSON" % (name,))


def _unique(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("the object repeats the key %r" % (key,))
        result[key] = value
    return result


# One decoder and one encoder for every line: json.loads and json.dumps
# with options build a new one per call, a tenth of a load's parsing time.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _strict_loads(text: str) -> Any:
    """JSON without NaN, Infinity or duplicate object keys."""
    return _DECODER.decode(text)


def _strict_dumps(value: Any) -> str:
    """
    Compact JSON; raises C{ValueError} for what strict JSON cannot hold
    (NaN, Infinity, lone surrogates).
    """
    text = _ENCODER.encode(value)
    text.encode("utf-8")  # UnicodeEncodeError (a ValueError) for lone surrogates
    return text


def _parse_time(text: str) -> float:
    """An RFC 3339 date-time (C{Z} or an offset required) as epoch seconds."""
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    return moment.timestamp()


def parse_record(line: bytes, number: int) -> Optional[Record]:
    """
    The record on one line of a dump (L{None} for a blank line, and for the
    header and end lines of a snapshot).

    Fields: C{key} (a non-empty string); exactly one of C{value} (JSON) and
    C{value_base64}; C{content_type} (default C{application/json} with
    C{value}, C{application/octet-stream} with C{value_base64});
    C{expires} (RFC 3339 or null, default null). Other fields are ignored.

    @param number: the line's number, for error messages.
    @raise DumpFormatError: if the line is not such a record.
    """
    if not line.strip():
        return None
    try:
        document = _strict_loads(line.decode("utf-8"))
    except RecursionError:
        raise DumpFormatError(number, "nested too deeply")
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError included
        raise DumpFormatError(number, "not strict JSON: %s" % (e,))
    if not isinstance(document, dict):
        raise DumpFormatError(number, "a record is a JSON object")
    if "key" not in document and (document.get("snapshot") == "kvtwist" or document.get("end") is True):
        # The header or end line of a snapshot (GET /v1/snapshot): its key
        # lines are records, so a snapshot loads like a dump.
        return None
    key = document.get("key")
    if not isinstance(key, str) or not key:
        raise DumpFormatError(number, "key must be a non-empty string")
    has_json = "value" in document
    has_b64 = "value_base64" in document
    if has_json == has_b64:
        raise DumpFormatError(number, "a record has exactly one of value and value_base64")
    if has_json:
        try:
            value = _strict_dumps(document["value"]).encode("utf-8")
        except ValueError as e:
            raise DumpFormatError(number, "the value is not strict JSON: %s" % (e,))
        default_type = "application/json"
    else:
        try:
            value = client.decode_value_base64(document["value_base64"])
        except ValueError as e:
            raise DumpFormatError(number, str(e))
        default_type = client.DEFAULT_CONTENT_TYPE
    content_type = document.get("content_type", default_type)
    if (
        not isinstance(content_type, str)
        or not content_type.strip()
        # Printable ASCII: 0x20 to 0x7E.
        or not (content_type.isascii() and content_type.isprintable())
    ):
        raise DumpFormatError(number, "content_type must be non-empty printable ASCII")
    expires = document.get("expires")
    if expires is not None:
        if not isinstance(expires, str):
            raise DumpFormatError(number, "expires must be an RFC 3339 date-time or null")
        try:
            expires = _parse_time(expires)
        except (ValueError, OverflowError):
            raise DumpFormatError(number, "expires is not an RFC 3339 date-time: %r" % (expires,))
    return Record(key, value, content_type, expires)


def record_line(item: Mapping[str, Any], exact_value: Optional[bytes] = None) -> bytes:
    """
    The dump line (with its newline) of a listing item with values.

    @param exact_value: the value's bytes as stored, to write as
        C{value_base64} whatever the item carries.
    @raise ValueError: if the item's inline value cannot be written as
        strict JSON (pass C{exact_value} then).
    """
    record: Dict[str, Any] = {"key": item["key"]}
    if exact_value is not None:
        record["value_base64"] = base64.b64encode(exact_value).decode("ascii")
    elif "value" in item:
        _strict_dumps(item["value"])
        record["value"] = item["value"]
    else:
        record["value_base64"] = item["value_base64"]
    record["content_type"] = item.get("content_type", client.DEFAULT_CONTENT_TYPE)
    record["expires"] = item.get("expires")
    return (_strict_dumps(record) + "\n").encode("utf-8")


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
        await pages.aclose()  # type: ignore[attr-defined]
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
    if state.get("url") != url:
        raise CheckpointMismatch(
            "the checkpoint %s is for a load into %s, not %s: pass --restart "
            "(restart=True) to load everything again (loads are idempotent)"
            % (checkpoint.path, state.get("url"), url)  # type: ignore[union-attr]
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
            % (done, checkpoint.path)  # type: ignore[union-attr]
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
    return _strict_dumps(
        {
            "op": "set",
            "key": record.key,
            "value_base64": base64.b64encode(record.value).decode("ascii"),
            "content_type": record.content_type,
        }
    ).encode("utf-8")


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


# -- the kvtwist command's glue ------------------------------------------------

DUMP_HELP = "write the keys (at one revision) as JSON lines to FILE or stdout"
LOAD_HELP = "write JSON lines from FILE or stdin back, in atomic batches (resumable)"

DUMP_EPILOG = """\
Each line: {"key", "value" (JSON types) or "value_base64", "content_type",
"expires"}. The keys are those of one revision: a listing that saw the store
change is read again (--attempts). To FILE the dump is written to a temporary
file (mode 0600) that replaces FILE only once complete; SIGINT or SIGTERM
removes it and leaves FILE as it was (exit 130 or 143).
With --exact every value is written as base64, exactly the stored bytes;
otherwise JSON values are written as JSON (and loaded back as compact JSON).

"""

LOAD_EPILOG = """\
Records are written --batch keys per request (POST /v1/batch, fewer if the
server's /v1/limits say so), each batch all or nothing, --concurrency
batches in flight; a key whose expiry has passed is skipped, others get the
TTL that is left.
Keys not in the input are left alone; loading the same input twice gives the
same keys and values. After each batch a checkpoint (FILE.checkpoint, or
--checkpoint PATH) records how far the load got; if the load fails, run the
same command again to resume there (it checks that the input and the URL
are the same; --restart starts over). A finished load removes it.
The whole input is checked before anything is sent (a bad line: exit 2).
A progress bar goes to stderr when it is a terminal (--progress to force).
SIGINT or SIGTERM stops it after removing its temporary files, keeping the
checkpoint: exit 130 or 143, "interrupted; run again to resume".

"""


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of C{low} or more."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("not an integer: %r" % (text,))
        if value < low:
            raise argparse.ArgumentTypeError("must be %d or more" % (low,))
        return value

    return parse


_positive_int = _int_at_least(1)
_count = _int_at_least(0)


def add_dump_load_commands(
    subparsers: Any, command: Optional[Callable[..., argparse.ArgumentParser]] = None
) -> None:
    """
    Add C{dump} and C{load} to the C{kvtwist} command's subparsers.

    @param subparsers: the result of C{parser.add_subparsers()}.
    @param command: the CLI's own subcommand factory, C{command(name, help,
        epilog)} returning the new subparser (so the subcommands get its
        hidden global options); plain C{subparsers.add_parser} without it.
    """

    def make(name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
        if command is not None:
            return command(name, help_text, epilog)
        return subparsers.add_parser(
            name, help=help_text, description=help_text, epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    sub = make("dump", DUMP_HELP, DUMP_EPILOG)
    sub.add_argument("file", metavar="FILE", nargs="?", default="-",
                     help="where to write; '-' or nothing: stdout")
    sub.add_argument("--prefix", default="", help="only keys that start with PREFIX")
    sub.add_argument("--exact", action="store_true",
                     help="write every value as base64, byte for byte")
    sub.add_argument("--page-size", type=_positive_int, default=DEFAULT_PAGE_SIZE,
                     metavar="N", help="keys per listing request (default: %(default)s)")
    sub.add_argument("--attempts", type=_positive_int, default=DEFAULT_ATTEMPTS, metavar="N",
                     help="listings to try while the store keeps changing (default: %(default)s)")

    sub = make("load", LOAD_HELP, LOAD_EPILOG)
    sub.add_argument("file", metavar="FILE", nargs="?", default="-",
                     help="JSON lines from `kvtwist dump`; '-' or nothing: stdin")
    sub.add_argument("--batch", type=_positive_int, default=DEFAULT_BATCH, metavar="N",
                     help="keys per batch request, at most (default: %(default)s)")
    sub.add_argument("--checkpoint", metavar="PATH",
                     help="the resume file (default: FILE.checkpoint; none for stdin)")
    sub.add_argument("--no-checkpoint", action="store_true",
                     help="keep no checkpoint (the load cannot resume)")
    sub.add_argument("--restart", action="store_true",
                     help="ignore an existing checkpoint and start at the first line")
    sub.add_argument("--retries", type=_count, default=DEFAULT_RETRIES, metavar="N",
                     help="retries of a batch after a conflict or 503 (default: %(default)s)")
    sub.add_argument("--concurrency", type=_positive_int, default=DEFAULT_CONCURRENCY,
                     metavar="N", help="batches in flight at once (default: %(default)s)")
    progress = sub.add_mutually_exclusive_group()
    progress.add_argument("--progress", action="store_true", default=None,
                          help="always show the progress bar")
    progress.add_argument("--no-progress", action="store_false", dest="progress",
                          help="never show it")


def _streams(inv: Any) -> Tuple[TextIO, TextIO]:
    """The invocation's output streams (C{sys}'s if it has none)."""
    out = getattr(inv, "out", None)
    err = getattr(inv, "err", None)
    return out if out is not None else sys.stdout, err if err is not None else sys.stderr


class _Timed:
    """A treq-like client whose every request gives up after C{timeout} s."""

    def __init__(self, http: Any, timeout: float, clock: Any) -> None:
        self._http = http
        self._timeout = timeout
        self._clock = clock

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred:
        return client.with_timeout(
            self._http.request(method, url, **kwargs), self._timeout, self._clock
        )


def _reactor(inv: Any) -> Any:
    """
    The invocation's reactor (the clock of TTLs, pauses and timeouts), else
    the global one: C{kvtwist.cli}'s invocations do not carry theirs.
    """
    reactor = getattr(inv, "reactor", None)
    if reactor is None:
        from twisted.internet import reactor
    return reactor


def _client_for(inv: Any) -> Any:
    """
    The invocation's client, with C{--timeout} (default
    L{DEFAULT_REQUEST_TIMEOUT}; 0: none) applied to each request: a dump or
    load may run much longer than any one request should, so the command
    as a whole has no timeout.
    """
    timeout = getattr(inv.args, "timeout", None)
    if timeout is None:
        timeout = DEFAULT_REQUEST_TIMEOUT
    return _Timed(inv.http, timeout, _reactor(inv)) if timeout else inv.http


class _TextSink:
    """A binary sink over a text stream (a test's StringIO)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, data: bytes) -> int:
        self._stream.write(data.decode("utf-8"))
        return len(data)


def start_dump(inv: Any) -> Deferred:
    """
    The C{dump} command: checks at once (C{ValueError} for a FILE whose
    directory does not exist), then dumps.
    """
    args = inv.args
    out, _ = _streams(inv)
    http = _client_for(inv)
    options = dict(prefix=args.prefix, page_size=args.page_size, attempts=args.attempts,
                   exact=args.exact, token=inv.token, clock=_reactor(inv))
    if args.file == "-":
        buffer = getattr(out, "buffer", None)
        sink: Any = buffer if buffer is not None else _TextSink(out)
        if buffer is not None:
            out.flush()
        d = dump(http, inv.url, sink, **options)

        def written(result: Dict[str, Any]) -> Dict[str, Any]:
            if buffer is not None:
                buffer.flush()
            return dict(result, file=None)

        return d.addCallback(written)
    check_directory(args.file)
    return Deferred.fromCoroutine(_dump_to_file(http, inv.url, args.file, options))


async def _dump_to_file(http: Any, url: str, path: str, options: Dict[str, Any]) -> Dict[str, Any]:
    result = await write_whole(path, lambda f: dump(http, url, f, **options))
    return dict(result, file=path)


def show_dump(out: TextIO, err: TextIO, output: str, result: Dict[str, Any]) -> None:
    """Report a dump: on stderr when the dump itself went to stdout."""
    if result.get("file") is None:
        err.write("kvtwist: dumped %d keys at revision %s\n" % (result["keys"], result["revision"]))
    elif output == "json":
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
    else:
        out.write("dumped %d keys at revision %s to %s\n"
                  % (result["keys"], result["revision"], result["file"]))


def _open_source(inv: Any) -> Tuple[BinaryIO, Optional[str]]:
    """
    The load's input as a seekable binary stream, and its path (L{None}
    for stdin, which is copied to a temporary file first: the input is
    checked whole before anything is sent).

    @raise ValueError: if it cannot be read.
    """
    path = inv.args.file
    if path != "-":
        try:
            return open(path, "rb"), path
        except OSError as e:
            raise ValueError("cannot read %s: %s" % (path, e.strerror or e))
    stream = inv.stdin if inv.stdin is not None else getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise ValueError("there is no stdin to read")
    copy = tempfile.TemporaryFile()
    try:
        while True:
            chunk = stream.read(1024 * 1024)
            if not chunk:
                break
            copy.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
    except OSError as e:
        copy.close()
        raise ValueError("cannot read stdin: %s" % (e.strerror or e,))
    copy.seek(0)
    return copy, None  # type: ignore[return-value]


def start_load(inv: Any) -> Deferred:
    """
    The C{load} command: reads and checks the whole input and the
    checkpoint at once (C{ValueError}s: bad lines, a checkpoint for another
    input), then loads with a progress bar on stderr.
    """
    from tqdm import tqdm

    args = inv.args
    _, err = _streams(inv)
    source, path = _open_source(inv)
    try:
        counts = scan(source)
        if args.no_checkpoint:
            checkpoint = None
        elif args.checkpoint is not None:
            checkpoint = args.checkpoint
        else:
            checkpoint = None if path is None else path + ".checkpoint"
        show = args.progress
        if show is None:
            show = bool(getattr(err, "isatty", lambda: False)())
        bar = tqdm(total=counts["records"], unit="key", desc="load", file=err,
                   disable=not show, dynamic_ncols=True)
        try:
            d = load(_client_for(inv), inv.url, source, batch=args.batch,
                     checkpoint=checkpoint, restart=args.restart, retries=args.retries,
                     concurrency=args.concurrency, token=inv.token, clock=_reactor(inv), on_progress=bar.update)
        except BaseException:
            bar.close()
            raise
    except BaseException:
        source.close()
        raise

    def finished(result: Any) -> Any:
        bar.close()
        source.close()
        return result

    return d.addBoth(finished)


def show_load(out: TextIO, err: TextIO, output: str, result: Dict[str, Any]) -> None:
    """Report a load on stdout."""
    if output == "json":
        out.write(json.dumps(result) + "\n")
        return
    line = "loaded %d keys in %d transactions" % (result["loaded"], result["transactions"])
    if result["revision"] is not None:
        line += " (revision %s)" % (result["revision"],)
    if result["resumed_at_line"]:
        line += ", resumed after line %d" % (result["resumed_at_line"],)
    if result["expired"]:
        line += ", %d expired keys skipped" % (result["expired"],)
    out.write(line + "\n")


def _dump_interrupted(args: argparse.Namespace) -> str:
    if args.file == "-":
        return "nothing was written"
    return "%s was left as it was" % (args.file,)


def _load_interrupted(args: argparse.Namespace) -> str:
    if args.no_checkpoint or (args.file == "-" and args.checkpoint is None):
        return ("the batches committed so far stay; run it again to load everything "
                "(loading is idempotent)")
    return "run again to resume"


#: command -> what an interrupted run says it left (after "interrupted; ").
INTERRUPTED: Dict[str, Callable[[argparse.Namespace], str]] = {
    "dump": _dump_interrupted,
    "load": _load_interrupted,
}

#: command -> (start, show), the shape of C{kvtwist.cli}'s command table.
COMMANDS: Dict[str, Tuple[Callable[[Any], Deferred], Callable[..., None]]] = {
    "dump": (start_dump, show_dump),
    "load": (start_load, show_load),
}

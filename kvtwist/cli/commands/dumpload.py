# -*- test-case-name: tests.unit.test_dumpload -*-
"""
C{kvtwist dump} and C{kvtwist load}: the command glue of L{kvtwist.dumpload}
(the engine that copies keys out of a kvcache as JSON lines, and back in).

The whole command has no timeout: a dump or a load may run much longer
than any one request should, so C{--timeout} (default 60 s; 0: none)
bounds each request instead. A signal stops either after its clean-up: a
dump to FILE removes its temporary file, a load keeps its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any, BinaryIO, Dict, Optional, TextIO, Tuple

from twisted.internet.defer import Deferred

from kvtwist import client
from kvtwist.cli.invocation import Command, CommandFactory, Invocation, Requester, untimed
from kvtwist.cli.parser import int_at_least
from kvtwist.dumpload import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BATCH,
    DEFAULT_CONCURRENCY,
    DEFAULT_PAGE_SIZE,
    DEFAULT_RETRIES,
    dump,
    load,
    scan,
)
from kvtwist.files import check_directory, write_whole

__all__ = ["COMMANDS", "DEFAULT_REQUEST_TIMEOUT", "add_commands"]

#: Seconds each request of the commands may take without C{--timeout}.
DEFAULT_REQUEST_TIMEOUT = 60.0

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


_positive = int_at_least(1)
_count = int_at_least(0)


def add_commands(command: CommandFactory) -> None:
    """Add C{dump} and C{load} through the parser's subcommand factory."""
    sub = command("dump", DUMP_HELP, DUMP_EPILOG)
    sub.add_argument("file", metavar="FILE", nargs="?", default="-",
                     help="where to write; '-' or nothing: stdout")
    sub.add_argument("--prefix", default="", help="only keys that start with PREFIX")
    sub.add_argument("--exact", action="store_true",
                     help="write every value as base64, byte for byte")
    sub.add_argument("--page-size", type=_positive, default=DEFAULT_PAGE_SIZE,
                     metavar="N", help="keys per listing request (default: %(default)s)")
    sub.add_argument("--attempts", type=_positive, default=DEFAULT_ATTEMPTS, metavar="N",
                     help="listings to try while the store keeps changing (default: %(default)s)")

    sub = command("load", LOAD_HELP, LOAD_EPILOG)
    sub.add_argument("file", metavar="FILE", nargs="?", default="-",
                     help="JSON lines from `kvtwist dump`; '-' or nothing: stdin")
    sub.add_argument("--batch", type=_positive, default=DEFAULT_BATCH, metavar="N",
                     help="keys per batch request, at most (default: %(default)s)")
    sub.add_argument("--checkpoint", metavar="PATH",
                     help="the resume file (default: FILE.checkpoint; none for stdin)")
    sub.add_argument("--no-checkpoint", action="store_true",
                     help="keep no checkpoint (the load cannot resume)")
    sub.add_argument("--restart", action="store_true",
                     help="ignore an existing checkpoint and start at the first line")
    sub.add_argument("--retries", type=_count, default=DEFAULT_RETRIES, metavar="N",
                     help="retries of a batch after a conflict or 503 (default: %(default)s)")
    sub.add_argument("--concurrency", type=_positive, default=DEFAULT_CONCURRENCY,
                     metavar="N", help="batches in flight at once (default: %(default)s)")
    progress = sub.add_mutually_exclusive_group()
    progress.add_argument("--progress", action="store_true", default=None,
                          help="always show the progress bar")
    progress.add_argument("--no-progress", action="store_false", dest="progress",
                          help="never show it")


class _Timed:
    """A treq-like client whose every request gives up after C{timeout} s."""

    def __init__(self, http: Requester, timeout: float, clock: Any) -> None:
        self._http = http
        self._timeout = timeout
        self._clock = clock

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred:
        return client.with_timeout(
            self._http.request(method, url, **kwargs), self._timeout, self._clock
        )


def _client_for(inv: Invocation) -> Requester:
    """
    The invocation's client, with C{--timeout} (default
    L{DEFAULT_REQUEST_TIMEOUT}; 0: none) applied to each request.
    """
    timeout = inv.given_timeout
    if timeout is None:
        timeout = DEFAULT_REQUEST_TIMEOUT
    return _Timed(inv.http, timeout, inv.reactor) if timeout else inv.http


class _TextSink:
    """A binary sink over a text stream (a test's StringIO)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, data: bytes) -> int:
        self._stream.write(data.decode("utf-8"))
        return len(data)


def start_dump(inv: Invocation) -> Deferred:
    """
    The C{dump} command: checks at once (C{ValueError} for a FILE whose
    directory does not exist), then dumps.
    """
    args = inv.args
    out = inv.out
    http = _client_for(inv)
    options = dict(prefix=args.prefix, page_size=args.page_size, attempts=args.attempts,
                   exact=args.exact, token=inv.token, clock=inv.reactor)
    if args.file == "-":
        # A real stdout takes the bytes through its buffer; a test's
        # StringIO has none.
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


def _open_source(inv: Invocation) -> Tuple[BinaryIO, Optional[str]]:
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
    stream = inv.stdin_stream()
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
    return copy, None


def start_load(inv: Invocation) -> Deferred:
    """
    The C{load} command: reads and checks the whole input and the
    checkpoint at once (C{ValueError}s: bad lines, a checkpoint for another
    input), then loads with a progress bar on stderr.
    """
    from tqdm import tqdm

    args = inv.args
    err = inv.err
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
            show = err.isatty()
        bar = tqdm(total=counts["records"], unit="key", desc="load", file=err,
                   disable=not show, dynamic_ncols=True)
        try:
            d = load(_client_for(inv), inv.url, source, batch=args.batch,
                     checkpoint=checkpoint, restart=args.restart, retries=args.retries,
                     concurrency=args.concurrency, token=inv.token, clock=inv.reactor,
                     on_progress=bar.update)
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


COMMANDS: Dict[str, Command] = {
    "dump": Command(start_dump, show_dump, untimed, interrupted_note=_dump_interrupted),
    "load": Command(start_load, show_load, untimed, interrupted_note=_load_interrupted),
}

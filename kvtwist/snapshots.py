"""
C{kvtwist snapshot save FILE}: take a consistent snapshot of a running
kvcache (L{kvtwist.client.snapshot.save_snapshot}) into FILE, whole or not
at all (L{kvtwist.files.write_whole}). C{kvtwist snapshot restore FILE
--data DIR}: build a new data directory from one, offline, keeping every
key's revisions, version and expiry (L{kvtwist.store.restore}), so a
server started on it answers the same values and ETags.

Wired into C{kvtwist} the way L{kvtwist.dumpload}'s commands are: a
function that adds the subcommand, and a table of start and show functions.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterator, Optional, TextIO, Tuple

from twisted.internet.defer import Deferred, succeed

from kvtwist import client
from kvtwist.errors import KVError
from kvtwist.files import check_directory, write_whole
from kvtwist.model import Entry
from kvtwist.wire import decode_base64

SNAPSHOT_HELP = "take a consistent snapshot of every key at one revision"
SNAPSHOT_EPILOG = (
    "kvtwist snapshot save FILE streams GET /v1/snapshot into FILE: a header\n"
    "line with the revision, one JSON line per key (metadata, expiry, value\n"
    "as base64), and an end line. It reads every key at the revision the\n"
    "snapshot started at, from the server's history, so it finishes and is\n"
    "one picture while writes go on. FILE appears only once the snapshot is\n"
    "whole (a temporary file beside it until then). Exit 0 on success; 1 if\n"
    "the server refused (501: its store keeps no history) or the stream was\n"
    "cut short; 3 if the server cannot be reached.\n\n"
    "kvtwist snapshot restore FILE --data DIR builds a new data directory DIR\n"
    "(it must not exist, or be empty) from a snapshot, offline: every key with\n"
    "its revisions, version and expiry, the store at the snapshot's revision,\n"
    "so `twistd kvcache --data DIR` answers the same values and ETags. Exit 2\n"
    "if FILE is not a whole snapshot or DIR is not empty.\n\n"
    "examples:\n"
    "  kvtwist snapshot save backup.jsonl\n"
    "  kvtwist snapshot save app.jsonl --prefix app/\n"
    "  kvtwist snapshot restore backup.jsonl --data ./restored\n"
)


def add_snapshot_commands(
    subparsers: Any, command: Optional[Callable[..., argparse.ArgumentParser]] = None
) -> None:
    """
    Add C{snapshot} to the C{kvtwist} command's subparsers (C{command} as
    for L{kvtwist.dumpload.add_dump_load_commands}).
    """
    if command is not None:
        sub = command("snapshot", SNAPSHOT_HELP, SNAPSHOT_EPILOG)
    else:
        sub = subparsers.add_parser(
            "snapshot", help=SNAPSHOT_HELP, description=SNAPSHOT_HELP, epilog=SNAPSHOT_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    sub.add_argument("action", choices=["save", "restore"],
                     help="save: take one into FILE; restore: build --data DIR from FILE")
    sub.add_argument("file", metavar="FILE", help="the snapshot file")
    sub.add_argument("--prefix", default="", help="save: only keys that start with PREFIX")
    sub.add_argument("--data", metavar="DIR", help="restore: the new data directory")


def _timestamp(text: Any) -> Optional[float]:
    """An expiry as the server writes it (RFC 3339, UTC, milliseconds) as epoch seconds."""
    if text is None:
        return None
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _entry(line: bytes) -> Entry:
    document = json.loads(line)
    return Entry(
        document["key"],
        decode_base64(document["value_base64"]),
        document["content_type"],
        document["create_revision"],
        document["mod_revision"],
        document["version"],
        _timestamp(document["expires"]),
    )


def read_snapshot(path: str) -> Tuple[int, Iterator[Entry]]:
    """
    The revision of the snapshot in file C{path} and its entries, read as
    they are consumed; the last one is followed by a check of the end line.

    @raise ValueError: (at once, or from the iteration) naming the line, if
        the file is not a whole kvtwist snapshot.
    """
    try:
        source = open(path, "rb")
    except OSError as e:
        raise ValueError("cannot read %s: %s" % (path, e.strerror or e))
    try:
        header = json.loads(source.readline() or b"null")
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("snapshot") != "kvtwist" or header.get("format") != 1:
        source.close()
        raise ValueError("%s is not a kvtwist snapshot (format 1)" % (path,))
    revision = header["revision"]

    def entries() -> Iterator[Entry]:
        with source:
            count = 0
            for number, line in enumerate(source, 2):
                try:
                    document = json.loads(line)
                    if isinstance(document, dict) and document.get("end") is True:
                        if document.get("keys") != count or document.get("revision") != revision:
                            raise ValueError("the end line does not match the snapshot")
                        return
                    count += 1
                    yield _entry(line)
                except (ValueError, KeyError, TypeError) as e:  # bad base64 included
                    raise ValueError("%s line %d: %s" % (path, number, e))
            raise ValueError("%s has no end line: the snapshot was cut short" % (path,))

    return revision, entries()


def restore(path: str, directory: str) -> Dict[str, Any]:
    """Build data directory C{directory} from snapshot file C{path} (offline)."""
    from kvtwist.store.restore import restore_data_dir

    revision, entries = read_snapshot(path)
    try:
        keys = restore_data_dir(directory, revision, entries)
    except (OSError, KVError) as e:
        # A directory that cannot be made, a full disk: the usage is fine,
        # the place is not; said in one line like a bad FILE.
        raise ValueError("cannot restore into %s: %s" % (directory, e))
    return {"revision": revision, "keys": keys, "data": directory}


def start_snapshot(inv: Any) -> Deferred:
    """
    The C{snapshot} command. C{save}: checks FILE's directory at once
    (C{ValueError}), then streams the snapshot into it; the one request
    streams for as long as the snapshot takes: no timeout applies to it.
    C{restore}: builds C{--data} DIR from FILE, offline, before returning
    (C{ValueError} for a bad FILE or a DIR that is not empty).
    """
    args = inv.args
    if args.action == "restore":
        if not args.data:
            raise ValueError("snapshot restore needs --data DIR (a new data directory)")
        return succeed(restore(args.file, args.data))
    check_directory(args.file)

    async def save() -> Dict[str, Any]:
        result = await write_whole(
            args.file,
            lambda f: client.save_snapshot(inv.http, inv.url, f, args.prefix, token=inv.token),
        )
        return dict(result, file=args.file)

    return Deferred.fromCoroutine(save())


def show_snapshot(out: TextIO, err: TextIO, output: str, result: Dict[str, Any]) -> None:
    """Report a snapshot saved or restored on stdout."""
    if output == "json":
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
    elif "data" in result:
        out.write("restored %d keys at revision %s into %s\n"
                  % (result["keys"], result["revision"], result["data"]))
    else:
        out.write("saved %d keys at revision %s to %s\n"
                  % (result["keys"], result["revision"], result["file"]))


#: command -> (start, show), the shape of C{kvtwist.cli}'s command table.
COMMANDS: Dict[str, Tuple[Callable[[Any], Deferred], Callable[..., None]]] = {
    "snapshot": (start_snapshot, show_snapshot),
}

# -*- test-case-name: tests.unit.test_snapshot -*-
"""
C{kvtwist snapshot save FILE}: take a consistent snapshot of a running
kvcache (L{kvtwist.client.snapshot.save_snapshot}) into FILE, whole or not
at all (L{kvtwist.files.write_whole}). C{kvtwist snapshot restore FILE
--data DIR}: build a new data directory from one, offline
(L{kvtwist.snapshots.restore}).

No timeout applies by default: the one request streams for as long as
the store is large.
"""

from __future__ import annotations

import json
from typing import Any, Dict, TextIO

from twisted.internet.defer import Deferred, succeed

from kvtwist import client
from kvtwist.cli.invocation import Command, CommandFactory, Invocation, untimed
from kvtwist.files import check_directory, write_whole
from kvtwist.snapshots import restore

__all__ = ["COMMANDS", "add_commands"]

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


def add_commands(command: CommandFactory) -> None:
    """Add C{snapshot} through the parser's subcommand factory."""
    sub = command("snapshot", SNAPSHOT_HELP, SNAPSHOT_EPILOG)
    sub.add_argument("action", choices=["save", "restore"],
                     help="save: take one into FILE; restore: build --data DIR from FILE")
    sub.add_argument("file", metavar="FILE", help="the snapshot file")
    sub.add_argument("--prefix", default="", help="save: only keys that start with PREFIX")
    sub.add_argument("--data", metavar="DIR", help="restore: the new data directory")


def start_snapshot(inv: Invocation) -> Deferred:
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


COMMANDS: Dict[str, Command] = {
    "snapshot": Command(start_snapshot, show_snapshot, untimed),
}

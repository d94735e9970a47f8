"""
C{kvtwist snapshot save FILE}: take a consistent snapshot of a running
kvcache (L{kvtwist.client.snapshot.save_snapshot}) into FILE, whole or not
at all (L{kvtwist.files.write_whole}).

Wired into C{kvtwist} the way L{kvtwist.dumpload}'s commands are: a
function that adds the subcommand, and a table of start and show functions.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Dict, Optional, TextIO, Tuple

from twisted.internet.defer import Deferred

from kvtwist import client
from kvtwist.files import check_directory, write_whole

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
    "examples:\n"
    "  kvtwist snapshot save backup.jsonl\n"
    "  kvtwist snapshot save app.jsonl --prefix app/\n"
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
    sub.add_argument("action", choices=["save"], help="save: take one into FILE")
    sub.add_argument("file", metavar="FILE", help="where to write it")
    sub.add_argument("--prefix", default="", help="only keys that start with PREFIX")


def start_snapshot(inv: Any) -> Deferred:
    """
    The C{snapshot save} command: checks FILE's directory at once
    (C{ValueError}), then streams the snapshot into it. The one request
    streams for as long as the snapshot takes: no timeout applies to it.
    """
    args = inv.args
    check_directory(args.file)

    async def save() -> Dict[str, Any]:
        result = await write_whole(
            args.file,
            lambda f: client.save_snapshot(inv.http, inv.url, f, args.prefix, token=inv.token),
        )
        return dict(result, file=args.file)

    return Deferred.fromCoroutine(save())


def show_snapshot(out: TextIO, err: TextIO, output: str, result: Dict[str, Any]) -> None:
    """Report a snapshot on stdout."""
    if output == "json":
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
    else:
        out.write("saved %d keys at revision %s to %s\n"
                  % (result["keys"], result["revision"], result["file"]))


#: command -> (start, show), the shape of C{kvtwist.cli}'s command table.
COMMANDS: Dict[str, Tuple[Callable[[Any], Deferred], Callable[..., None]]] = {
    "snapshot": (start_snapshot, show_snapshot),
}

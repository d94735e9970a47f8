# -*- test-case-name: tests.unit.test_cli_watch -*-
"""
C{kvtwist watch} and C{kvtwist wait}: follow the changes under a prefix
as they are committed, or long-poll one key until it changes.

C{watch} prints each event as it arrives and runs until interrupted (a
signal is its normal end, exit 0) or for C{--timeout} seconds. It resumes
by itself after a dropped connection (with C{Last-Event-ID}: nothing
missed, nothing repeated; see L{kvtwist.client.watch}) and says so on
stderr. C{wait}'s default bound is its wait plus the server's jitter plus
a margin.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Optional, TextIO, Tuple

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from kvtwist import client
from kvtwist.cli.connection import describe_connection_error
from kvtwist.cli.invocation import (
    Command,
    CommandFactory,
    Invocation,
    check_text,
    show_nothing,
    untimed,
)
from kvtwist.cli.output import has_value, print_json, readable, text_value, write_bytes
from kvtwist.cli.parser import revision_number, wait_seconds

__all__ = ["COMMANDS", "DEFAULT_WAIT", "add_commands"]

#: A long-poll's wait when C{--wait} is not given: the server's default.
DEFAULT_WAIT = 60.0
#: How much longer than its wait C{wait} gives the server by default:
#: the server adds up to 1/16 of the wait as jitter, then the network.
_WAIT_MARGIN = 10.0


def add_commands(command: CommandFactory) -> None:
    """Add C{watch} and C{wait} through the parser's subcommand factory."""
    sub = command(
        "watch", "print each change to keys that start with PREFIX, as it happens",
        "One line per event until interrupted (or for --timeout seconds): JSON\n"
        "{revision, kind, key, ...}, or '<revision> <kind> <key>' with -o text.\n"
        "A dropped connection is resumed where it stopped, without gaps or\n"
        "repeats; exit 1 if the server's history no longer reaches back that\n"
        "far (list the keys again, then watch --after their revision).\n\n",
    )
    sub.add_argument("prefix", metavar="PREFIX", nargs="?", default="")
    sub.add_argument("--after", metavar="REV", type=revision_number,
                     help="first replay the changes after revision REV")
    sub.add_argument("--values", action="store_true",
                     help="include small values in the events")

    sub = command(
        "wait", "wait until KEY changes after revision N, then print it (long-poll)",
        "Prints what cat prints (JSON adds \"found\": true), or {\"key\", \"found\":\n"
        "false} when KEY does not exist. At the end of the wait the unchanged\n"
        "state is printed: compare its mod_revision with N.\n\n",
    )
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("--index", metavar="N", type=revision_number, required=True,
                     help="the revision to wait past (0: wait for KEY to exist)")
    sub.add_argument("--wait", metavar="SECONDS", type=wait_seconds,
                     help="hold at most this long (default: the server's, 60)")


def _show_event(out: TextIO, output: str, event: client.WatchEvent) -> None:
    item = event.as_item()
    if output == "json":
        print_json(out, readable(item))
    elif has_value(item):
        out.write("%d %s %s\t%s\n" % (event.revision, event.kind, event.key, text_value(item)))
    else:
        out.write("%d %s %s\n" % (event.revision, event.kind, event.key))
    # Each line as it happens, also into a pipe (block-buffered otherwise).
    out.flush()


async def _follow(inv: Invocation, events: client.Watch) -> None:
    """Print every event of C{events} until it ends, fails, or C{inv.duration} passes."""
    stop = None
    if inv.duration:
        stop = inv.reactor.callLater(inv.duration, events.close)
    try:
        async for event in events:
            _show_event(inv.out, inv.output, event)
    finally:
        if stop is not None and stop.active():
            stop.cancel()
        # Also when cancelled or failing: no connection outlives the command.
        await events.close()


def _start_watch(inv: Invocation) -> Deferred:
    args = inv.args
    events: List[client.Watch] = []

    def retrying(failure: Optional[Failure], delay: float) -> None:
        # A watch resumes by itself; say so on stderr, so that a server that
        # stays away is not a silent hang.
        if failure is None:
            reason = "the server ended the event stream"
        elif isinstance(failure.value, client.KVClientError):
            reason = "the event stream was refused: %s" % (failure.value,)
        else:
            reason = "the event stream from %s failed: %s" % (
                inv.url, describe_connection_error(failure.value))
        where = events[0].last_revision if events else None
        inv.err.write("kvtwist: %s; resuming%s in %.1f s\n" % (
            reason, "" if where is None else " after revision %d" % (where,), delay))

    events.append(client.watch(
        inv.http, inv.url, check_text(args.prefix, "PREFIX"), after=args.after,
        values=args.values, token=inv.token, clock=inv.reactor, on_retry=retrying,
    ))
    return Deferred.fromCoroutine(_follow(inv, events[0]))


def _start_wait(inv: Invocation) -> Deferred:
    args = inv.args
    key = check_text(args.key, "KEY")
    d = client.wait_for(inv.http, inv.url, key, args.index, wait=args.wait, token=inv.token)
    return d.addCallback(lambda entry: (key, entry))


def _show_waited(
    out: TextIO, err: TextIO, output: str, result: Tuple[str, Optional[client.KeyValue]]
) -> None:
    key, entry = result
    if entry is None:
        if output == "json":
            print_json(out, {"key": key, "found": False})
        else:
            err.write("kvtwist: %s does not exist\n" % (json.dumps(key, ensure_ascii=False),))
        return
    if output == "text":
        write_bytes(out, entry.value)
        return
    item: Dict[str, Any] = {"key": key, "found": True}
    item.update(readable(entry.as_item()))
    item["revision"] = entry.revision
    print_json(out, item)


def _wait_timeout(args: argparse.Namespace) -> float:
    """C{wait}'s bound without C{--timeout}: its wait, the jitter, a margin."""
    wait = DEFAULT_WAIT if args.wait is None else args.wait
    return wait * 17 / 16 + _WAIT_MARGIN


COMMANDS: Dict[str, Command] = {
    # watch runs until interrupted unless --timeout says how long; ^C is
    # its normal end.
    "watch": Command(_start_watch, show_nothing, untimed, times_itself=True,
                     ended_by_signal=True),
    "wait": Command(_start_wait, _show_waited, _wait_timeout),
}

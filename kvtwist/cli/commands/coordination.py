# -*- test-case-name: tests.unit.test_cli_coordination -*-
"""
The C{kvtwist} subcommands for leases, locks and elections:

    kvtwist lease grant TTL | keepalive ID | revoke ID | show ID
    kvtwist lock NAME [--ttl S] [--grace S] -- CMD [ARG ...]
    kvtwist elect NAME VALUE [--ttl S]

C{lock} runs CMD while holding the lock NAME (a L{kvtwist.client.lock.Lock})
and exits with CMD's exit code (128 + N when a signal N ended it). CMD gets
C{KVTWIST_LOCK_KEY} and C{KVTWIST_FENCING_REVISION} in its environment, to
fence what it writes. The lock is released as soon as CMD ends. If the
lease is lost while CMD runs (the server unreachable for a ttl), CMD gets
SIGTERM, then SIGKILL after C{--grace} seconds, and C{lock} exits with
CMD's code (after a message on stderr).

C{elect} campaigns (a L{kvtwist.client.election.Election}) and prints one
line when it leads; it stays leader until stopped (SIGINT, SIGTERM: it
resigns, so the next candidate leads at once, and exits 0: a signal is
how it ends, as for C{watch}) or until its lease is lost (exit 1).

None of them is cut off by the default C{--timeout}: C{lock} runs as long
as CMD, C{elect} as long as it leads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
from typing import Any, Dict, List, TextIO, Tuple

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol

from kvtwist import client
from kvtwist.cli.invocation import Command, CommandFactory, Invocation, show_nothing, untimed
from kvtwist.client.election import Election
from kvtwist.client.lease import LeaseLost
from kvtwist.client.lock import Lock

#: How long C{lock} waits between SIGTERM and SIGKILL by default.
DEFAULT_GRACE = 5.0
#: The default lease ttl of C{lock} and C{elect}, in seconds.
DEFAULT_TTL = 10.0

LEASE_ACTIONS = ("grant", "keepalive", "revoke", "show")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % (text,))
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError("must be above 0")
    return int(value) if value.is_integer() else value


def add_commands(command: CommandFactory) -> None:
    """Add C{lease}, C{lock} and C{elect} through the parser's subcommand factory."""
    sub = command(
        "lease", "grant, renew, revoke or show a lease",
        "  lease grant TTL     print {id, ttl} (text: the id)\n"
        "  lease keepalive ID  renew it (writes no key)\n"
        "  lease revoke ID     end it, deleting its keys in one commit\n"
        "  lease show ID       print {id, ttl, remaining, keys}\n\n",
    )
    sub.add_argument("action", choices=LEASE_ACTIONS, metavar="ACTION",
                     help="grant, keepalive, revoke or show")
    sub.add_argument("argument", metavar="TTL|ID", help="grant: seconds; the others: a lease id")

    sub = command(
        "lock", "run CMD while holding the lock NAME; exit with CMD's code",
        "The lock is released when CMD ends. CMD's environment has\n"
        "KVTWIST_LOCK_KEY and KVTWIST_FENCING_REVISION (grows with every\n"
        "acquisition: use it to fence writes). If the lease is lost while CMD\n"
        "runs, CMD gets SIGTERM, then SIGKILL after --grace seconds.\n\n",
    )
    # NAME, its options and CMD are parsed by _lock_arguments: argparse
    # cannot tell options before "--" from CMD's own after it.
    sub.add_argument("arguments", metavar="NAME [--ttl S] [--grace S] -- CMD ...",
                     nargs=argparse.REMAINDER, help="the lock (a key prefix), then the command")

    sub = command(
        "elect", "campaign in the election NAME with VALUE; print a line once leading",
        "Stays leader until stopped (SIGINT or SIGTERM resign, so the next\n"
        "candidate leads at once, and exit 0); exit 1 if the lease is lost.\n\n",
    )
    sub.add_argument("name", metavar="NAME", help="the election (a key prefix)")
    sub.add_argument("value", metavar="VALUE", help="what this candidate proclaims")
    sub.add_argument("--ttl", type=_positive, default=DEFAULT_TTL, metavar="SECONDS",
                     help="the lease's ttl (default: %(default)s)")


def _lease_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise ValueError("a lease id is a positive integer: %r" % (text,))
    return int(text)


def _start_lease(inv: Invocation) -> Deferred:
    action, argument = inv.args.action, inv.args.argument
    if action == "grant":
        return client.grant(inv.http, inv.url, _positive_ttl(argument), token=inv.token)
    call = {"keepalive": client.keepalive, "revoke": client.revoke, "show": client.show_lease}[action]
    lease_id = _lease_id(argument)
    return call(inv.http, inv.url, lease_id, token=inv.token).addCallback(
        lambda result: result if result is not None else {"id": lease_id, "revoked": True}
    )


def _positive_ttl(text: str) -> float:
    try:
        return _positive(text)
    except argparse.ArgumentTypeError as e:
        raise ValueError("TTL %s" % (e,))


def _show_lease(out: TextIO, err: TextIO, output: str, result: Dict[str, Any]) -> None:
    if output == "text":
        if set(result) == {"id", "ttl"}:
            out.write("%d\n" % (result["id"],))
        else:
            out.write(" ".join("%s=%s" % item for item in sorted(result.items())) + "\n")
        return
    out.write(json.dumps(result, sort_keys=True) + "\n")


class _Child(ProcessProtocol):
    """CMD, run with the CLI's own stdin, stdout and stderr."""

    def __init__(self) -> None:
        self.ended: Deferred = Deferred()

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode
        if code is None:
            code = 128 + (reason.value.signal or 0)
        self.ended.callback(code)


class _LockUsage(argparse.ArgumentParser):
    """Parses NAME and the options of C{lock}; errors are C{ValueError}s."""

    def error(self, message: str) -> Any:
        raise ValueError(message)


def _lock_arguments(arguments: List[str]) -> Tuple[argparse.Namespace, List[str]]:
    """
    C{lock}'s NAME and options (before C{--}) and CMD (after it).

    @raise ValueError: for a usage error.
    """
    if "--" not in arguments:
        raise ValueError("give the command to run after --: lock NAME -- CMD ...")
    split = arguments.index("--")
    parser = _LockUsage(prog="kvtwist lock", add_help=False)
    parser.add_argument("name")
    parser.add_argument("--ttl", type=_positive, default=DEFAULT_TTL)
    parser.add_argument("--grace", type=_positive, default=DEFAULT_GRACE)
    options = parser.parse_args(arguments[:split])
    command = arguments[split + 1:]
    if not command:
        raise ValueError("give the command to run after --")
    return options, command


def _start_lock(inv: Invocation) -> Deferred:
    # Arguments are checked at once, before any I/O (a usage error: exit 2).
    options, command = _lock_arguments(list(inv.args.arguments))
    executable = shutil.which(command[0])
    if executable is None:
        raise ValueError("command not found: %s" % (command[0],))
    return Deferred.fromCoroutine(_run_locked(inv, options, executable, command))


async def _run_locked(
    inv: Invocation, args: argparse.Namespace, executable: str, command: List[str]
) -> int:
    reactor = inv.reactor
    lock = Lock(
        inv.http, inv.url, args.name, reactor=reactor, ttl=args.ttl, token=inv.token,
        value=("%s:%d" % (socket.gethostname(), os.getpid())).encode("utf-8"),
    )
    await lock.acquire()
    fencing = lock.fencing_revision
    assert fencing is not None  # acquire() sets it
    child = _Child()
    try:
        env = dict(
            os.environ,
            KVTWIST_LOCK_KEY=lock.key or "",
            KVTWIST_FENCING_REVISION="%d" % (fencing,),
        )
        process = reactor.spawnProcess(
            child, executable, command, env=env, childFDs={0: 0, 1: 1, 2: 2}
        )
        lost: Deferred = Deferred()

        def forward(error: Any) -> Any:
            lost.callback(error)
            return error

        lock.lost.addCallback(forward)
        await DeferredList([child.ended, lost], fireOnOneCallback=True, consumeErrors=True)
        if not child.ended.called:
            inv.err.write("kvtwist: the lock %s was lost; stopping the command\n" % (args.name,))
            process.signalProcess("TERM")
            kill = reactor.callLater(args.grace, _kill, process)
            code = await child.ended
            if kill.active():
                kill.cancel()
            return code
        return await child.ended
    finally:
        await lock.release()


def _kill(process: Any) -> None:
    try:
        process.signalProcess("KILL")
    except OSError:
        pass


def _show_exit(out: TextIO, err: TextIO, output: str, code: int) -> None:
    if code:
        raise SystemExit(code)


async def _campaign(inv: Invocation) -> None:
    args, reactor = inv.args, inv.reactor
    election = Election(inv.http, inv.url, args.name, reactor=reactor, ttl=args.ttl, token=inv.token)
    await election.campaign(args.value.encode("utf-8"))
    if inv.output == "text":
        inv.out.write("leading %s as %s\n" % (args.name, args.value))
    else:
        inv.out.write(json.dumps({"name": args.name, "leading": True, "value": args.value,
                                  "key": election.key}) + "\n")
    inv.out.flush()
    # Stopping the process (SIGINT, SIGTERM) resigns before the reactor ends.
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: Deferred.fromCoroutine(election.resign())
    )
    error = await election.lost
    raise error if isinstance(error, LeaseLost) else LeaseLost(str(error))


def _start_elect(inv: Invocation) -> Deferred:
    d = Deferred.fromCoroutine(_campaign(inv))

    def lost(reason: Any) -> None:
        reason.trap(LeaseLost)
        inv.err.write("kvtwist: %s\n" % (reason.value,))
        raise SystemExit(1)

    return d.addErrback(lost)


COMMANDS: Dict[str, Command] = {
    "lease": Command(_start_lease, _show_lease),
    "lock": Command(_start_lock, _show_exit, untimed),
    # A signal is how a leader steps down: it resigns, then exits 0.
    "elect": Command(_start_elect, show_nothing, untimed, ended_by_signal=True),
}

__all__ = ["COMMANDS", "DEFAULT_GRACE", "DEFAULT_TTL", "add_commands"]

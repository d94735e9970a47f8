# -*- test-case-name: tests.unit.test_cli -*-
"""
Runs one C{kvtwist} command: parses the arguments, resolves the server's
URL and token, starts the command with its L{Invocation}, bounds it by its
timeout, cancels it on SIGINT or SIGTERM (L{kvtwist.cli.interrupts}), shows
its result, and turns every outcome into an exit code.

Exit codes:

    - 0 (C{EXIT_OK}): success.
    - 1 (C{EXIT_SERVER_ERROR}): the server answered with an error.
    - 2 (C{EXIT_USAGE}): bad arguments or input; nothing was sent.
    - 3 (C{EXIT_CONNECTION}): the server could not be reached, the
      timeout passed, or the connection was lost before the whole answer.
    - 4 (C{EXIT_CONFLICT}): a 409 conflict or a 412 failed precondition;
      nothing was applied.
    - 128 + the signal (130, 143): interrupted, after the command cleaned
      up; a command that runs until stopped (C{watch}, C{elect}) exits 0.

The codes are named in L{kvtwist.cli.invocation}; docs/cli.md says more
of each. L{main} is the entry point under
L{twisted.internet.task.react}; L{run} is the console script. Tests call
L{main} with C{http=StubTreq(...)}, C{io.StringIO} output streams and an
C{io.BytesIO} stdin.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO, Mapping, Optional, TextIO, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from kvtwist import client
from kvtwist.cli.commands import COMMANDS, GROUPS
from kvtwist.cli.commands.completion import completion_script
from kvtwist.cli.connection import (
    CONNECTION_ERRORS,
    DEFAULT_URL,
    base_url,
    describe_connection_error,
    make_http,
    unix_target,
)
from kvtwist.cli.interrupts import Interrupted, Interrupts
from kvtwist.cli.invocation import (
    EXIT_CONFLICT,
    EXIT_CONNECTION,
    EXIT_OK,
    EXIT_SERVER_ERROR,
    EXIT_USAGE,
    Invocation,
    UsageError,
)
from kvtwist.cli.output import describe_conflict
from kvtwist.cli.parser import ParserExit, build_parser

__all__ = ["main", "run"]

@dataclass
class _Session:
    """Where one run of the command reads, writes, connects and hears signals."""

    reactor: Any
    http: Any
    out: TextIO
    err: TextIO
    environ: Mapping[str, str]
    stdin: Optional[BinaryIO]
    interrupts: Optional[Interrupts]


async def _run(session: _Session, argv: Tuple[str, ...]) -> int:
    args: Optional[argparse.Namespace] = None
    try:
        parser = build_parser(session.out, session.err, GROUPS)
        try:
            args = parser.parse_args(list(argv))
        except ParserExit as e:
            return e.code
        if args.command == "completion":
            session.out.write(completion_script(parser, args.shell))
            return EXIT_OK
        return await _run_command(session, args)
    except Interrupted as e:
        # The signal came before the command's request went out (while
        # the arguments or the input were read).
        return _interrupted(session.err, args, 128 + e.signum)


def _interrupted(err: TextIO, args: Optional[argparse.Namespace], code: int) -> int:
    """Say that the command was interrupted (and what that left); the exit code."""
    command = COMMANDS.get(args.command) if args is not None else None
    if command is not None and command.ended_by_signal:
        return EXIT_OK  # ^C is how a watch ends, and how a leader resigns
    note = command.interrupted_note if command is not None else None
    err.write("kvtwist: interrupted%s\n" % ("; " + note(args) if note and args else "",))
    return code


async def _run_command(session: _Session, args: argparse.Namespace) -> int:
    reactor, http, out, err = session.reactor, session.http, session.out, session.err
    environ, interrupts = session.environ, session.interrupts
    command = COMMANDS[args.command]
    url = args.url or environ.get("KVTWIST_URL") or DEFAULT_URL
    token = args.token if args.token is not None else environ.get("KVTWIST_TOKEN") or None
    timeout = args.timeout if args.timeout is not None else command.default_timeout(args)
    try:
        url, unix_socket = unix_target(base_url(url), args.unix_socket)
        if http is None:
            http = make_http(reactor, unix_socket)
        # The commands check their arguments before any I/O and raise at
        # once, so this catches only input errors.
        d = command.start(
            Invocation(
                args=args, http=http, url=url, token=token, stdin=session.stdin,
                reactor=reactor, out=out, err=err, output=args.output,
                given_timeout=args.timeout,
                duration=timeout if command.times_itself else 0.0,
            )
        )
    except (UsageError, ValueError, TypeError) as e:
        err.write("kvtwist: %s\n" % (e,))
        return EXIT_USAGE
    if timeout and not command.times_itself:
        client.with_timeout(d, timeout, reactor)
    if interrupts is not None:
        interrupts.guard(d)
    try:
        result = await d
    except BaseException as e:
        if interrupts is not None and interrupts.signum is not None:
            # Whatever the cancelled command failed with, a signal stopped it.
            return _interrupted(err, args, interrupts.exit_code)
        return _failed(err, url if unix_socket is None else "unix socket " + unix_socket, e)
    command.show(out, err, args.output, result)
    return EXIT_OK


def _failed(err: TextIO, url: str, e: BaseException) -> int:
    """Say why the command failed, on one line; its exit code."""
    if isinstance(e, (client.ConflictError, client.PreconditionFailedError)):
        err.write("kvtwist: %s\n" % (e,))
        if isinstance(e, client.ConflictError):
            for conflict in e.conflicts:
                err.write("kvtwist: %s\n" % (describe_conflict(conflict),))
        return EXIT_CONFLICT
    if isinstance(e, client.KVClientError):
        err.write("kvtwist: %s\n" % (e,))
        return EXIT_SERVER_ERROR
    if isinstance(e, CONNECTION_ERRORS):
        err.write("kvtwist: cannot reach %s: %s\n" % (url, describe_connection_error(e)))
        return EXIT_CONNECTION
    raise e


def main(
    reactor: Any,
    *argv: str,
    http: Any = None,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
    environ: Optional[Mapping[str, str]] = None,
    stdin: Optional[BinaryIO] = None,
    interrupts: Optional[Interrupts] = None,
) -> Deferred:
    """
    Run one C{kvtwist} command; the shape L{react} expects.

    @param reactor: used for the timeout and, unless C{http} is given, for
        the connection.
    @param argv: the arguments, without the program name.
    @param http: the treq-like client; L{make_http}C{(reactor)} by default.
    @param stdout: where results go (default C{sys.stdout}). C{cat} in text
        mode writes through its C{buffer} when it has one, so the value's
        bytes arrive exactly.
    @param stderr: where errors go (default C{sys.stderr}).
    @param environ: where C{KVTWIST_URL} and C{KVTWIST_TOKEN} are read
        (default C{os.environ}).
    @param stdin: a binary stream that C{put -}, C{batch} and C{txn} read
        (default C{sys.stdin.buffer}, read only when a command needs it).
    @param interrupts: the signal handling that cancels the command on
        SIGINT or SIGTERM (exit 130 or 143 after its clean-up); none
        without it.
    @return: a Deferred firing with L{None} on success, or failing with
        C{SystemExit(code)} for a non-zero exit code (see the module
        docstring).
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    env = environ if environ is not None else os.environ

    def exit_with(code: int) -> None:
        if code != EXIT_OK:
            raise SystemExit(code)

    session = _Session(reactor, http, out, err, env, stdin, interrupts)
    d = Deferred.fromCoroutine(_run(session, argv))
    return d.addCallback(exit_with)


def run() -> None:
    """
    The console script: C{kvtwist ARGS...}. SIGINT and SIGTERM interrupt
    the command (see L{kvtwist.cli.interrupts}).
    """
    from twisted.internet import reactor

    interrupts = Interrupts(reactor)
    interrupts.install()
    # Twisted installs its handlers as the reactor starts: take them back.
    reactor.callWhenRunning(interrupts.install)
    react(lambda reactor, *argv: main(reactor, *argv, interrupts=interrupts), sys.argv[1:])

# -*- test-case-name: tests.unit.test_cli -*-
"""
What every C{kvtwist} command is given and what it gives back: the typed
L{Invocation} one run of a command receives, and the L{Command} each
command module declares (how to start it, how to show its result, how
long it may take, how a signal ends it).

A command's C{start} checks its arguments before any I/O and raises
L{UsageError} (or C{ValueError}, C{TypeError}) at once for bad input: the
runner turns those into exit 2 with nothing sent.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Optional, Protocol, TextIO

from twisted.internet.defer import Deferred

__all__ = [
    "DEFAULT_TIMEOUT",
    "EXIT_CONFLICT",
    "EXIT_CONNECTION",
    "EXIT_OK",
    "EXIT_SERVER_ERROR",
    "EXIT_USAGE",
    "Command",
    "CommandFactory",
    "Invocation",
    "Requester",
    "Show",
    "Start",
    "UsageError",
    "check_text",
    "show_nothing",
    "untimed",
    "whole_command",
]

#: Seconds a command may take without C{--timeout}.
DEFAULT_TIMEOUT = 60.0

#: The exit codes (docs/cli.md, "Exit codes"): success; the server
#: answered with an error; bad usage, nothing sent; the server could not
#: be reached; a conflict or failed precondition, nothing applied.
EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_CONFLICT = 4


class UsageError(Exception):
    """Bad command-line input: exit 2, nothing sent."""


def check_text(value: str, what: str) -> str:
    """
    An argument as text. Bytes of argv that are not UTF-8 reach Python as
    lone surrogates (PEP 383); they can be neither sent nor stored.

    @raise UsageError: naming C{what} if C{value} holds such bytes.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("%s is not valid UTF-8" % (what,))
    return value


class Requester(Protocol):
    """What the commands need of an HTTP client: treq's C{request}."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred:
        """Send one request; the Deferred fires with the response."""


@dataclass
class Invocation:
    """
    One run of one command: its arguments and where it reads, writes,
    sends and keeps time.

    @ivar args: the parsed command line (the command's own options, and
        the global ones).
    @ivar http: the treq-like client (a L{Requester}).
    @ivar url: the server's base URL requests are made against.
    @ivar token: the bearer token, or L{None}.
    @ivar stdin: the binary stream C{-} names, or L{None} for
        C{sys.stdin.buffer} (looked up only when a command reads it).
    @ivar reactor: the reactor: the clock of timeouts, TTLs and pauses
        (C{IReactorTime}), and for C{lock} and C{elect} processes
        (C{IReactorProcess}) and shutdown triggers (C{IReactorCore}).
    @ivar out: where results go.
    @ivar err: where errors, notes and progress go.
    @ivar output: the result format, C{"json"} or C{"text"}.
    @ivar given_timeout: C{--timeout} as given, L{None} when absent:
        commands that bound each request (C{dump}, C{load}) choose their
        own default.
    @ivar duration: how long a command that times itself (C{watch}) runs;
        0: until stopped.
    """

    args: argparse.Namespace
    http: Requester
    url: str
    token: Optional[str]
    stdin: Optional[BinaryIO]
    reactor: Any
    out: TextIO
    err: TextIO
    output: str
    given_timeout: Optional[float]
    duration: float

    def stdin_stream(self) -> BinaryIO:
        """
        The stream C{-} names.

        @raise UsageError: if the process has no stdin.
        """
        if self.stdin is not None:
            return self.stdin
        stream: Optional[BinaryIO] = getattr(sys.stdin, "buffer", None)
        if stream is None:
            # Started with stdin closed (sys.stdin is None).
            raise UsageError("there is no stdin to read")
        return stream

    def read(self, source: str) -> bytes:
        """
        The bytes of C{source}: a file's path, or C{-} for stdin.

        @raise UsageError: if it cannot be read.
        """
        if source == "-":
            stream = self.stdin_stream()
            try:
                data: Any = stream.read()
            except OSError as e:
                raise UsageError("cannot read stdin: %s" % (e.strerror or e,))
            # A text stream (a test's StringIO) is taken as UTF-8.
            return data.encode("utf-8") if isinstance(data, str) else data
        check_text(source, "the file name")
        try:
            with open(source, "rb") as f:
                return f.read()
        except OSError as e:
            raise UsageError("cannot read %s: %s" % (source, e.strerror or e))


#: Starts a command: checks its input (raising before any I/O), then
#: returns the Deferred of its result.
Start = Callable[[Invocation], Deferred]
#: Shows a command's result: C{(stdout, stderr, output format, result)}.
Show = Callable[[TextIO, TextIO, str, Any], None]
#: The parser's subcommand factory, C{command(name, help, epilog="")},
#: returning the new subparser (with the hidden global options).
CommandFactory = Callable[..., argparse.ArgumentParser]


def show_nothing(out: TextIO, err: TextIO, output: str, result: Any) -> None:
    """For commands that printed as they went, or print nothing."""


def whole_command(args: argparse.Namespace) -> float:
    """The default bound of a command without C{--timeout}: L{DEFAULT_TIMEOUT}."""
    return DEFAULT_TIMEOUT


def untimed(args: argparse.Namespace) -> float:
    """No bound by default: the command runs as long as it needs (0)."""
    return 0.0


@dataclass(frozen=True)
class Command:
    """
    One subcommand as the runner sees it.

    @ivar start: starts it (see L{Start}).
    @ivar show: prints its result on success.
    @ivar default_timeout: its bound in seconds when no C{--timeout} is
        given (0: none).
    @ivar times_itself: its timeout is how long it runs (C{watch}): the
        end of it is a normal end, exit 0, so the runner does not cut it
        off.
    @ivar ended_by_signal: SIGINT and SIGTERM are its normal end (exit 0).
    @ivar interrupted_note: what an interrupted run left, said after
        C{"interrupted; "}.
    """

    start: Start
    show: Show = show_nothing
    default_timeout: Callable[[argparse.Namespace], float] = whole_command
    times_itself: bool = False
    ended_by_signal: bool = False
    interrupted_note: Optional[Callable[[argparse.Namespace], str]] = None

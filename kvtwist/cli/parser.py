# -*- test-case-name: tests.unit.test_cli -*-
"""
The C{kvtwist} command line: an argparse parser that writes to the streams
it is given and raises L{ParserExit} instead of exiting (so tests can run
it), the global options every subcommand also accepts, and the argument
types the commands share.

L{build_parser} makes the parser; each command module adds its own
subcommands through the factory it is handed.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, TextIO, Union

import kvtwist
from kvtwist.cli.connection import DEFAULT_URL
from kvtwist.cli.invocation import DEFAULT_TIMEOUT, EXIT_OK, EXIT_USAGE, CommandFactory

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = [
    "EPILOG",
    "Parser",
    "ParserExit",
    "build_parser",
    "int_at_least",
    "integer",
    "page_size",
    "positive_seconds",
    "revision_number",
    "timeout_seconds",
    "wait_seconds",
]

EPILOG = """\
environment:
  KVTWIST_URL    default for --url (else %(url)s; a unix socket:
                 http+unix://%%2Fpath%%2Fto.sock/, or --unix-socket PATH)
  KVTWIST_TOKEN  default for --token (safer than --token: argv is public)

exit codes:
  0  success
  1  the server answered with an error
  2  usage error (bad arguments, value or ops not strict JSON, unreadable
     file, bad URL); nothing sent
  3  cannot reach the server (refused, unknown host, timeout, connection lost)
  4  conflict: a txn or batch was refused (409) or a put/rm precondition did
     not hold (412); nothing applied
  130, 143  interrupted by SIGINT, SIGTERM (temporary files removed; a load
     keeps its checkpoint: run it again to resume)

Global options may come before or after the command.
Staged writes (set, delete) sit in the server's shared queue until someone
commits; put, rm, batch and txn commit on their own.
Use -- before a key or value that starts with '-':  kvtwist set -- -k -1.5e3
""" % {"url": DEFAULT_URL}


class ParserExit(Exception):
    """argparse wants to exit (after --help, --version, or an error)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Parser(argparse.ArgumentParser):
    """
    An ArgumentParser that writes to the given streams and raises instead
    of calling C{sys.exit}, so L{kvtwist.cli.main} can be called from tests.
    """

    def __init__(self, *args: Any, out: TextIO, err: TextIO, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.out = out
        self.err = err

    def print_usage(self, file: Optional[SupportsWrite[str]] = None) -> None:
        super().print_usage(file if file is not None else self.out)

    def print_help(self, file: Optional[SupportsWrite[str]] = None) -> None:
        super().print_help(file if file is not None else self.out)

    def exit(self, status: int = 0, message: Optional[str] = None) -> Any:
        if message:
            self.err.write(message)
        raise ParserExit(status)

    def error(self, message: str) -> Any:
        self.print_usage(self.err)
        self.exit(EXIT_USAGE, "%s: error: %s\n" % (self.prog, message))


class _Version(argparse.Action):
    def __init__(self, option_strings: List[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        parser.out.write("kvtwist %s\n" % (kvtwist.__version__,))
        parser.exit(EXIT_OK)


def _add_global_options(parser: argparse.ArgumentParser, hidden: bool) -> None:
    """
    The global options. On the subcommands (C{hidden}) they are accepted
    but not listed, and default to "not given" so they only override the
    values given before the command when they are present.
    """

    def spec(help_text: str, default: Any) -> Dict[str, Any]:
        if hidden:
            return {"help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
        return {"help": help_text, "default": default}

    parser.add_argument(
        "--url", metavar="URL",
        **spec("server base URL (default: $KVTWIST_URL, else %s)" % (DEFAULT_URL,), None),
    )
    parser.add_argument(
        "--unix-socket", metavar="PATH", dest="unix_socket",
        **spec("connect to the server's unix socket PATH (as curl does; --url then "
               "gives only the path prefix); or --url http+unix://%%2Fpath%%2Fto.sock/", None),
    )
    parser.add_argument(
        "--token", metavar="TOKEN",
        **spec("bearer token (default: $KVTWIST_TOKEN)", None),
    )
    parser.add_argument(
        "--output", "-o", choices=("json", "text"),
        **spec("result format on stdout (default: json)", "json"),
    )
    # Default None, resolved per command by its Command.default_timeout:
    # wait and watch need other defaults than one request does.
    parser.add_argument(
        "--timeout", metavar="SECONDS", type=timeout_seconds,
        **spec("give up after this long; 0 waits forever (default: %g; for wait, "
               "its wait plus a margin; watch runs until interrupted)"
               % (DEFAULT_TIMEOUT,), None),
    )


def timeout_seconds(text: str) -> float:
    """A timeout (argparse type): 0 or more seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % (text,))
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return value


def positive_seconds(text: str) -> Union[int, float]:
    """A TTL: seconds above 0; an int when it is whole (C{?ttl=30}, not 30.0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % (text,))
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return int(value) if value.is_integer() else value


def revision_number(text: str) -> int:
    """A revision: ASCII digits only (no sign, no superscripts)."""
    if not (text.isdigit() and text.isascii()):
        raise argparse.ArgumentTypeError("not a revision (0 or more): %r" % (text,))
    return int(text)


def wait_seconds(text: str) -> Union[int, float]:
    """A long-poll's wait: 0 or more seconds; an int when whole."""
    value = timeout_seconds(text)
    return int(value) if value.is_integer() else value


def page_size(text: str) -> int:
    """Keys per listing page (argparse type): 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % (text,))
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def integer(text: str) -> int:
    """An integer of any size (argparse type)."""
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an integer" % (text,))


def int_at_least(low: int) -> Callable[[str], int]:
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


def build_parser(
    out: TextIO, err: TextIO, groups: Sequence[Callable[[CommandFactory], None]]
) -> Parser:
    """
    The C{kvtwist} parser, writing to C{out} and C{err}.

    @param groups: functions that each add their module's subcommands
        through the factory they are given, in the order C{--help} lists
        them.
    """
    parser = Parser(
        prog="kvtwist",
        description="Read, write, stage and commit keys on a kvcache server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        out=out,
        err=err,
    )
    parser.add_argument("--version", action=_Version, help="print the version")
    _add_global_options(parser, hidden=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, epilog: str = "") -> Parser:
        sub: Parser = commands.add_parser(
            name, help=help_text, description=help_text, epilog=epilog + EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter, out=out, err=err,
        )
        _add_global_options(sub, hidden=True)
        return sub

    for add_commands in groups:
        add_commands(command)
    return parser

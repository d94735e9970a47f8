"""
The C{kvtwist} command: kvcache from the shell, built on L{kvtwist.client}.

    kvtwist [--url URL] [--token TOKEN] [--output json|text] [--timeout S]
            COMMAND ...

    kvtwist get KEY             print the committed value of KEY
    kvtwist set KEY JSON        stage KEY = JSON (parsed strictly) in the
                                server's shared queue
    kvtwist delete KEY [KEY..]  stage deletes (all or none) in the queue
    kvtwist commit              apply the shared queue atomically

Global options may come before or after the command. C{--url} defaults to
C{$KVTWIST_URL}, then C{http://127.0.0.1:8080}; C{--token} defaults to
C{$KVTWIST_TOKEN} (prefer the variable: a command line is visible to every
user of the machine).

Output (stdout): with C{--output json} (the default) each result is one
line of JSON: C{get} prints the value, C{set} and C{delete} the server's
per-key outcome (C{{"a": "created"}}), C{commit} prints nothing. With
C{--output text}: C{get} prints a string value without quotes (other
values as JSON), C{set} and C{delete} print one C{<outcome> <key>} line
per key, C{commit} prints C{committed}. Errors go to stderr as one line,
e.g. C{kvtwist: 404 key-not-found: no such key: 'a'}, never a traceback.

Exit codes:

    - 0: success.
    - 1: the server answered with an error (the problem is printed).
    - 2: usage error: bad arguments, a value that is not strict JSON, a bad
      URL, a key or token that cannot be sent. Nothing was sent.
    - 3: cannot reach the server: connection refused, unknown host, timeout,
      connection lost before the whole answer arrived (for C{commit} the
      outcome is then unknown).

L{main} is the entry point under L{twisted.internet.task.react}; L{run} is
the console script. Tests call L{main} with C{http=StubTreq(...)} and
C{io.StringIO} streams.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, TextIO, Tuple
from urllib.parse import urlsplit

from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
)

import kvtwist
from kvtwist import client

__all__ = ["main", "run", "make_http", "EXIT_OK", "EXIT_SERVER_ERROR",
           "EXIT_USAGE", "EXIT_CONNECTION"]

EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 60.0

_EPILOG = """\
environment:
  KVTWIST_URL    default for --url (else %(url)s)
  KVTWIST_TOKEN  default for --token (safer than --token: argv is public)

exit codes:
  0  success
  1  the server answered with an error
  2  usage error (bad arguments, value not strict JSON, bad URL); nothing sent
  3  cannot reach the server (refused, unknown host, timeout, connection lost)

Global options may come before or after the command.
Staged writes sit in the server's shared queue until someone commits.
Use -- before a key or value that starts with '-':  kvtwist set -- -k -1.5e3
""" % {"url": DEFAULT_URL}

#: Failures that mean the server could not be reached or stopped answering.
_CONNECTION_ERRORS = (
    error.ConnectError,  # refused, connect timeout, no route, ...
    error.DNSLookupError,
    error.ConnectionLost,
    error.ConnectionDone,
    ResponseFailed,  # includes ResponseNeverReceived
    RequestTransmissionFailed,
    defer.TimeoutError,  # our --timeout
    OSError,
)


class UsageError(Exception):
    """Bad command-line input: exit 2, nothing sent."""


class _ParserExit(Exception):
    """argparse wants to exit (after --help, --version, or an error)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """
    An ArgumentParser that writes to the given streams and raises instead
    of calling C{sys.exit}, so L{main} can be called from tests.
    """

    def __init__(self, *args: Any, out: TextIO, err: TextIO, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.out = out
        self.err = err

    def print_usage(self, file: Optional[TextIO] = None) -> None:
        super().print_usage(file if file is not None else self.out)

    def print_help(self, file: Optional[TextIO] = None) -> None:
        super().print_help(file if file is not None else self.out)

    def exit(self, status: int = 0, message: Optional[str] = None) -> Any:
        if message:
            self.err.write(message)
        raise _ParserExit(status)

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
        "--token", metavar="TOKEN",
        **spec("bearer token (default: $KVTWIST_TOKEN)", None),
    )
    parser.add_argument(
        "--output", "-o", choices=("json", "text"),
        **spec("result format on stdout (default: json)", "json"),
    )
    parser.add_argument(
        "--timeout", metavar="SECONDS", type=_timeout,
        **spec("give up after this long; 0 waits forever (default: %g)"
               % (DEFAULT_TIMEOUT,), DEFAULT_TIMEOUT),
    )


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % (text,))
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return value


def _parser(out: TextIO, err: TextIO) -> _Parser:
    parser = _Parser(
        prog="kvtwist",
        description="Read, stage and commit keys on a kvcache server.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        out=out,
        err=err,
    )
    parser.add_argument("--version", action=_Version, help="print the version")
    _add_global_options(parser, hidden=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> _Parser:
        sub = commands.add_parser(
            name, help=help_text, description=help_text, epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter, out=out, err=err,
        )
        _add_global_options(sub, hidden=True)
        return sub

    sub = command("get", "print the committed value of KEY as JSON")
    sub.add_argument("key", metavar="KEY")
    sub = command("set", "stage KEY = JSON in the shared queue (see commit)")
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("value", metavar="JSON", help="a JSON value; strings need quotes")
    sub = command("delete", "stage a delete of each KEY (all or none)")
    sub.add_argument("keys", metavar="KEY", nargs="+")
    command("commit", "apply the shared queue atomically and durably")
    return parser


def _check_text(value: str, what: str) -> str:
    """
    An argument as text. Bytes of argv that are not UTF-8 reach Python as
    lone surrogates (PEP 383); they can be neither sent nor stored.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("%s is not valid UTF-8" % (what,))
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError("%s is not JSON" % (name,))


def _unique(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("the object repeats the key %r" % (key,))
        result[key] = value
    return result


def parse_json_value(text: str) -> Any:
    """
    Parse a JSON value given on the command line, as strictly as the server
    will: no NaN or Infinity, no duplicate object keys, no lone surrogates.
    (The server's nesting limit is left to the server: a 400, exit 1.)

    @raise UsageError: if it does not parse.
    """
    _check_text(text, "the JSON value")
    try:
        value = json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_unique
        )
    except RecursionError:
        raise UsageError("the value is not strict JSON: it is nested too deeply")
    except ValueError as e:
        hint = ""
        if isinstance(e, json.JSONDecodeError) and e.pos == 0 and text.strip():
            # The usual slip: a bare word where a JSON string was meant.
            hint = " (a string needs JSON quotes: '\"%s\"')" % (text,)
        raise UsageError("the value is not strict JSON: %s%s" % (e, hint))
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            "the value is not strict JSON: it holds a lone surrogate (\\ud800-\\udfff)"
        )
    return value


def _base_url(text: str) -> str:
    """
    @raise UsageError: unless C{text} is an http or https URL with a host
        and no query or fragment.
    """
    _check_text(text, "the URL")
    try:
        parts = urlsplit(text)
        parts.port  # raises ValueError for a bad port
    except ValueError as e:
        raise UsageError("bad --url %r: %s" % (text, e))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError("bad --url %r: expected http://HOST[:PORT][/PATH]" % (text,))
    if parts.query or parts.fragment:
        raise UsageError("bad --url %r: no query or fragment allowed" % (text,))
    return text


def make_http(reactor: Any) -> Any:
    """
    The HTTP client the CLI uses by default: a treq C{HTTPClient} on
    C{reactor}, without persistent connections (one command, then exit).
    """
    from treq.client import HTTPClient

    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, pool=pool))


def _print_json(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, ensure_ascii=False) + "\n")


def _show_value(out: TextIO, output: str, value: Any) -> None:
    if output == "text" and isinstance(value, str):
        out.write(value + "\n")
    else:
        _print_json(out, value)


def _show_outcomes(out: TextIO, output: str, outcomes: Dict[str, str]) -> None:
    if output == "json":
        _print_json(out, outcomes)
        return
    for key, outcome in outcomes.items():
        out.write("%s %s\n" % (outcome, key))


def _show_commit(out: TextIO, output: str, result: None) -> None:
    if output == "text":
        out.write("committed\n")


#: command -> (start the request; raises UsageError/ValueError before any
#: I/O), (print the result).
_Start = Callable[[Any, str, argparse.Namespace, Optional[str]], Deferred]
_COMMANDS: Dict[str, Tuple[_Start, Callable[[TextIO, str, Any], None]]] = {
    "get": (
        lambda http, url, args, token: client.get(
            http, url, _check_text(args.key, "KEY"), token=token
        ),
        _show_value,
    ),
    "set": (
        lambda http, url, args, token: client.set_many(
            http, url,
            {_check_text(args.key, "KEY"): parse_json_value(args.value)},
            token=token,
        ),
        _show_outcomes,
    ),
    "delete": (
        lambda http, url, args, token: client.delete(
            http, url, *[_check_text(k, "KEY") for k in args.keys], token=token
        ),
        _show_outcomes,
    ),
    "commit": (
        lambda http, url, args, token: client.commit(http, url, token=token),
        _show_commit,
    ),
}


def _describe_connection_error(e: BaseException) -> str:
    if isinstance(e, defer.TimeoutError):
        return "no answer within the timeout"
    if isinstance(e, (ResponseFailed, RequestTransmissionFailed)):
        reasons = "; ".join(r.getErrorMessage() for r in e.reasons)
        return "the connection failed before a whole answer arrived (%s)" % (reasons,)
    return str(e) or type(e).__name__


async def _run(
    reactor: Any,
    argv: Tuple[str, ...],
    http: Any,
    out: TextIO,
    err: TextIO,
    environ: Mapping[str, str],
) -> int:
    try:
        args = _parser(out, err).parse_args(list(argv))
    except _ParserExit as e:
        return e.code
    start, show = _COMMANDS[args.command]
    url = args.url or environ.get("KVTWIST_URL") or DEFAULT_URL
    token = args.token if args.token is not None else environ.get("KVTWIST_TOKEN") or None
    try:
        url = _base_url(url)
        if http is None:
            http = make_http(reactor)
        # The client functions check their arguments before any I/O and
        # raise at once, so this catches only input errors.
        d = start(http, url, args, token)
    except (UsageError, ValueError, TypeError) as e:
        err.write("kvtwist: %s\n" % (e,))
        return EXIT_USAGE
    if args.timeout:
        d.addTimeout(args.timeout, reactor)
    try:
        result = await d
    except client.KVClientError as e:
        err.write("kvtwist: %s\n" % (e,))
        return EXIT_SERVER_ERROR
    except _CONNECTION_ERRORS as e:
        err.write("kvtwist: cannot reach %s: %s\n" % (url, _describe_connection_error(e)))
        return EXIT_CONNECTION
    show(out, args.output, result)
    return EXIT_OK


def main(
    reactor: Any,
    *argv: str,
    http: Any = None,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Deferred:
    """
    Run one C{kvtwist} command; the shape L{react} expects.

    @param reactor: used for the timeout and, unless C{http} is given, for
        the connection.
    @param argv: the arguments, without the program name.
    @param http: the treq-like client; L{make_http}C{(reactor)} by default.
    @param stdout: where results go (default C{sys.stdout}).
    @param stderr: where errors go (default C{sys.stderr}).
    @param environ: where C{KVTWIST_URL} and C{KVTWIST_TOKEN} are read
        (default C{os.environ}).
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

    d = Deferred.fromCoroutine(_run(reactor, argv, http, out, err, env))
    return d.addCallback(exit_with)


def run() -> None:
    """The console script: C{kvtwist ARGS...}."""
    react(main, sys.argv[1:])

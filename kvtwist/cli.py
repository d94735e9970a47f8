"""
The C{kvtwist} command: kvcache from the shell, built on L{kvtwist.client}.

    kvtwist [--url URL] [--unix-socket PATH] [--token TOKEN]
            [--output json|text] [--timeout S] COMMAND ...

The seed's routes (JSON values, one staging queue shared by every client):

    kvtwist get KEY             print the committed value of KEY
    kvtwist set KEY JSON        stage KEY = JSON (parsed strictly) in the
                                server's shared queue
    kvtwist delete KEY [KEY..]  stage deletes (all or none) in the queue
    kvtwist commit              apply the shared queue atomically

The v1 routes (values are bytes with a content type; every write is its
own atomic, durable commit):

    kvtwist put KEY (VALUE | - | --file F) [--content-type CT | --json]
                [--ttl S] [--if-match REV|*] [--if-none-match]
                                write KEY; '-' reads the value from stdin
    kvtwist cat KEY             print the value of KEY exactly (text) or
                                with its metadata (json)
    kvtwist rm KEY [--if-match REV|*]
                                delete KEY
    kvtwist list [PREFIX] [--limit N] [--after KEY] [--values] [--all]
                                list keys (one page, or --all of them)
    kvtwist incr KEY [BY]       add BY (default 1) to the JSON integer KEY
                                holds (0 when absent); print the new value
    kvtwist batch [FILE|-]      apply ops in one request, all or nothing
    kvtwist txn [FILE|-]        apply ops through a multi-request
                                transaction, all or nothing

Watching (SPEC section 5.3):

    kvtwist watch [PREFIX] [--after REV] [--values]
                                print every change to keys under PREFIX
                                as it is committed, until interrupted
                                (or for --timeout seconds)
    kvtwist wait KEY --index N [--wait S]
                                wait until KEY changes after revision N
                                (or S seconds pass), then print it

Leases, locks and elections (see L{kvtwist.coordination_cli}):

    kvtwist lease grant TTL | keepalive ID | revoke ID | show ID
    kvtwist lock NAME [--ttl S] [--grace S] -- CMD [ARG ...]
                                run CMD while holding the lock NAME,
                                exit with CMD's code
    kvtwist elect NAME VALUE [--ttl S]
                                campaign; print a line once leading

Shell completion:

    kvtwist completion bash|zsh print a completion script (made by shtab
                                from this parser)

C{get} stays the seed's read (a JSON value as JSON; a value of another type
written through v1 as text, or base64), and C{delete} the seed's staged
delete; C{cat} and C{rm} are their v1 counterparts (C{cat} reaches every
key, C{set} and C{commit} included, with its metadata).

C{batch} and C{txn} read a JSON list of ops, or C{{"ops": [...]}}, from
FILE, or from stdin when FILE is C{-} or missing. Ops are those of
C{POST /v1/batch}:

    {"op": "set", "key": K, "value": <JSON>, "ttl": S}      (ttl optional)
    {"op": "set", "key": K, "value_base64": B64, "content_type": CT}
    {"op": "delete", "key": K}
    {"op": "check", "key": K, "revision": N}     (N = 0: K is absent)
    {"op": "check-absent", "key": K}
    {"op": "get", "key": K}

C{batch} sends them in one request, and the server checks them (a bad op is
its 400, exit 1). C{txn} checks them first (a bad op is exit 2, nothing
sent), then opens a transaction, stages one request per op, and commits;
see L{kvtwist.client.transact} for how each op maps to the transaction API.
The transaction API has no bare check, so a C{check} op reads the key
through the transaction and compares the revision the server recorded with
the expected one before committing; the commit then fails if the key
changes after that read, so the check holds when the commit applies. On
any failure C{txn} aborts its transaction; nothing is applied.

Global options may come before or after the command. C{--url} defaults to
C{$KVTWIST_URL}, then C{http://127.0.0.1:8080}. A server listening on a
unix socket (C{--listen unix:/run/kvcache.sock}) is reached with
C{--unix-socket PATH} (curl's option: the URL then gives only the path
prefix) or C{--url http+unix://%2Frun%2Fkvcache.sock/} (the path
percent-encoded where the host would be); C{--token} defaults to
C{$KVTWIST_TOKEN} (prefer the variable: a command line is visible to every
user of the machine). C{--timeout} bounds the whole command (every request
of a C{txn} or of C{list --all}); it defaults to 60 s, except for C{wait}
(its wait plus 1/16 jitter plus 10 s) and C{watch} (no limit; with
C{--timeout} it watches that long and exits 0).

Output (stdout): with C{--output json} (the default) each result is one
line of JSON:

    - C{get}: the value: JSON as JSON, text as a JSON string, other bytes
      as C{{"value_base64", "content_type"}}; C{set}, C{delete}: the
      server's per-key outcome
      (C{{"a": "created"}}); C{commit}: nothing.
    - C{put}: C{{"key", "revision", "created", "version", "etag",
      "mod_revision", "expires"}}.
    - C{cat}: C{{"key", "create_revision", "mod_revision", "version",
      "content_type", "size", "expires", "value" | "value_base64",
      "revision"}}: C{value} for JSON content types, else base64.
    - C{rm}: C{{"key", "deleted": true, "revision"}}.
    - C{list}: the page C{{"revision", "items", "next"}}; with C{--all},
      every item in one such object (C{revision} is the last page's).
    - C{batch}: the server's C{{"revision", "results"}}; C{txn}: C{{"id",
      "revision", "ops", "results"}}, results in the batch's shape.
    - C{watch}: one line per event as it arrives, C{{"revision", "kind"
      ("put" | "delete" | "expire"), "key", "version", "content_type",
      "size"}} (puts), plus C{"value"} or C{"value_base64"} with
      C{--values}.
    - C{wait}: what C{cat} prints, plus C{"found": true}; C{{"key",
      "found": false}} if the key does not exist.

Values that are text print as text, in every command and output. The rule
(L{kvtwist.client.text_of}): a C{charset} parameter names the encoding,
else UTF-8; C{text/*} and JSON types are text when they decode; any other
type (C{application/octet-stream}, what C{put} stores by default) is text
when it decodes as UTF-8 and holds no control character but tab, newline
and carriage return. JSON outputs then carry C{"text"} where the server's
answer carries C{"value_base64"}; other bytes stay base64.

With C{--output text}: C{get} prints a string value without quotes (other
JSON values as JSON, text as itself, other bytes exactly), C{set} and C{delete} print one C{<outcome> <key>} line
per key, C{commit} prints C{committed}; C{put} prints C{created KEY
(revision N)} or C{updated ...}; C{cat} writes the value's bytes exactly,
with nothing added; C{rm} prints C{deleted KEY}; C{list} prints one key per
line (C{KEY<tab>VALUE} with C{--values}: JSON as JSON, text as itself if
it is one printable line, else as a quoted JSON string, other bytes as
C{base64:...}) and, when
more keys follow, a hint naming the C{--after} key on stderr; C{batch} and
C{txn} print one C{<op> <key>: <outcome>} line per op, then C{committed
revision N}; C{watch} prints C{<revision> <kind> <key>} per event (then a
tab and the value, as C{list} shows it, with C{--values}); C{wait}
writes the value's bytes exactly, as C{cat} does (nothing, and a note on
stderr, when the key does not exist).

C{watch} runs until interrupted (^C ends it with exit 0), or for
C{--timeout} seconds. It resumes by itself after a dropped connection
(with C{Last-Event-ID}, missing nothing and repeating nothing; see
L{kvtwist.client.watch}), and says so on stderr (C{kvtwist: <why>;
resuming after revision N in S s}). It exits 1 if the server can no
longer replay what it missed (410 history-gone: list the keys again and
watch with C{--after} the listing's revision), and 3 if it cannot
reconnect.

Errors go to stderr as one line, e.g. C{kvtwist: 404 key-not-found: no
such key: 'a'}, never a traceback; a conflict adds one line per failed
check.

Exit codes:

    - 0: success.
    - 1: the server answered with an error (the problem is printed).
    - 2: usage error: bad arguments, a value or ops file that is not strict
      JSON, a file that cannot be read, a bad URL, a key or token that
      cannot be sent. Nothing was sent.
    - 3: cannot reach the server: connection refused, unknown host, timeout,
      connection lost before the whole answer arrived (for a commit the
      outcome is then unknown); for C{watch}, reconnecting failed too
      often in a row.
    - 4: conflict: a transaction or batch was refused (409: another commit
      changed a key it read, or a check op did not hold), or a C{put} or
      C{rm} precondition (C{--if-match}, C{--if-none-match}) did not hold
      (412). Nothing was applied; re-reading and retrying may succeed.
    - 130, 143: interrupted by SIGINT or SIGTERM (128 + the signal, as a
      shell reports a death by signal), after the command cleaned up: a
      C{load} keeps its checkpoint (C{interrupted; run again to resume}),
      a C{dump} removes its temporary file. C{watch} ends with 0.

L{main} is the entry point under L{twisted.internet.task.react}; L{run} is
the console script. Tests call L{main} with C{http=StubTreq(...)},
C{io.StringIO} output streams and an C{io.BytesIO} stdin.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from dataclasses import dataclass
from typing import (
    Any,
    BinaryIO,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    TextIO,
    Tuple,
    Union,
)
from urllib.parse import unquote, urlsplit

from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.task import react
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
)
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

import kvtwist
from kvtwist import client, coordination_cli, dumpload, snapshots
from kvtwist.interrupts import Interrupted, Interrupts

__all__ = ["main", "run", "make_http", "parse_json_value", "EXIT_OK",
           "EXIT_SERVER_ERROR", "EXIT_USAGE", "EXIT_CONNECTION", "EXIT_CONFLICT"]

EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_CONFLICT = 4

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 60.0

_EPILOG = """\
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

_OPS_HELP = """\
ops (a JSON list, or {"ops": [...]}):
  {"op": "set", "key": K, "value": JSON}           optional "ttl": seconds
  {"op": "set", "key": K, "value_base64": B64, "content_type": CT}
  {"op": "delete", "key": K}
  {"op": "check", "key": K, "revision": N}          N = 0 means absent
  {"op": "check-absent", "key": K}
  {"op": "get", "key": K}

"""

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
    # Default None, resolved per command by _command_timeout: wait and
    # watch need other defaults than one request does.
    parser.add_argument(
        "--timeout", metavar="SECONDS", type=_timeout,
        **spec("give up after this long; 0 waits forever (default: %g; for wait, "
               "its wait plus a margin; watch runs until interrupted)"
               % (DEFAULT_TIMEOUT,), None),
    )


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % (text,))
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return value


def _positive_seconds(text: str) -> Union[int, float]:
    """A TTL: seconds above 0; an int when it is whole (C{?ttl=30}, not 30.0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % (text,))
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return int(value) if value.is_integer() else value


def _revision_arg(text: str) -> int:
    """A revision: ASCII digits only (no sign, no superscripts)."""
    if not (text.isdigit() and text.isascii()):
        raise argparse.ArgumentTypeError("not a revision (0 or more): %r" % (text,))
    return int(text)


def _wait_seconds(text: str) -> Union[int, float]:
    """A long-poll's wait: 0 or more seconds; an int when whole."""
    value = _timeout(text)
    return int(value) if value.is_integer() else value


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % (text,))
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _parser(out: TextIO, err: TextIO) -> _Parser:
    parser = _Parser(
        prog="kvtwist",
        description="Read, write, stage and commit keys on a kvcache server.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        out=out,
        err=err,
    )
    parser.add_argument("--version", action=_Version, help="print the version")
    _add_global_options(parser, hidden=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, epilog: str = "") -> _Parser:
        sub = commands.add_parser(
            name, help=help_text, description=help_text, epilog=epilog + _EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter, out=out, err=err,
        )
        _add_global_options(sub, hidden=True)
        return sub

    sub = command("get", "print the committed value of KEY (seed route; text as text)")
    sub.add_argument("key", metavar="KEY")
    sub = command("set", "stage KEY = JSON in the shared queue (see commit)")
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("value", metavar="JSON", help="a JSON value; strings need quotes")
    sub = command("delete", "stage a delete of each KEY (all or none)")
    sub.add_argument("keys", metavar="KEY", nargs="+")
    command("commit", "apply the shared queue atomically and durably")

    sub = command(
        "put", "write KEY = VALUE now, as its own atomic commit (v1)",
        "VALUE is sent as given (its UTF-8 bytes); '-' or --file - reads the\n"
        "value's bytes from stdin (to store a lone '-', put it in a file).\n\n",
    )
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("value", metavar="VALUE", nargs="?",
                     help="the value; '-' reads it from stdin")
    sub.add_argument("--file", "-f", metavar="FILE", help="read the value from FILE ('-': stdin)")
    kind = sub.add_mutually_exclusive_group()
    kind.add_argument("--content-type", "-t", metavar="CT",
                      help="stored with the value (default: %s)" % (client.DEFAULT_CONTENT_TYPE,))
    kind.add_argument("--json", action="store_true",
                      help="check that the value is strict JSON and store it as application/json")
    sub.add_argument("--ttl", metavar="SECONDS", type=_positive_seconds,
                     help="the key expires after this long")
    sub.add_argument("--if-match", metavar="REV", dest="if_match",
                     help="write only if KEY's revision is REV (or, with '*', if it exists)")
    sub.add_argument("--if-none-match", action="store_true", dest="if_none_match",
                     help="write only if KEY does not exist")

    sub = command("cat", "print the value of KEY (v1; text: its exact bytes)")
    sub.add_argument("key", metavar="KEY")

    sub = command("rm", "delete KEY now, as its own atomic commit (v1)")
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("--if-match", metavar="REV", dest="if_match",
                     help="delete only if KEY's revision is REV (or '*')")

    sub = command("list", "list the keys that start with PREFIX, in order (v1)")
    sub.add_argument("prefix", metavar="PREFIX", nargs="?", default="")
    sub.add_argument("--limit", "-n", metavar="N", type=_page_size,
                     help="keys per page (default: the server's, 100)")
    sub.add_argument("--after", metavar="KEY", help="start after KEY (a page's next)")
    sub.add_argument("--values", action="store_true", help="include the values")
    sub.add_argument("--all", "-a", action="store_true", dest="all",
                     help="read every page, not only the first")

    sub = command(
        "incr", "add BY (default 1) to the counter KEY atomically; print the new value (v1)",
        "KEY holds a JSON integer of any size (an absent KEY counts as 0); any\n"
        "other value is refused (exit 4, code not-an-integer) and nothing changes.\n\n",
    )
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("by", metavar="BY", nargs="?", default=1, type=_integer_arg,
                     help="the integer to add (default 1; may be negative)")

    sub = command(
        "batch", "apply ops from FILE (or stdin) in one atomic request (v1)", _OPS_HELP
    )
    sub.add_argument("source", metavar="FILE", nargs="?", default="-",
                     help="a JSON file of ops; '-' or nothing: stdin")
    sub = command(
        "txn",
        "apply ops from FILE (or stdin) through a multi-request transaction (v1)",
        _OPS_HELP
        + "A check op reads the key through the transaction; the revision read must\n"
        "be the expected one, and the commit fails if it changes afterwards.\n"
        "On any failure the transaction is aborted.\n\n",
    )
    sub.add_argument("source", metavar="FILE", nargs="?", default="-",
                     help="a JSON file of ops; '-' or nothing: stdin")

    sub = command(
        "watch", "print each change to keys that start with PREFIX, as it happens",
        "One line per event until interrupted (or for --timeout seconds): JSON\n"
        "{revision, kind, key, ...}, or '<revision> <kind> <key>' with -o text.\n"
        "A dropped connection is resumed where it stopped, without gaps or\n"
        "repeats; exit 1 if the server's history no longer reaches back that\n"
        "far (list the keys again, then watch --after their revision).\n\n",
    )
    sub.add_argument("prefix", metavar="PREFIX", nargs="?", default="")
    sub.add_argument("--after", metavar="REV", type=_revision_arg,
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
    sub.add_argument("--index", metavar="N", type=_revision_arg, required=True,
                     help="the revision to wait past (0: wait for KEY to exist)")
    sub.add_argument("--wait", metavar="SECONDS", type=_wait_seconds,
                     help="hold at most this long (default: the server's, 60)")
    dumpload.add_dump_load_commands(commands, command)
    snapshots.add_snapshot_commands(commands, command)
    coordination_cli.add_coordination_commands(command)

    sub = command(
        "completion", "print a shell completion script (bash or zsh) for kvtwist",
        "bash:  kvtwist completion bash > ~/.local/share/bash-completion/completions/kvtwist\n"
        "zsh:   kvtwist completion zsh > \"${fpath[1]}/_kvtwist\"   (then: compinit)\n"
        "It completes commands and options (and file names where a FILE goes);\n"
        "it never asks the server for keys.\n\n",
    )
    sub.add_argument("shell", choices=COMPLETION_SHELLS, metavar="SHELL",
                     help="one of: %s" % (", ".join(COMPLETION_SHELLS),))
    return parser


#: The shells C{kvtwist completion} writes a script for.
COMPLETION_SHELLS = ("bash", "zsh")


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """
    The completion script of C{shell} for the C{kvtwist} parser, made by
    shtab from the parser itself, so it can never miss a command or an
    option.
    """
    import shtab

    def files_where_files_go(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if action.metavar in ("FILE", "PATH"):
                action.complete = shtab.FILE  # type: ignore[attr-defined]
            for sub in getattr(action, "choices", None) or {}:
                if isinstance(action.choices, dict):  # the subcommands
                    files_where_files_go(action.choices[sub])

    files_where_files_go(parser)
    return shtab.complete(parser, shell=shell)


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


def _strict_loads(text: str, subject: str) -> Any:
    """
    Parse C{text} as strict JSON: no NaN or Infinity, no duplicate object
    keys, no lone surrogates.

    @param subject: what is parsed, with its verb (C{"the value is"}), for
        the messages.
    @raise UsageError: C{"<subject> not strict JSON: ..."}.
    @raise json.JSONDecodeError: for a syntax error, so the caller can add
        a hint (a ValueError too).
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique)
    except RecursionError:
        raise UsageError("%s not strict JSON: it is nested too deeply" % (subject,))
    except json.JSONDecodeError:
        raise
    except ValueError as e:
        raise UsageError("%s not strict JSON: %s" % (subject, e))
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            "%s not strict JSON: it holds a lone surrogate (\\ud800-\\udfff)" % (subject,)
        )
    return value


def parse_json_value(text: str) -> Any:
    """
    Parse a JSON value given on the command line, as strictly as the server
    will: no NaN or Infinity, no duplicate object keys, no lone surrogates.
    (The server's nesting limit is left to the server: a 400, exit 1.)

    @raise UsageError: if it does not parse.
    """
    _check_text(text, "the JSON value")
    try:
        return _strict_loads(text, "the value is")
    except json.JSONDecodeError as e:
        hint = ""
        if e.pos == 0 and text.strip():
            # The usual slip: a bare word where a JSON string was meant.
            hint = " (a string needs JSON quotes: '\"%s\"')" % (text,)
        raise UsageError("the value is not strict JSON: %s%s" % (e, hint))


#: The scheme of a unix socket URL, as requests-unixsocket and others spell
#: it: C{http+unix://%2Frun%2Fkvcache.sock/}, the socket's path
#: percent-encoded where a host would be.
UNIX_SCHEME = "http+unix"


def _base_url(text: str) -> str:
    """
    @raise UsageError: unless C{text} is an http or https URL with a host
        (or an C{http+unix} URL naming a socket) and no query or fragment.
    """
    _check_text(text, "the URL")
    try:
        parts = urlsplit(text)
        if parts.scheme != UNIX_SCHEME:
            parts.port  # raises ValueError for a bad port
    except ValueError as e:
        raise UsageError("bad --url %r: %s" % (text, e))
    if parts.scheme == UNIX_SCHEME:
        if not parts.netloc:
            raise UsageError("bad --url %r: expected http+unix://%%2Fpath%%2Fto.sock[/PATH]"
                             % (text,))
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError("bad --url %r: expected http://HOST[:PORT][/PATH]" % (text,))
    if parts.query or parts.fragment:
        raise UsageError("bad --url %r: no query or fragment allowed" % (text,))
    return text


def _unix_target(url: str, unix_socket: Optional[str]) -> Tuple[str, Optional[str]]:
    """
    Where to connect: C{(the URL requests name, the unix socket or None)}.
    An C{http+unix} URL names its socket in place of the host; requests
    then go to C{http://localhost} plus its path (the Host a loopback
    listener accepts). C{--unix-socket} wins, as curl's does: the URL then
    only gives the path prefix.
    """
    parts = urlsplit(url)
    if parts.scheme == UNIX_SCHEME:
        unix_socket = unix_socket if unix_socket is not None else unquote(parts.netloc)
        url = "http://localhost" + parts.path
    if unix_socket is not None:
        _check_text(unix_socket, "the unix socket path")
    return url, unix_socket


@implementer(IAgentEndpointFactory)
class _UnixSocketEndpoints:
    """Every request's connection goes to one unix socket, whatever its URL."""

    def __init__(self, reactor: Any, path: str) -> None:
        self._reactor = reactor
        self._path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(self._reactor, self._path)


def make_http(reactor: Any, unix_socket: Optional[str] = None) -> Any:
    """
    The HTTP client the CLI uses by default: a treq C{HTTPClient} on
    C{reactor}, without persistent connections (one command, then exit).

    @param unix_socket: connect every request to this unix socket's path
        instead of the URL's host and port.
    """
    from treq.client import HTTPClient

    pool = HTTPConnectionPool(reactor, persistent=False)
    if unix_socket is None:
        return HTTPClient(Agent(reactor, pool=pool))
    endpoints = _UnixSocketEndpoints(reactor, unix_socket)
    return HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=pool))


@dataclass
class _Invocation:
    """One command to run: its arguments and where it reads and sends."""

    http: Any
    url: str
    token: Optional[str]
    args: argparse.Namespace
    stdin: Optional[BinaryIO]
    #: For the commands that print as they go (watch) and time themselves.
    reactor: Any = None
    out: Optional[TextIO] = None
    err: Optional[TextIO] = None
    duration: float = 0.0

    def read(self, source: str) -> bytes:
        """
        The bytes of C{source}: a file's path, or C{-} for stdin.

        @raise UsageError: if it cannot be read.
        """
        if source == "-":
            stream: Any = self.stdin
            if stream is None:
                stream = getattr(sys.stdin, "buffer", None)
                if stream is None:
                    raise UsageError("there is no stdin to read")
            try:
                data = stream.read()
            except OSError as e:
                raise UsageError("cannot read stdin: %s" % (e.strerror or e,))
            # A text stream (a test's StringIO) is taken as UTF-8.
            return data.encode("utf-8") if isinstance(data, str) else data
        _check_text(source, "the file name")
        try:
            with open(source, "rb") as f:
                return f.read()
        except OSError as e:
            raise UsageError("cannot read %s: %s" % (source, e.strerror or e))


def _source_name(source: str) -> str:
    return "stdin" if source == "-" else repr(source)


def _read_ops(inv: _Invocation) -> List[Any]:
    """
    The ops in the JSON file or stdin: a list, or C{{"ops": [...]}}.

    @raise UsageError: if it is not UTF-8, not strict JSON, or neither
        shape.
    """
    source = inv.args.source
    what = "the ops in %s" % (_source_name(source),)
    data = inv.read(source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("%s are not valid UTF-8" % (what,))
    try:
        document = _strict_loads(text, what + " are")
    except json.JSONDecodeError as e:
        raise UsageError("%s are not strict JSON: %s" % (what, e))
    if isinstance(document, dict) and isinstance(document.get("ops"), list):
        return document["ops"]
    if isinstance(document, list):
        return document
    raise UsageError('%s must be a JSON list of ops or {"ops": [...]}' % (what,))


def _put_value(inv: _Invocation) -> bytes:
    """
    The value of C{put}: VALUE, stdin (VALUE C{-}), or C{--file}; checked
    as strict JSON with C{--json}.

    @raise UsageError: for none or both, an unreadable file, or (with
        C{--json}) a value that is not strict JSON.
    """
    args = inv.args
    if args.value is not None and args.file is not None:
        raise UsageError("put takes either VALUE or --file, not both")
    if args.file is not None:
        data = inv.read(args.file)
    elif args.value == "-":
        data = inv.read("-")
    elif args.value is not None:
        data = _check_text(args.value, "VALUE").encode("utf-8")
    else:
        raise UsageError("put needs a VALUE, - (stdin) or --file FILE")
    if args.json:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("the value is not strict JSON: it is not UTF-8")
        parse_json_value(text)
    return data


def _print_json(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, ensure_ascii=False) + "\n")


def _write_bytes(out: TextIO, data: bytes) -> None:
    """
    Write C{data} exactly: through the stream's binary buffer when it has
    one (a real stdout), else decoded (a test's StringIO).
    """
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        out.write(data.decode("utf-8", "replace"))
        return
    out.flush()
    buffer.write(data)
    buffer.flush()


def _show_value(out: TextIO, err: TextIO, output: str, value: Tuple[bytes, str]) -> None:
    """
    C{get}: a JSON value as before (text output: a string without quotes);
    a text value (L{client.text_of}) as a JSON string, or as the text with
    C{-o text}; other bytes as C{{"value_base64", "content_type"}}, or
    exactly with C{-o text}.
    """
    data, content_type = value
    if client.is_json_type(content_type):
        try:
            document = json.loads(data.decode("utf-8"))
        except ValueError:
            pass
        else:
            if output == "text" and isinstance(document, str):
                out.write(document + "\n")
            else:
                _print_json(out, document)
            return
    text = client.text_of(data, content_type)
    if output == "text":
        if text is None:
            _write_bytes(out, data)
        else:
            out.write(text + ("" if text.endswith("\n") else "\n"))
    elif text is not None:
        _print_json(out, text)
    else:
        _print_json(out, {"value_base64": base64.b64encode(data).decode("ascii"),
                          "content_type": content_type})


def _readable(item: Mapping[str, Any]) -> Dict[str, Any]:
    """
    A listing item, entry, event or batch result for output: a text value
    (L{client.text_of}) as C{"text"} in place of C{"value_base64"}.
    """
    encoded = item.get("value_base64")
    text = None
    if encoded is not None:
        try:
            data = client.decode_value_base64(encoded)
        except ValueError:
            pass
        else:
            text = client.text_of(data, item.get("content_type") or client.DEFAULT_CONTENT_TYPE)
    if text is None:
        return dict(item)
    return {("text" if name == "value_base64" else name): (text if name == "value_base64" else v)
            for name, v in item.items()}


def _show_outcomes(out: TextIO, err: TextIO, output: str, outcomes: Dict[str, str]) -> None:
    if output == "json":
        _print_json(out, outcomes)
        return
    for key, outcome in outcomes.items():
        out.write("%s %s\n" % (outcome, key))


def _show_commit(out: TextIO, err: TextIO, output: str, result: None) -> None:
    if output == "text":
        out.write("committed\n")


def _show_put(out: TextIO, err: TextIO, output: str, result: Dict[str, Any]) -> None:
    if output == "json":
        _print_json(out, result)
        return
    out.write(
        "%s %s (revision %s)\n"
        % ("created" if result.get("created") else "updated", result.get("key"),
           result.get("mod_revision"))
    )


def _show_entry(out: TextIO, err: TextIO, output: str, entry: client.KeyValue) -> None:
    if output == "text":
        _write_bytes(out, entry.value)
        return
    item = _readable(entry.as_item())
    item["revision"] = entry.revision
    _print_json(out, item)


def _show_removed(out: TextIO, err: TextIO, output: str, result: Dict[str, Any]) -> None:
    if output == "json":
        _print_json(out, result)
    else:
        out.write("deleted %s\n" % (result.get("key"),))


def _text_value(item: Mapping[str, Any]) -> str:
    """
    A value of a listing item, event or get result on one line of text:
    JSON as JSON; text as itself when it is one printable line, else as a
    JSON string (quoted, escaped); other bytes as C{base64:...}.
    """
    item = _readable(item)
    if "value" in item:
        return json.dumps(item["value"], ensure_ascii=False)
    if "text" in item:
        text = item["text"]
        return text if text.isprintable() else json.dumps(text, ensure_ascii=False)
    return "base64:" + str(item.get("value_base64", ""))


def _has_value(item: Mapping[str, Any]) -> bool:
    return "value" in item or "value_base64" in item


def _show_page(out: TextIO, err: TextIO, output: str, page: Dict[str, Any]) -> None:
    if output == "json":
        _print_json(out, dict(page, items=[_readable(item) for item in page["items"]]))
        return
    for item in page["items"]:
        if _has_value(item):
            out.write("%s\t%s\n" % (item.get("key"), _text_value(item)))
        else:
            out.write("%s\n" % (item.get("key"),))
    if page.get("next") is not None:
        err.write("kvtwist: more keys follow; next page: --after %s (or use --all)\n"
                  % (json.dumps(page["next"], ensure_ascii=False),))


def _result_line(result: Mapping[str, Any]) -> str:
    op = result.get("op")
    if op == "set":
        outcome = "created" if result.get("created") else "updated"
    elif op == "delete":
        outcome = "deleted" if result.get("deleted") else "absent"
    elif op == "get":
        outcome = _text_value(result) if result.get("found") else "absent"
    elif op == "incr":
        outcome = str(result.get("value"))
    else:
        outcome = "ok" if result.get("ok") else "failed"
    return "%s %s: %s" % (op, result.get("key"), outcome)


def _show_counter(out: TextIO, err: TextIO, output: str, result: Tuple[str, int]) -> None:
    key, value = result
    if output == "json":
        _print_json(out, {"key": key, "value": value})
    else:
        out.write("%d\n" % (value,))


def _integer_arg(text: str) -> int:
    """An integer of any size (argparse type)."""
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an integer" % (text,))


def _show_results(out: TextIO, err: TextIO, output: str, result: Dict[str, Any]) -> None:
    if output == "json":
        _print_json(out, dict(result, results=[_readable(r) for r in result.get("results") or []]))
        return
    for item in result.get("results") or []:
        out.write(_result_line(item) + "\n")
    out.write("committed revision %s\n" % (result.get("revision"),))


def _describe_revision(revision: Any) -> str:
    if revision == 0:
        return "absent"
    if revision is None:
        return "unknown"
    return "revision %s" % (revision,)


def _describe_conflict(conflict: Mapping[str, Any]) -> str:
    """One failed check of a 409, for people."""
    check = conflict.get("check")
    if check == "absent":
        expected = "absent"
    elif check == "present":
        expected = "present"
    else:
        expected = _describe_revision(conflict.get("expected"))
    tag = conflict.get("tag")
    if type(tag) is int:
        where = " (op %d)" % (tag,)
    elif tag == "observed":
        where = " (changed by another commit)"
    elif isinstance(tag, str):
        where = " (%s)" % (tag,)
    else:
        where = ""
    return "conflict on %s%s: expected %s, found %s" % (
        json.dumps(conflict.get("key"), ensure_ascii=False), where, expected,
        _describe_revision(conflict.get("actual")),
    )


#: command -> (start the request; raises UsageError/ValueError/TypeError
#: before any I/O), (print the result on stdout, hints on stderr).
_Start = Callable[[_Invocation], Deferred]
_Show = Callable[[TextIO, TextIO, str, Any], None]


def _start_put(inv: _Invocation) -> Deferred:
    args = inv.args
    value = _put_value(inv)
    if args.json:
        content_type = "application/json"
    elif args.content_type is not None:
        content_type = _check_text(args.content_type, "the content type")
    else:
        content_type = client.DEFAULT_CONTENT_TYPE
    if_match = None if args.if_match is None else _check_text(args.if_match, "--if-match")
    return client.put(
        inv.http, inv.url, _check_text(args.key, "KEY"), value,
        content_type=content_type, ttl=args.ttl, if_match=if_match,
        if_none_match=args.if_none_match, token=inv.token,
    )


def _start_rm(inv: _Invocation) -> Deferred:
    args = inv.args
    if_match = None if args.if_match is None else _check_text(args.if_match, "--if-match")
    return client.remove(
        inv.http, inv.url, _check_text(args.key, "KEY"), if_match=if_match, token=inv.token
    )


def _start_list(inv: _Invocation) -> Deferred:
    args = inv.args
    prefix = _check_text(args.prefix, "PREFIX")
    after = None if args.after is None else _check_text(args.after, "--after")
    if args.all:
        return client.list_all(
            inv.http, inv.url, prefix, limit=args.limit, after=after, values=args.values,
            token=inv.token,
        )
    return client.list_keys(
        inv.http, inv.url, prefix, limit=args.limit, after=after, values=args.values,
        token=inv.token,
    )


def _show_event(out: TextIO, output: str, event: client.WatchEvent) -> None:
    item = event.as_item()
    if output == "json":
        _print_json(out, _readable(item))
    elif _has_value(item):
        out.write("%d %s %s\t%s\n" % (event.revision, event.kind, event.key, _text_value(item)))
    else:
        out.write("%d %s %s\n" % (event.revision, event.kind, event.key))
    # Each line as it happens, also into a pipe (block-buffered otherwise).
    out.flush()


async def _follow(inv: _Invocation, events: client.Watch) -> None:
    """Print every event of C{events} until it ends, fails, or C{inv.duration} passes."""
    assert inv.out is not None
    stop = None
    if inv.duration:
        stop = inv.reactor.callLater(inv.duration, events.close)
    try:
        async for event in events:
            _show_event(inv.out, inv.args.output, event)
    finally:
        if stop is not None and stop.active():
            stop.cancel()
        # Also when cancelled or failing: no connection outlives the command.
        await events.close()


def _start_watch(inv: _Invocation) -> Deferred:
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
                inv.url, _describe_connection_error(failure.value))
        where = events[0].last_revision if events else None
        assert inv.err is not None
        inv.err.write("kvtwist: %s; resuming%s in %.1f s\n" % (
            reason, "" if where is None else " after revision %d" % (where,), delay))

    events.append(client.watch(
        inv.http, inv.url, _check_text(args.prefix, "PREFIX"), after=args.after,
        values=args.values, token=inv.token, clock=inv.reactor, on_retry=retrying,
    ))
    return Deferred.fromCoroutine(_follow(inv, events[0]))


def _show_nothing(out: TextIO, err: TextIO, output: str, result: None) -> None:
    """For commands that printed as they went."""


def _start_wait(inv: _Invocation) -> Deferred:
    args = inv.args
    key = _check_text(args.key, "KEY")
    d = client.wait_for(inv.http, inv.url, key, args.index, wait=args.wait, token=inv.token)
    return d.addCallback(lambda entry: (key, entry))


def _show_waited(
    out: TextIO, err: TextIO, output: str, result: Tuple[str, Optional[client.KeyValue]]
) -> None:
    key, entry = result
    if entry is None:
        if output == "json":
            _print_json(out, {"key": key, "found": False})
        else:
            err.write("kvtwist: %s does not exist\n" % (json.dumps(key, ensure_ascii=False),))
        return
    if output == "text":
        _write_bytes(out, entry.value)
        return
    item: Dict[str, Any] = {"key": key, "found": True}
    item.update(_readable(entry.as_item()))
    item["revision"] = entry.revision
    _print_json(out, item)


_COMMANDS: Dict[str, Tuple[_Start, _Show]] = {
    "get": (
        lambda inv: client.get_value(
            inv.http, inv.url, _check_text(inv.args.key, "KEY"), token=inv.token
        ),
        _show_value,
    ),
    "set": (
        lambda inv: client.set_many(
            inv.http, inv.url,
            {_check_text(inv.args.key, "KEY"): parse_json_value(inv.args.value)},
            token=inv.token,
        ),
        _show_outcomes,
    ),
    "delete": (
        lambda inv: client.delete(
            inv.http, inv.url, *[_check_text(k, "KEY") for k in inv.args.keys],
            token=inv.token,
        ),
        _show_outcomes,
    ),
    "commit": (
        lambda inv: client.commit(inv.http, inv.url, token=inv.token),
        _show_commit,
    ),
    "put": (_start_put, _show_put),
    "cat": (
        lambda inv: client.get_entry(
            inv.http, inv.url, _check_text(inv.args.key, "KEY"), token=inv.token
        ),
        _show_entry,
    ),
    "rm": (_start_rm, _show_removed),
    "list": (_start_list, _show_page),
    "incr": (
        lambda inv: client.incr(
            inv.http, inv.url, _check_text(inv.args.key, "KEY"), inv.args.by, token=inv.token
        ).addCallback(lambda value: (inv.args.key, value)),
        _show_counter,
    ),
    "batch": (
        lambda inv: client.batch(inv.http, inv.url, _read_ops(inv), token=inv.token),
        _show_results,
    ),
    "txn": (
        lambda inv: client.transact(inv.http, inv.url, _read_ops(inv), token=inv.token),
        _show_results,
    ),
    "watch": (_start_watch, _show_nothing),
    "wait": (_start_wait, _show_waited),
}
_COMMANDS.update(dumpload.COMMANDS)
_COMMANDS.update(snapshots.COMMANDS)
_COMMANDS.update(coordination_cli.COMMANDS)

#: A long-poll's wait when C{--wait} is not given: the server's default.
DEFAULT_WAIT = 60.0
#: How much longer than its wait C{wait} gives the server by default:
#: the server adds up to 1/16 of the wait as jitter, then the network.
_WAIT_MARGIN = 10.0


def _command_timeout(args: argparse.Namespace) -> float:
    """The command's C{--timeout}, or its default (0: none)."""
    if args.timeout is not None:
        return args.timeout
    if args.command == "watch":
        return 0.0
    if args.command == "wait":
        wait = DEFAULT_WAIT if args.wait is None else args.wait
        return wait * 17 / 16 + _WAIT_MARGIN
    if args.command in dumpload.COMMANDS:
        return 0.0  # dump and load bound each request, not the whole run
    if args.command in snapshots.COMMANDS:
        return 0.0  # one streamed answer, as long as the store is large
    if args.command in coordination_cli.UNTIMED:
        return 0.0  # they run as long as their command or their leadership
    return DEFAULT_TIMEOUT


def _describe_connection_error(e: BaseException) -> str:
    if isinstance(e, client.TimedOut):
        return str(e)
    if isinstance(e, defer.TimeoutError):
        return "timed out"
    if isinstance(e, (ResponseFailed, RequestTransmissionFailed)):
        reasons = "; ".join(
            r.getErrorMessage() or r.type.__name__ for r in e.reasons  # type: ignore[union-attr]
        )
        return "the connection failed before a whole answer arrived" + (
            " (%s)" % (reasons,) if reasons else "")
    return str(e) or type(e).__name__


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
        parser = _parser(session.out, session.err)
        try:
            args = parser.parse_args(list(argv))
        except _ParserExit as e:
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
    command = args.command if args is not None else None
    if command == "watch":
        return EXIT_OK  # ^C is how a watch ends
    note = dumpload.INTERRUPTED.get(command) if command is not None else None
    err.write("kvtwist: interrupted%s\n" % ("; " + note(args) if note else "",))
    return code


async def _run_command(session: _Session, args: argparse.Namespace) -> int:
    reactor, http, out, err = session.reactor, session.http, session.out, session.err
    environ, stdin, interrupts = session.environ, session.stdin, session.interrupts
    start, show = _COMMANDS[args.command]
    url = args.url or environ.get("KVTWIST_URL") or DEFAULT_URL
    token = args.token if args.token is not None else environ.get("KVTWIST_TOKEN") or None
    timeout = _command_timeout(args)
    # watch times itself: the end of its --timeout is a normal end (exit 0).
    streaming = args.command == "watch"
    try:
        url, unix_socket = _unix_target(_base_url(url), args.unix_socket)
        if http is None:
            http = make_http(reactor, unix_socket)
        # The client functions check their arguments before any I/O and
        # raise at once, so this catches only input errors.
        d = start(
            _Invocation(
                http, url, token, args, stdin, reactor, out, err,
                timeout if streaming else 0.0,
            )
        )
    except (UsageError, ValueError, TypeError) as e:
        err.write("kvtwist: %s\n" % (e,))
        return EXIT_USAGE
    if timeout and not streaming:
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
    show(out, err, args.output, result)
    return EXIT_OK


def _failed(err: TextIO, url: str, e: BaseException) -> int:
    """Say why the command failed, on one line; its exit code."""
    if isinstance(e, (client.ConflictError, client.PreconditionFailedError)):
        err.write("kvtwist: %s\n" % (e,))
        if isinstance(e, client.ConflictError):
            for conflict in e.conflicts:
                err.write("kvtwist: %s\n" % (_describe_conflict(conflict),))
        return EXIT_CONFLICT
    if isinstance(e, client.KVClientError):
        err.write("kvtwist: %s\n" % (e,))
        return EXIT_SERVER_ERROR
    if isinstance(e, _CONNECTION_ERRORS):
        err.write("kvtwist: cannot reach %s: %s\n" % (url, _describe_connection_error(e)))
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
    the command (see L{kvtwist.interrupts}).
    """
    from twisted.internet import reactor

    interrupts = Interrupts(reactor)
    interrupts.install()
    # Twisted installs its handlers as the reactor starts: take them back.
    reactor.callWhenRunning(interrupts.install)
    react(lambda reactor, *argv: main(reactor, *argv, interrupts=interrupts), sys.argv[1:])

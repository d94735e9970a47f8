# -*- test-case-name: tests.unit.test_cli_v1,tests.unit.test_cli -*-
"""
The C{kvtwist} commands that read and write keys: the seed's routes
(C{get}, C{set}, C{delete}, C{commit}: JSON values, one staging queue
shared by every client) and the v1 routes (C{put}, C{cat}, C{rm},
C{list}, C{incr}, C{batch}, C{txn}: values are bytes with a content type;
every write is its own atomic, durable commit).

C{batch} sends its ops in one request, and the server checks them (a bad
op is its 400, exit 1). C{txn} checks them first (a bad op is exit 2,
nothing sent), then runs them through a multi-request transaction
(L{kvtwist.client.transact}). docs/cli.md gives each command's output.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, TextIO, Tuple

from twisted.internet.defer import Deferred

from kvtwist import client, wire
from kvtwist.cli.invocation import (
    Command,
    CommandFactory,
    Invocation,
    UsageError,
    check_text,
)
from kvtwist.cli.output import has_value, print_json, readable, text_value, write_bytes
from kvtwist.cli.parser import integer, page_size, positive_seconds

__all__ = ["COMMANDS", "OPS_HELP", "add_commands", "parse_json_value"]

OPS_HELP = """\
ops (a JSON list, or {"ops": [...]}):
  {"op": "set", "key": K, "value": JSON}           optional "ttl": seconds
  {"op": "set", "key": K, "value_base64": B64, "content_type": CT}
  {"op": "delete", "key": K}
  {"op": "check", "key": K, "revision": N}          N = 0 means absent
  {"op": "check-absent", "key": K}
  {"op": "get", "key": K}

"""


def add_commands(command: CommandFactory) -> None:
    """Add the seed's and the v1 key commands through the parser's subcommand factory."""
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
    sub.add_argument("--ttl", metavar="SECONDS", type=positive_seconds,
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
    sub.add_argument("--limit", "-n", metavar="N", type=page_size,
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
    sub.add_argument("by", metavar="BY", nargs="?", default=1, type=integer,
                     help="the integer to add (default 1; may be negative)")

    sub = command(
        "batch", "apply ops from FILE (or stdin) in one atomic request (v1)", OPS_HELP
    )
    sub.add_argument("source", metavar="FILE", nargs="?", default="-",
                     help="a JSON file of ops; '-' or nothing: stdin")
    sub = command(
        "txn",
        "apply ops from FILE (or stdin) through a multi-request transaction (v1)",
        OPS_HELP
        + "A check op reads the key through the transaction; the revision read must\n"
        "be the expected one, and the commit fails if it changes afterwards.\n"
        "On any failure the transaction is aborted.\n\n",
    )
    sub.add_argument("source", metavar="FILE", nargs="?", default="-",
                     help="a JSON file of ops; '-' or nothing: stdin")


def _strict_loads(text: str, subject: str) -> Any:
    """
    Parse C{text} as strict JSON (L{kvtwist.wire.parse_strict}: no NaN or
    Infinity, no duplicate object keys, no lone surrogates; no nesting
    limit but Python's, the server keeps its own).

    @param subject: what is parsed, with its verb (C{"the value is"}), for
        the messages.
    @raise UsageError: C{"<subject> not strict JSON: <reason>"}, with a
        hint when a bare word was given where a JSON string was meant.
    """
    try:
        return wire.parse_strict(text, max_depth=None)
    except wire.NotStrictJSON as e:
        hint = ""
        if e.position == 0 and text.strip():
            # The usual slip: a bare word where a JSON string was meant.
            hint = " (a string needs JSON quotes: '\"%s\"')" % (text,)
        raise UsageError("%s not strict JSON: %s%s" % (subject, e.reason, hint))


def parse_json_value(text: str) -> Any:
    """
    Parse a JSON value given on the command line, as strictly as the server
    will: no NaN or Infinity, no duplicate object keys, no lone surrogates.
    (The server's nesting limit is left to the server: a 400, exit 1.)

    @raise UsageError: if it does not parse.
    """
    check_text(text, "the JSON value")
    return _strict_loads(text, "the value is")


def _source_name(source: str) -> str:
    return "stdin" if source == "-" else repr(source)


def _read_ops(inv: Invocation) -> List[Any]:
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
    document = _strict_loads(text, what + " are")
    if isinstance(document, dict) and isinstance(document.get("ops"), list):
        return document["ops"]
    if isinstance(document, list):
        return document
    raise UsageError('%s must be a JSON list of ops or {"ops": [...]}' % (what,))


def _put_value(inv: Invocation) -> bytes:
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
        data = check_text(args.value, "VALUE").encode("utf-8")
    else:
        raise UsageError("put needs a VALUE, - (stdin) or --file FILE")
    if args.json:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("the value is not strict JSON: it is not UTF-8")
        parse_json_value(text)
    return data


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
            # Strict: a stored NaN is not JSON, and is shown as its bytes.
            document = wire.parse_strict(data, max_depth=None)
        except wire.NotStrictJSON:
            pass
        else:
            if output == "text" and isinstance(document, str):
                out.write(document + "\n")
            else:
                print_json(out, document)
            return
    text = client.text_of(data, content_type)
    if output == "text":
        if text is None:
            write_bytes(out, data)
        else:
            out.write(text + ("" if text.endswith("\n") else "\n"))
    elif text is not None:
        print_json(out, text)
    else:
        print_json(out, {"value_base64": wire.encode_base64(data),
                          "content_type": content_type})


def _show_outcomes(out: TextIO, err: TextIO, output: str, outcomes: Dict[str, str]) -> None:
    if output == "json":
        print_json(out, outcomes)
        return
    for key, outcome in outcomes.items():
        out.write("%s %s\n" % (outcome, key))


def _show_commit(out: TextIO, err: TextIO, output: str, result: None) -> None:
    if output == "text":
        out.write("committed\n")


def _show_put(out: TextIO, err: TextIO, output: str, result: Dict[str, Any]) -> None:
    if output == "json":
        print_json(out, result)
        return
    out.write(
        "%s %s (revision %s)\n"
        % ("created" if result.get("created") else "updated", result.get("key"),
           result.get("mod_revision"))
    )


def _show_entry(out: TextIO, err: TextIO, output: str, entry: client.KeyValue) -> None:
    if output == "text":
        write_bytes(out, entry.value)
        return
    item = readable(entry.as_item())
    item["revision"] = entry.revision
    print_json(out, item)


def _show_removed(out: TextIO, err: TextIO, output: str, result: Dict[str, Any]) -> None:
    if output == "json":
        print_json(out, result)
    else:
        out.write("deleted %s\n" % (result.get("key"),))


def _show_page(out: TextIO, err: TextIO, output: str, page: Dict[str, Any]) -> None:
    if output == "json":
        print_json(out, dict(page, items=[readable(item) for item in page["items"]]))
        return
    for item in page["items"]:
        if has_value(item):
            out.write("%s\t%s\n" % (item.get("key"), text_value(item)))
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
        outcome = text_value(result) if result.get("found") else "absent"
    elif op == "incr":
        outcome = str(result.get("value"))
    else:
        outcome = "ok" if result.get("ok") else "failed"
    return "%s %s: %s" % (op, result.get("key"), outcome)


def _show_counter(out: TextIO, err: TextIO, output: str, result: Tuple[str, int]) -> None:
    key, value = result
    if output == "json":
        print_json(out, {"key": key, "value": value})
    else:
        out.write("%d\n" % (value,))


def _show_results(out: TextIO, err: TextIO, output: str, result: Dict[str, Any]) -> None:
    if output == "json":
        print_json(out, dict(result, results=[readable(r) for r in result.get("results") or []]))
        return
    for item in result.get("results") or []:
        out.write(_result_line(item) + "\n")
    out.write("committed revision %s\n" % (result.get("revision"),))


def _start_put(inv: Invocation) -> Deferred:
    args = inv.args
    value = _put_value(inv)
    if args.json:
        content_type = "application/json"
    elif args.content_type is not None:
        content_type = check_text(args.content_type, "the content type")
    else:
        content_type = client.DEFAULT_CONTENT_TYPE
    if_match = None if args.if_match is None else check_text(args.if_match, "--if-match")
    return client.put(
        inv.http, inv.url, check_text(args.key, "KEY"), value,
        content_type=content_type, ttl=args.ttl, if_match=if_match,
        if_none_match=args.if_none_match, token=inv.token,
    )


def _start_rm(inv: Invocation) -> Deferred:
    args = inv.args
    if_match = None if args.if_match is None else check_text(args.if_match, "--if-match")
    return client.remove(
        inv.http, inv.url, check_text(args.key, "KEY"), if_match=if_match, token=inv.token
    )


def _start_list(inv: Invocation) -> Deferred:
    args = inv.args
    prefix = check_text(args.prefix, "PREFIX")
    after = None if args.after is None else check_text(args.after, "--after")
    if args.all:
        return client.list_all(
            inv.http, inv.url, prefix, limit=args.limit, after=after, values=args.values,
            token=inv.token,
        )
    return client.list_keys(
        inv.http, inv.url, prefix, limit=args.limit, after=after, values=args.values,
        token=inv.token,
    )


COMMANDS: Dict[str, Command] = {
    "get": Command(
        lambda inv: client.get_value(
            inv.http, inv.url, check_text(inv.args.key, "KEY"), token=inv.token
        ),
        _show_value,
    ),
    "set": Command(
        lambda inv: client.set_many(
            inv.http, inv.url,
            {check_text(inv.args.key, "KEY"): parse_json_value(inv.args.value)},
            token=inv.token,
        ),
        _show_outcomes,
    ),
    "delete": Command(
        lambda inv: client.delete(
            inv.http, inv.url, *[check_text(k, "KEY") for k in inv.args.keys],
            token=inv.token,
        ),
        _show_outcomes,
    ),
    "commit": Command(
        lambda inv: client.commit(inv.http, inv.url, token=inv.token),
        _show_commit,
    ),
    "put": Command(_start_put, _show_put),
    "cat": Command(
        lambda inv: client.get_entry(
            inv.http, inv.url, check_text(inv.args.key, "KEY"), token=inv.token
        ),
        _show_entry,
    ),
    "rm": Command(_start_rm, _show_removed),
    "list": Command(_start_list, _show_page),
    "incr": Command(
        lambda inv: client.incr(
            inv.http, inv.url, check_text(inv.args.key, "KEY"), inv.args.by, token=inv.token
        ).addCallback(lambda value: (inv.args.key, value)),
        _show_counter,
    ),
    "batch": Command(
        lambda inv: client.batch(inv.http, inv.url, _read_ops(inv), token=inv.token),
        _show_results,
    ),
    "txn": Command(
        lambda inv: client.transact(inv.http, inv.url, _read_ops(inv), token=inv.token),
        _show_results,
    ),
}

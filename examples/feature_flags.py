"""
Feature flags read with a long-poll.

    .venv/bin/python examples/feature_flags.py --url http://127.0.0.1:8080 --flag beta
    .venv/bin/python examples/feature_flags.py --flag beta --changes 3 --wait 30

Reads the flag C{flags/<name>} and prints it, then asks for it again with a
long-poll, C{GET /v1/kv/flags/<name>?index=<revision>&wait=<seconds>}: the
server holds the request until the key changes after that revision (or is
deleted), or the wait ends, and then answers with its state. Each change is
printed as it happens:

    beta is not set (revision 0)
    beta = true (revision 7)
    beta is not set (revision 9)

A flag that is absent is polled with the store's revision (the
C{KV-Revision} of the 404) as the index: the poll wakes when the flag
appears. A poll whose wait ran out answers the unchanged state, and is
simply asked again. With C{--changes N} the script stops after N changes;
otherwise it runs until interrupted.

In your own code, L{follow_flag} takes the treq-like client first (the
C{treq} module, an C{HTTPClient}, or C{StubTreq} in tests) and calls
C{on_change} for every value.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import quote

import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import react


@dataclass(frozen=True)
class FlagState:
    """
    A flag as read: C{present} and its decoded C{value}, and C{revision}:
    the key's revision when present (its ETag), else the store's revision
    at the time of the read. Either is the index of the next long-poll.
    """

    present: bool
    value: Any
    revision: int


async def read_flag(
    http: Any, url: str, name: str, index: Optional[int] = None, wait: Optional[float] = None
) -> FlagState:
    """
    Read C{flags/<name>}; with C{index}, long-poll until it changes after
    that revision or C{wait} seconds pass.

    @raise RuntimeError: for an answer other than 200 or 404.
    """
    target = "%s/v1/kv/flags/%s" % (url.rstrip("/"), quote(name, safe=""))
    if index is not None:
        target += "?index=%d" % (index,)
        if wait is not None:
            target += "&wait=%g" % (wait,)
    response = await http.get(target)
    body = await treq.content(response)
    if response.code == 404:
        return FlagState(False, None, _header_int(response, b"kv-revision"))
    if response.code != 200:
        raise RuntimeError("GET %s: %d %s" % (target, response.code, body[:200]))
    content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
    if content_type.split(b";")[0].strip() == b"application/json":
        value = json.loads(body)
    else:
        value = body.decode("utf-8", "replace")
    etag = (response.headers.getRawHeaders(b"etag") or [b'"0"'])[0]
    return FlagState(True, value, int(etag.strip(b'"')))


def _header_int(response: Any, name: bytes) -> int:
    values = response.headers.getRawHeaders(name) or [b"0"]
    return int(values[0])


async def follow_flag(
    http: Any,
    url: str,
    name: str,
    on_change: Callable[[FlagState], None],
    changes: Optional[int] = None,
    wait: float = 30.0,
) -> FlagState:
    """
    Call C{on_change} with the flag's state now, then with every change,
    until C{changes} changes have been seen (for ever if L{None}).

    @return: the last state seen.
    """
    state = await read_flag(http, url, name)
    on_change(state)
    seen = 0
    while changes is None or seen < changes:
        latest = await read_flag(http, url, name, index=state.revision, wait=wait)
        changed = latest.present != state.present or (
            latest.present and latest.revision != state.revision
        )
        if not changed:
            # The wait ran out. An absent flag is asked again from the
            # store's newest revision: an old index would see a create and
            # delete in between as news at once, again and again.
            state = latest
            continue
        state = latest
        seen += 1
        on_change(state)
    return state


def describe(name: str, state: FlagState) -> str:
    """One line for a state: C{beta = true (revision 7)}."""
    if not state.present:
        return "%s is not set (revision %d)" % (name, state.revision)
    return "%s = %s (revision %d)" % (name, json.dumps(state.value), state.revision)


def main(reactor: Any, *argv: str, http: Any = None, out: Any = None) -> Deferred:
    parser = argparse.ArgumentParser(description="Follow a feature flag with long-polls.")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="kvcache base URL")
    parser.add_argument("--flag", required=True, help="the flag's name (key flags/NAME)")
    parser.add_argument("--changes", type=int, default=None, help="stop after N changes")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds per long-poll")
    args = parser.parse_args(argv)
    out = out or sys.stdout

    def show(state: FlagState) -> None:
        out.write(describe(args.flag, state) + "\n")
        out.flush()

    return Deferred.fromCoroutine(
        follow_flag(http or treq, args.url, args.flag, show, args.changes, args.wait)
    )


if __name__ == "__main__":
    react(main, sys.argv[1:])

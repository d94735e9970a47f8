"""
Leader election: one candidate leads, the others wait; when the leader
dies or resigns, the next one leads.

    .venv/bin/python examples/leader_election.py --name svc/leader --value node-1 --lead 30
    .venv/bin/python examples/leader_election.py --name svc/leader --observe 3

It uses L{kvtwist.client.Election}, etcd's election recipe on kvcache
leases: each candidate creates C{NAME/<lease id>} with its value and a
lease of C{--ttl} seconds, renewed while it lives; the candidate whose key
has the lowest create revision leads. A leader that dies stops renewing,
so the next candidate leads within the ttl (plus the server's sweep
interval); one that resigns revokes its lease, and the next leads at once.

Candidate output: C{leading NAME as VALUE}, then after C{--lead} seconds
C{resigned NAME} (0); C{lost NAME} (2) if its lease was lost while leading.
With C{--observe N}: the leader's value (C{leader: VALUE}, or C{leader:
none}) now and at each of the next N changes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react

from kvtwist import client

EXIT_LOST = 2


async def lead(http: Any, url: str, name: str, value: str, ttl: float, seconds: float,
               clock: Any, out: Any) -> int:
    """Campaign, lead for C{seconds}, resign. Returns the exit status."""
    election = client.Election(http, url, name, reactor=clock, ttl=ttl)
    await election.campaign(value.encode("utf-8"))
    out.write("leading %s as %s\n" % (name, value))
    out.flush()
    steps = max(1, int(seconds / (ttl / 3)) + 1)
    for _ in range(steps):
        await deferLater(clock, seconds / steps, lambda: None)
        if not election.leading:
            out.write("lost %s\n" % (name,))
            return EXIT_LOST
    await election.resign()
    out.write("resigned %s\n" % (name,))
    return 0


async def observe(http: Any, url: str, name: str, changes: int, clock: Any, out: Any) -> int:
    """Print the leader now and at each of the next C{changes} changes."""
    values = client.observe(http, url, name, clock=clock)
    seen = 0
    async for value in values:
        out.write("leader: %s\n" % (value.decode("utf-8") if value is not None else "none",))
        out.flush()
        seen += 1
        if seen > changes:
            break
    await values.aclose()
    return 0


def main(reactor: Any, *argv: str, http: Any = None, out: Any = None) -> Deferred:
    parser = argparse.ArgumentParser(description="Campaign in, or observe, a kvcache election.")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="kvcache base URL")
    parser.add_argument("--name", required=True, help="the election (a key prefix)")
    parser.add_argument("--value", default="candidate", help="what this candidate proclaims")
    parser.add_argument("--ttl", type=float, default=5.0, help="lease lifetime in seconds")
    parser.add_argument("--lead", type=float, default=10.0, help="seconds to lead before resigning")
    parser.add_argument("--observe", type=int, metavar="N",
                        help="do not campaign: print the leader and its next N changes")
    args = parser.parse_args(argv)
    out = out or sys.stdout
    http = http or treq
    if args.observe is not None:
        work = observe(http, args.url, args.name, args.observe, reactor, out)
    else:
        work = lead(http, args.url, args.name, args.value, args.ttl, args.lead, reactor, out)

    def exit_with(code: int) -> None:
        if code:
            raise SystemExit(code)

    return Deferred.fromCoroutine(work).addCallback(exit_with)


if __name__ == "__main__":
    react(main, sys.argv[1:])

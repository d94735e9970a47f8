"""
A job lock with compare-and-swap: only one worker runs a job at a time.

    .venv/bin/python examples/job_lock.py --url http://127.0.0.1:8080 --job nightly --work 5
    .venv/bin/python examples/job_lock.py --job nightly --ttl 10 --owner worker-2

How it works, with nothing but conditional writes on one key,
C{locks/<job>}:

    - acquire: C{PUT /v1/kv/locks/<job>?ttl=<ttl>} with C{If-None-Match: *}.
      It is written only if the key does not exist (201); if another worker
      holds the lock the answer is 412 and nothing changes.
    - keep it: while working, renew every C{ttl/3} seconds with
      C{If-Match: <our ETag>} and a new C{?ttl=}. If someone else's write
      came in between (the lock expired and was taken) that is a 412: the
      lock is lost and the work stops.
    - release: C{DELETE} with C{If-Match: <our ETag>}, so we never delete a
      lock someone else now holds.
    - crash safety: a worker that dies without releasing leaves a key that
      expires after C{ttl} seconds; then the next worker gets the lock.

Output and exit status: C{acquired locks/nightly as <owner>}, then
C{released locks/nightly} (0); C{locks/nightly is held by <owner>} (1);
C{lost locks/nightly} (2). C{--no-release} exits holding the lock, as a
crashed worker would.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
from typing import Any, Optional

import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react

from kvtwist import client

EXIT_HELD = 1
EXIT_LOST = 2


class Lock:
    """A lock we hold: its key and the ETag of our last write."""

    def __init__(self, http: Any, url: str, key: str, owner: str, ttl: float, etag: str):
        self.http = http
        self.url = url
        self.key = key
        self.owner = owner
        self.ttl = ttl
        self.etag = etag

    def _value(self) -> bytes:
        return json.dumps({"owner": self.owner}).encode("utf-8")

    async def renew(self) -> None:
        """
        Extend the lock by C{ttl} seconds from now.

        @raise client.PreconditionFailedError: if it is no longer ours.
        """
        result = await client.put(
            self.http, self.url, self.key, self._value(), content_type="application/json",
            ttl=self.ttl, if_match=self.etag,
        )
        self.etag = result["etag"]

    async def release(self) -> None:
        """
        Delete the lock if it is still ours.

        @raise client.PreconditionFailedError: if someone else holds it now.
        @raise client.NotFoundError: if it expired and nobody took it.
        """
        await client.remove(self.http, self.url, self.key, if_match=self.etag)


async def acquire(http: Any, url: str, job: str, owner: str, ttl: float) -> Optional[Lock]:
    """
    Take the lock of C{job} for C{ttl} seconds.

    @return: the L{Lock}, or L{None} if someone else holds it.
    """
    key = "locks/" + job
    try:
        result = await client.put(
            http, url, key, json.dumps({"owner": owner}).encode("utf-8"),
            content_type="application/json", ttl=ttl, if_none_match=True,
        )
    except client.PreconditionFailedError:
        return None
    return Lock(http, url, key, owner, ttl, result["etag"])


async def holder(http: Any, url: str, job: str) -> Optional[str]:
    """Who holds the lock of C{job} now (L{None}: nobody)."""
    try:
        entry = await client.get_entry(http, url, "locks/" + job)
    except client.NotFoundError:
        return None
    return json.loads(entry.value).get("owner")


async def run_locked(
    http: Any, url: str, job: str, owner: str, ttl: float, work: float, clock: Any,
    out: Any, release: bool = True,
) -> int:
    """
    Acquire the lock, "work" for C{work} seconds while renewing it, then
    release it. Returns the exit status (see the module docstring).
    """
    lock = await acquire(http, url, job, owner, ttl)
    if lock is None:
        out.write("locks/%s is held by %s\n" % (job, await holder(http, url, job)))
        return EXIT_HELD
    out.write("acquired locks/%s as %s\n" % (job, owner))
    out.flush()
    # The work in equal slices of at most ttl/3, renewing after each: the
    # lock never comes closer than 2/3 of its TTL to expiring.
    slices = math.ceil(work / (ttl / 3) - 1e-9) if work > 0 else 0
    for _ in range(slices):
        await deferLater(clock, work / slices, lambda: None)  # the job's work goes here
        try:
            await lock.renew()
        except client.PreconditionFailedError:
            out.write("lost locks/%s\n" % (job,))
            return EXIT_LOST
    if not release:
        out.write("exiting without releasing locks/%s\n" % (job,))
        return 0
    try:
        await lock.release()
    except (client.PreconditionFailedError, client.NotFoundError):
        out.write("lost locks/%s\n" % (job,))
        return EXIT_LOST
    out.write("released locks/%s\n" % (job,))
    return 0


def main(reactor: Any, *argv: str, http: Any = None, out: Any = None) -> Deferred:
    parser = argparse.ArgumentParser(description="Run a job under a kvcache lock.")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="kvcache base URL")
    parser.add_argument("--job", required=True, help="the job's name (key locks/JOB)")
    parser.add_argument("--owner", default="%s-%d" % (socket.gethostname(), os.getpid()),
                        help="who we are (default: host-pid)")
    parser.add_argument("--ttl", type=float, default=30.0, help="lock lifetime in seconds")
    parser.add_argument("--work", type=float, default=1.0, help="seconds of (simulated) work")
    parser.add_argument("--no-release", action="store_true", help="exit holding the lock")
    args = parser.parse_args(argv)
    out = out or sys.stdout

    def exit_with(code: int) -> None:
        if code:
            raise SystemExit(code)

    d = Deferred.fromCoroutine(run_locked(
        http or treq, args.url, args.job, args.owner, args.ttl, args.work, reactor, out,
        release=not args.no_release,
    ))
    return d.addCallback(exit_with)


if __name__ == "__main__":
    react(main, sys.argv[1:])

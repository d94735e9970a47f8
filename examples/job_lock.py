"""
A job lock: only one worker runs a job at a time, and a dead worker's lock
is taken over by the next one in line.

    .venv/bin/python examples/job_lock.py --url http://127.0.0.1:8080 --job nightly --work 5
    .venv/bin/python examples/job_lock.py --job nightly --ttl 10 --owner worker-2

It uses L{kvtwist.client.Lock}, etcd's lock recipe on kvcache leases:

    - each worker grants itself a lease of C{--ttl} seconds and creates
      C{locks/<job>/<lease id>} with it (value: its owner name);
    - workers queue by that key's create revision: the first holds the
      lock, each other one long-polls only the key just before its own;
    - the lease is renewed every ttl/3 seconds while the worker lives; a
      worker that dies stops renewing, its lease expires and its key goes
      with it, so the next worker takes over within the ttl (the
      server's sweeper wakes at the lease's deadline);
    - the holder's key's create revision is the I{fencing revision}: it
      grows with every acquisition, so whatever the job writes can be
      stamped with it and older holders refused;
    - releasing revokes the lease: the key goes at once, the next in line
      takes over at once.

Output and exit status: C{waiting for locks/nightly, held by <owner>} (when
someone holds it), C{acquired locks/nightly as <owner> (fencing revision
N)}, then C{released locks/nightly} (0); C{lost locks/nightly} (2) if the
lease was lost while working. C{--no-release} exits holding the lock, as a
crashed worker would.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any, Optional

import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react

from kvtwist import client
from kvtwist.client.lock import contenders

EXIT_LOST = 2


def lock_name(job: str) -> str:
    """The lock (a key prefix) of C{job}."""
    return "locks/" + job


async def holder(http: Any, url: str, job: str) -> Optional[str]:
    """Who holds the lock of C{job} now (L{None}: nobody)."""
    queue = await contenders(http, url, lock_name(job), values=True)
    if not queue:
        return None
    return client.decode_value_base64(queue[0]["value_base64"]).decode("utf-8")


async def run_locked(
    http: Any, url: str, job: str, owner: str, ttl: float, work: float, clock: Any,
    out: Any, release: bool = True,
) -> int:
    """
    Wait for the lock, "work" for C{work} seconds holding it, then release
    it. Returns the exit status (see the module docstring).
    """
    current = await holder(http, url, job)
    if current is not None:
        out.write("waiting for %s, held by %s\n" % (lock_name(job), current))
        out.flush()
    lock = client.Lock(http, url, lock_name(job), reactor=clock, ttl=ttl, value=owner.encode("utf-8"))
    await lock.acquire()
    out.write("acquired %s as %s (fencing revision %d)\n"
              % (lock_name(job), owner, lock.fencing_revision))
    out.flush()
    # The job's work goes here, in slices, checking that the lock is still
    # held between them: a holder whose lease is lost must stop at once.
    steps = max(1, int(work / (ttl / 3)) + 1)
    for _ in range(steps):
        await deferLater(clock, work / steps, lambda: None)
        if not lock.held:
            out.write("lost %s\n" % (lock_name(job),))
            return EXIT_LOST
    if not release:
        lock.lease.abandon()
        out.write("exiting without releasing %s\n" % (lock_name(job),))
        return 0
    await lock.release()
    out.write("released %s\n" % (lock_name(job),))
    return 0


def main(reactor: Any, *argv: str, http: Any = None, out: Any = None) -> Deferred:
    parser = argparse.ArgumentParser(description="Run a job under a kvcache lock.")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="kvcache base URL")
    parser.add_argument("--job", required=True, help="the job's name (lock locks/JOB)")
    parser.add_argument("--owner", default="%s-%d" % (socket.gethostname(), os.getpid()),
                        help="who we are (default: host-pid)")
    parser.add_argument("--ttl", type=float, default=10.0, help="lease lifetime in seconds")
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

"""
A lock contender for the end-to-end lock-safety test (a helper run as
C{python -m tests.helpers.lock_worker URL NAME LOG TTL}, not a test module).

It takes the lock NAME with L{kvtwist.client.lock.Lock} again and again,
for ever: once it holds the lock it appends C{S <fencing revision>
<monotonic time> <pid>} to LOG, holds it for 10 to 40 ms, appends C{E ...}
and releases it. CLOCK_MONOTONIC is one clock for every process of the
machine, so the test can compare the lines of several workers and the
moments it killed them.
"""

from __future__ import annotations

import os
import random
import sys
import time

import treq
from twisted.internet import task
from twisted.internet.defer import Deferred

from kvtwist.client.lease import LeaseLost
from kvtwist.client.lock import Lock


def _line(log, kind: str, fencing: int) -> None:
    log.write("%s %d %.6f %d\n" % (kind, fencing, time.monotonic(), os.getpid()))
    log.flush()


async def contend(reactor, url: str, name: str, path: str, ttl: float) -> None:
    with open(path, "a", buffering=1) as log:
        while True:
            lock = Lock(treq, url, name, reactor=reactor, ttl=ttl)
            try:
                await lock.acquire()
            except LeaseLost:
                # A stall on a loaded machine cost the lease while waiting:
                # queue again, as a real worker would.
                continue
            _line(log, "S", lock.fencing_revision)
            await task.deferLater(reactor, random.uniform(0.01, 0.04))
            if lock.held:
                _line(log, "E", lock.fencing_revision)
            await lock.release()


def main(reactor, url: str, name: str, path: str, ttl: str) -> Deferred:
    return Deferred.fromCoroutine(contend(reactor, url, name, path, float(ttl)))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])

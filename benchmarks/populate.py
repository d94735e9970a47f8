"""
Build a kvcache data directory of N committed keys, in-process and fast:
the real L{kvtwist.store.shelve_store.ShelveStore} driven synchronously
(an inline thread pool and a threadless reactor), so the files are exactly
what kvcache writes, without N HTTP round trips.

    python -m benchmarks.populate DIR N [LARGE]

Keys are C{k00000000} ... ; each value is a small JSON document. With
C{LARGE}, that many values of L{LARGE_VALUE_BYTES} are committed first (one
commit each, as PUTs would be) under C{big00}, C{big01}, ...: into an empty
store, so that they sit at the top of its tree, where every key lookup
passes. Prints one JSON line with the key count, the
seconds taken and the file sizes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import List, Optional

#: Keys per commit: large enough to be quick, small enough to stay lean.
BATCH = 10_000
#: The size of each large value (1000 KiB: under the default --max-body).
LARGE_VALUE_BYTES = 1000 * 1024


def key_name(i: int) -> str:
    """The i-th key of a populated store (the soak script uses the same)."""
    return "k%08d" % (i,)


def large_key_name(j: int) -> str:
    """The key of the j-th large value."""
    return "big%02d" % (j,)


def populate(directory: str, count: int, batch: int = BATCH, large: int = 0) -> dict:
    """Commit C{large} large values, then C{count} keys, into a new store in C{directory}."""
    from kvtwist.model import JSON_CONTENT_TYPE, Put
    from kvtwist.store.shelve_store import ShelveStore
    from kvtwist.testing import InlineThreadPool, ThreadlessReactor

    started = time.monotonic()
    store = ShelveStore(directory, ThreadlessReactor(), InlineThreadPool())
    _result_of(store.open())
    try:
        for j in range(large):
            _result_of(store.commit([Put(large_key_name(j), b"L" * LARGE_VALUE_BYTES)]))
        for first in range(0, count, batch):
            ops = [
                Put(
                    key_name(i),
                    json.dumps({"n": i, "s": "populated value"}).encode("utf-8"),
                    JSON_CONTENT_TYPE,
                )
                for i in range(first, min(count, first + batch))
            ]
            _result_of(store.commit(ops))
    finally:
        _result_of(store.close())
    files = {
        name: os.path.getsize(os.path.join(directory, name))
        for name in sorted(os.listdir(directory))
    }
    return {"keys": count, "large_values": large, "seconds": time.monotonic() - started, "files": files}


def _result_of(d):
    # Everything fires synchronously here; a Deferred still waiting would
    # mean the store's API changed under us, so say so instead of hanging.
    results: List[object] = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("the store did not answer synchronously")
    outcome = results[0]
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    return outcome


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3):
        print("usage: python -m benchmarks.populate DIR N [LARGE]", file=sys.stderr)
        return 2
    large = int(argv[2]) if len(argv) == 3 else 0
    print(json.dumps(populate(argv[0], int(argv[1]), large=large)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

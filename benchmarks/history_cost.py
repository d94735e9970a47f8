"""
What history costs on disk: the bytes each kept revision adds to a store.

    python -m benchmarks.history_cost [KEYS] [REVISIONS]

Builds a store of KEYS keys (L{benchmarks.populate}), then makes REVISIONS
one-key commits, each overwriting one existing key with a value of the same
size as the populated ones (so the key table holds no more rows: what grows
is the history). The store is closed (checkpointed) before each
measurement. Prints one JSON line: the file sizes and their growth per
revision, the history table's and its index's own pages per kept record
(SQLite's C{dbstat}, so the key table's churn is not counted), and the
value bytes each revision carries.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
from typing import List, Optional

from benchmarks.populate import _result_of, key_name, populate


def _directory_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))


def _history_bytes(path: str) -> int:
    """The pages of the history table and its index (SQLite's dbstat)."""
    db = sqlite3.connect(path)
    try:
        (total,) = db.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE name IN ('history', 'history_by_revision')"
        ).fetchone()
    finally:
        db.close()
    return total


def measure(directory: str, keys: int, revisions: int) -> dict:
    """Populate C{directory}, add C{revisions} one-key commits, measure."""
    from kvtwist.model import JSON_CONTENT_TYPE, Put
    from kvtwist.store.shelve_store import ShelveStore
    from kvtwist.testing import InlineThreadPool, ThreadlessReactor

    populate(directory, keys)
    before = _directory_bytes(directory)
    store = ShelveStore(directory, ThreadlessReactor(), InlineThreadPool(), check_integrity=False)
    _result_of(store.open())
    value_bytes = 0
    try:
        for n in range(revisions):
            i = (n * 7919) % keys
            value = json.dumps({"n": i, "s": "populated value"}).encode("utf-8")
            value_bytes += len(value)
            _result_of(store.commit([Put(key_name(i), value, JSON_CONTENT_TYPE)]))
        history = store.history_size
    finally:
        _result_of(store.close())
    after = _directory_bytes(directory)
    history_bytes = _history_bytes(os.path.join(directory, "kvcache.sqlite3"))
    return {
        "keys": keys,
        "revisions": revisions,
        "history_records": history,
        "bytes_before": before,
        "bytes_after": after,
        "bytes_per_revision": round((after - before) / revisions, 1),
        "history_bytes": history_bytes,
        "history_bytes_per_record": round(history_bytes / history, 1),
        "value_bytes_per_revision": round(value_bytes / revisions, 1),
    }


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    keys = int(argv[0]) if argv else 10_000
    revisions = int(argv[1]) if len(argv) > 1 else 20_000
    with tempfile.TemporaryDirectory(prefix="kvtwist-history-cost-") as directory:
        print(json.dumps(measure(os.path.join(directory, "data"), keys, revisions)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

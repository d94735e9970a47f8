"""
End to end: a snapshot (C{GET /v1/snapshot}) from the real
C{twistd -n kvcache} on the shelve store, taken while another client
commits as fast as it can; and C{kvtwist snapshot save} against it.

What only a real process shows: the stream is read while the store thread
commits between its pages, and still every key line is the key as it was
at the snapshot's revision (checked against a listing at that revision,
from the history), and the stream ends with its trailer; then
C{kvtwist snapshot restore} builds a new data directory from the saved
file, and a server started on it answers the same values and ETags.
Figures are printed (run pytest with C{-s}).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from typing import Dict, List

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.e2e import connect, http_request, start_server

#: Keys in the store before the snapshot, and per batch that writes them.
KEYS = 3000
BATCH = 500
#: The writer's bound: it stops at this many commits if not stopped first.
MAX_WRITES = 3000
#: Keys per snapshot page is 1000: several pages, so commits land between them.
TIMEOUT = 30.0


def _key(i: int) -> str:
    return "s/%05d" % (i,)


def _writer(url: str, stop: threading.Event, done: List[int]) -> None:
    connection = connect(url, TIMEOUT)
    try:
        for n in range(MAX_WRITES):
            if stop.is_set():
                return
            status, _, _ = http_request(
                url, "PUT", "/v1/kv/" + _key(n % KEYS).replace("/", "%2F"), b"new-%d" % (n,),
                connection=connection,
            )
            if status in (200, 201):
                done.append(n)
    finally:
        connection.close()


def _listing_at(url: str, revision: int) -> Dict[str, dict]:
    """Every key under s/ as of C{revision}, from the history, page by page."""
    items: Dict[str, dict] = {}
    query = "/v1/kv/?prefix=s%%2F&limit=1000&values=1&revision=%d" % (revision,)
    for _ in range(KEYS):
        status, _, body = http_request(url, "GET", query, timeout=TIMEOUT)
        assert status == 200, body
        page = json.loads(body)
        items.update((item["key"], item) for item in page["items"])
        if page["cursor"] is None:
            return items
        query = "/v1/kv/?prefix=s%%2F&limit=1000&values=1&cursor=%s" % (page["cursor"],)
    raise AssertionError("the listing did not end")


class SnapshotUnderWritesTests(SynchronousTestCase):
    """A snapshot while writes go on, on the shelve store."""

    def test_snapshot_is_one_revision_under_writes(self):
        """
        A snapshot of 3,000 keys taken while a client commits one PUT after
        another finishes with its trailer, and each of its key lines equals
        the key at the snapshot's revision, though commits landed while it
        streamed; kvtwist snapshot save writes the same thing to a file.
        """
        server = start_server(self)
        url = server.url
        for first in range(0, KEYS, BATCH):
            ops = [{"op": "set", "key": _key(i), "value_base64": base64.b64encode(b"old").decode(),
                    "content_type": "application/octet-stream"} for i in range(first, first + BATCH)]
            status, _, body = http_request(url, "POST", "/v1/batch", json.dumps({"ops": ops}).encode(),
                                           timeout=TIMEOUT)
            self.assertEqual(status, 200, body)
        stop = threading.Event()
        done: List[int] = []
        writer = threading.Thread(target=_writer, args=(url, stop, done), daemon=True)
        writer.start()
        try:
            time.sleep(0.2)
            started = time.monotonic()
            status, headers, body = http_request(url, "GET", "/v1/snapshot?prefix=s%2F", timeout=TIMEOUT)
            seconds = time.monotonic() - started
            during = len(done)
            path = os.path.join(os.path.abspath(self.mktemp()) + "-dir", "snap.jsonl")
            os.makedirs(os.path.dirname(path))
            saved = subprocess.run(
                [sys.executable, "-c", "from kvtwist.cli import run; run()",
                 "--url", url, "snapshot", "save", path],
                capture_output=True, text=True, timeout=TIMEOUT,
            )
        finally:
            stop.set()
            writer.join(TIMEOUT)
        self.assertEqual((status, headers["content-type"]), (200, "application/x-ndjson"))
        lines = [json.loads(line) for line in body.splitlines()]
        header, keys, trailer = lines[0], lines[1:-1], lines[-1]
        revision = header["revision"]
        print("\nsnapshot: %d keys in %.2f s at revision %d; %d commits by then, store at %d after"
              % (len(keys), seconds, revision, during, revision + len(done) - during))
        self.assertEqual(trailer, {"end": True, "keys": KEYS, "revision": revision})
        self.assertGreater(len(done), 0)
        expected = _listing_at(url, revision)
        self.assertEqual(
            {line["key"]: (line["mod_revision"], line["value_base64"]) for line in keys},
            {key: (item["mod_revision"], item["value_base64"]) for key, item in expected.items()},
        )
        self.assertTrue(all(line["mod_revision"] <= revision for line in keys))
        self.assertEqual(saved.returncode, 0, saved.stderr)
        with open(path) as f:
            file_lines = [json.loads(line) for line in f]
        self.assertEqual(file_lines[-1]["end"], True)
        self.assertEqual(len(file_lines), KEYS + 2)
        # Restored offline into a new data directory, a server on it
        # answers the snapshot's values and ETags.
        restored = os.path.join(os.path.dirname(path), "restored")
        done_restore = subprocess.run(
            [sys.executable, "-c", "from kvtwist.cli import run; run()",
             "snapshot", "restore", path, "--data", restored],
            capture_output=True, text=True, timeout=TIMEOUT,
        )
        self.assertEqual(done_restore.returncode, 0, done_restore.stderr)
        again = start_server(self, data_dir=restored)
        snapshot_revision = file_lines[0]["revision"]
        served = _listing_at(again.url, snapshot_revision)
        self.assertEqual(
            {key: (item["mod_revision"], item["value_base64"]) for key, item in served.items()},
            {line["key"]: (line["mod_revision"], line["value_base64"]) for line in file_lines[1:-1]},
        )
        status, headers, _ = http_request(again.url, "GET", "/v1/kv/s%2F00000")
        self.assertEqual(headers["etag"], '"%d"' % (served["s/00000"]["mod_revision"],))

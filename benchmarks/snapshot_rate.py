"""
How long an online snapshot takes while writes go on.

    python -m benchmarks.snapshot_rate [KEYS] [WRITES_PER_SECOND]

Builds a store of KEYS keys (L{benchmarks.populate}), serves it with
C{twistd -n kvcache}, and while eight clients PUT one key after another,
aiming at WRITES_PER_SECOND together, reads C{GET /v1/snapshot} whole and checks its
trailer. Prints one JSON line: keys, seconds, keys per second, bytes, the
snapshot's revision and how many commits landed while it streamed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from typing import List, Optional

from benchmarks.populate import key_name, populate


#: Writing clients: each sleeps between its PUTs, so together they aim at
#: the rate whatever one PUT's latency.
WRITERS = 8


def measure(directory: str, keys: int, rate: float) -> dict:
    """Populate, serve, write at C{rate} per second, take one snapshot."""
    from tests.helpers.e2e import ServerProcess, connect, http_request

    populate(os.path.join(directory, "data"), keys)
    server = ServerProcess(os.path.join(directory, "data"), log_dir=directory, start_timeout=120)
    server.start()
    stop = threading.Event()
    commits: List[float] = []

    def write(first: int) -> None:
        connection = connect(server.url, 30)
        n = first
        while not stop.is_set():
            n += WRITERS
            http_request(server.url, "PUT", "/v1/kv/" + key_name(n % keys), b'"w"',
                         {"Content-Type": "application/json"}, connection=connection)
            commits.append(time.monotonic())
            time.sleep(WRITERS / rate)
        connection.close()

    writers = [threading.Thread(target=write, args=(w,), daemon=True) for w in range(WRITERS)]
    for writer in writers:
        writer.start()
    try:
        time.sleep(1.0)
        started = time.monotonic()
        status, _, body = http_request(server.url, "GET", "/v1/snapshot", timeout=600)
        ended = time.monotonic()
    finally:
        stop.set()
        for writer in writers:
            writer.join(30)
        server.terminate()
    lines = body.splitlines()
    header, trailer = json.loads(lines[0]), json.loads(lines[-1])
    if status != 200 or trailer.get("end") is not True or trailer["keys"] != keys:
        raise SystemExit("the snapshot failed: %d %r" % (status, lines[-1][:200]))
    during = sum(1 for t in commits if started <= t <= ended)
    seconds = ended - started
    return {
        "keys": keys,
        "seconds": round(seconds, 2),
        "keys_per_second": round(keys / seconds),
        "bytes": len(body),
        "revision": header["revision"],
        "commits_during": during,
        "commits_per_second_during": round(during / seconds, 1),
    }


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    keys = int(argv[0]) if argv else 100_000
    rate = float(argv[1]) if len(argv) > 1 else 200.0
    with tempfile.TemporaryDirectory(prefix="kvtwist-snapshot-rate-") as directory:
        print(json.dumps(measure(directory, keys, rate)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

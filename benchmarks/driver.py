"""
A one-client driver for durable seed cycles: C{POST /set} of one key, then
C{POST /commit}, over one keep-alive connection, each request timed on its
own. wrk's histogram mixes the two requests; this gives the commit's own
latency, which is what the store-size comparison is about.

The client's own cost (tens of microseconds of Python per request) is the
same at every store size, so it cancels in the size ratio.
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
from typing import Dict, List

from benchmarks.procs import HOST
from benchmarks.stats import percentile


def bulk_set(port: int, keys: int, prefix: str) -> Dict[str, object]:
    """
    One C{POST /set} of C{keys} new keys (C{prefix} + a number), then one
    C{POST /commit}, each timed in seconds.
    """
    conn = http.client.HTTPConnection(HOST, port, timeout=600)
    headers = {"Content-Type": "application/json"}
    body = json.dumps({"%s%06d" % (prefix, i): i for i in range(keys)}).encode()
    try:
        t0 = time.perf_counter()
        conn.request("POST", "/set", body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        set_status = r.status
        t1 = time.perf_counter()
        conn.request("POST", "/commit", body=b"", headers=headers)
        r = conn.getresponse()
        r.read()
        t2 = time.perf_counter()
    finally:
        conn.close()
    return {
        "keys": keys,
        "set_s": t1 - t0,
        "commit_s": t2 - t1,
        "errors": int(set_status not in (200, 201)) + int(r.status != 204),
    }


def seed_cycles(port: int, duration: float, key: str = "bench-size-probe", max_cycles: int = 1_000_000) -> Dict[str, object]:
    """
    Run set+commit cycles for C{duration} seconds; latencies in ms.

    Non-2xx answers are counted as errors and do not stop the run.
    """
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    headers = {"Content-Type": "application/json"}
    commit_ms: List[float] = []
    set_ms: List[float] = []
    errors = 0
    started = time.perf_counter()
    deadline = started + duration
    try:
        n = 0
        while time.perf_counter() < deadline and n < max_cycles:
            n += 1
            t0 = time.perf_counter()
            conn.request("POST", "/set", body=json.dumps({key: n}).encode(), headers=headers)
            r = conn.getresponse()
            r.read()
            errors += r.status not in (200, 201)
            t1 = time.perf_counter()
            conn.request("POST", "/commit", body=b"", headers=headers)
            r = conn.getresponse()
            r.read()
            errors += r.status != 204
            t2 = time.perf_counter()
            set_ms.append((t1 - t0) * 1e3)
            commit_ms.append((t2 - t1) * 1e3)
    finally:
        conn.close()
    elapsed = time.perf_counter() - started
    commits = sorted(commit_ms)
    return {
        "cycles": len(commit_ms),
        "seconds": elapsed,
        "cycles_per_s": len(commit_ms) / elapsed if elapsed else 0.0,
        "errors": errors,
        "commit_ms": {
            "p50": statistics.median(commits) if commits else float("nan"),
            "p90": percentile(commits, 0.90) if commits else float("nan"),
            "p99": percentile(commits, 0.99) if commits else float("nan"),
            "max": commits[-1] if commits else float("nan"),
        },
        "set_ms_p50": statistics.median(set_ms) if set_ms else float("nan"),
    }

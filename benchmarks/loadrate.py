"""
The rate of C{kvtwist load}: keys per second from a dump file into a
fresh kvcache, the command run as a user runs it (a subprocess, from a
file, with its checkpoint), timed from start to exit.

Each round starts a kvcache on an empty data directory, so every round
loads the same keys into the same state. The dump is written once: small
JSON values (the usual configuration and flag data) and one key in ten
with a base64 value and another content type, so both record shapes are
in the rate.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

from benchmarks.procs import HttpRequest, ProcessSet
from benchmarks.targets import KvcacheTarget, child_env

#: Keys loaded per round (C{--quick}: a tenth).
LOAD_KEYS = 50_000
#: What C{kvtwist load} must reach on the benchmark machine.
LOAD_RATE_MIN = 10_000.0
#: Seconds a load may take before the round is an error.
LOAD_TIMEOUT = 600.0


def write_dump(path: str, keys: int) -> None:
    """A dump of C{keys} keys, as C{kvtwist dump} writes them."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(keys):
            if i % 10 == 9:
                record = {"key": "load/%07d" % i, "value_base64": "aGVsbG8gd29ybGQ=",
                          "content_type": "text/plain", "expires": None}
            else:
                record = {"key": "load/%07d" % i, "value": {"id": i, "on": i % 2 == 0},
                          "content_type": "application/json", "expires": None}
            f.write(json.dumps(record) + "\n")


def kvtwist_argv(url: str, *args: str) -> List[str]:
    """The C{kvtwist} command, run by this interpreter."""
    return [sys.executable, "-c", "from kvtwist.cli import run; run()", "--url", url] + list(args)


def run(cfg, procs: ProcessSet, run_dir: str, results: dict, say: Callable[[str], None]) -> None:
    """Time C{kvtwist load} over C{cfg.rounds} rounds into C{results["load"]}."""
    keys = LOAD_KEYS // 10 if cfg.quick else LOAD_KEYS
    path = os.path.join(run_dir, "load.jsonl")
    write_dump(path, keys)
    runs: List[Dict[str, object]] = []
    results["load"] = {"keys": keys, "runs": runs, "command": "kvtwist load FILE --no-progress"}
    for round_no in range(1, cfg.rounds + 1):
        target = KvcacheTarget("kvcache-load-%d" % round_no, "", True, True, list(cfg.kvcache_args))
        server = target.start(procs, run_dir)
        entry: Dict[str, object] = {"round": round_no}
        try:
            server.wait_ready(HttpRequest("GET", "/v1/limits"), 60)
            url = "http://127.0.0.1:%d" % (server.port,)
            started = time.monotonic()
            done = subprocess.run(
                kvtwist_argv(url, "load", path, "--no-progress"), capture_output=True, text=True,
                timeout=LOAD_TIMEOUT, env=child_env(),
            )
            seconds = time.monotonic() - started
            if done.returncode != 0:
                raise RuntimeError("kvtwist load exited %d: %s" % (done.returncode, done.stderr[-500:]))
            loaded = json.loads(done.stdout)["loaded"]
            entry.update(seconds=seconds, loaded=loaded, keys_per_s=loaded / seconds)
            say("load round %d: %d keys in %.2f s, %.0f keys/s" % (round_no, loaded, seconds,
                                                                     loaded / seconds))
        except Exception as e:
            entry["error"] = str(e)
            say("load round %d: ERROR %s" % (round_no, str(e).splitlines()[0]))
        finally:
            procs.stop(server)
        runs.append(entry)
    rates = [r["keys_per_s"] for r in runs if "keys_per_s" in r]
    results["load"]["median_keys_per_s"] = statistics.median(rates) if rates else None


def check(results: dict) -> dict:
    """The report's row for the load rate."""
    name = "kvtwist load: keys/s from a dump file"
    target = ">= %.0f keys/s" % (LOAD_RATE_MIN,)
    load = results.get("load")
    if not load:
        return {"check": name, "status": "NOT RUN", "target": target,
                "note": "not measured in this run (--only load)"}
    rate = load.get("median_keys_per_s")
    if rate is None:
        errors = [r.get("error") for r in load["runs"] if "error" in r]
        return {"check": name, "status": "ERROR", "target": target, "note": (errors or [""])[0]}
    return {"check": name, "measured": rate, "unit": "keys/s", "target": target,
            "status": "PASS" if rate >= LOAD_RATE_MIN else "MISS",
            "note": "%d keys per round, fresh store each round" % (load["keys"],)}

"""
The benchmark run: start every target, measure them in interleaved rounds,
then the store-size and (opt-in) soak benchmarks, and write the results.

Interleaving (round 1: A, B, C...; round 2: A, B, C...) spreads whatever
else the machine is doing over all targets alike; medians over rounds are
reported, and every ratio is taken between numbers of this one run.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

from prometheus_client.parser import text_string_to_metric_families

from benchmarks import config as config_module
from benchmarks import driver, loadrate, machine, profile, report, scaleout, summary
from benchmarks.config import Config
from benchmarks.populate import key_name
from benchmarks.procs import HttpRequest, ProcessSet, http_call, rss_kib
from benchmarks.targets import (
    REPO,
    KvcacheTarget,
    Target,
    all_targets,
    child_env,
    kvcache_help,
    kvcache_nolog_args,
)
from benchmarks.wrk import (
    CYCLE_SCRIPT,
    WrkError,
    finish_wrk,
    fixed_request_script,
    run_wrk,
    soak_script,
    wrk_binary,
    write_script,
)

#: Seconds allowed to build a store of N keys: generous, but bounded.
POPULATE_TIMEOUT = 1800.0


def say(message: str) -> None:
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), message), flush=True)


def _raise_exit(signum, frame):
    # SIGTERM becomes an exception so every `finally` (and ProcessSet's
    # __exit__) runs and no server is left behind.
    raise SystemExit(128 + signum)


def main(argv: List[str]) -> int:
    cfg = config_module.parse(argv)
    if wrk_binary() is None:
        print("benchmarks: wrk is not installed (Debian: apt-get install wrk; ./run.sh bench does it)", file=sys.stderr)
        return 2
    if cfg.scaleout_section_to:
        # Checked before the run, not after minutes of it.
        try:
            scaleout.check_section(cfg.scaleout_section_to)
        except (OSError, ValueError) as e:
            print("benchmarks: --scaleout-section-to: %s" % (e,), file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _raise_exit)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    results: Dict[str, object] = {
        "schema": 1,
        "stamp": stamp,
        "command": {
            "python": " ".join(shlex.quote(a) for a in ["python", "-m", "benchmarks"] + cfg.argv),
            "run_sh": " ".join(shlex.quote(a) for a in ["./run.sh", "bench"] + cfg.argv),
            "argv": [sys.executable, "-m", "benchmarks"] + cfg.argv,
        },
        "config": _config_dict(cfg),
        "machine": machine.describe(),
        "targets": {},
        "skipped": {},
        "pending": [],
        "raw": {"get": [], "cycles": [], "sizes": []},
        "populate": {},
        "large": None,
        "soak": None,
        "load": None,
        "scaleout": None,
        "profiles": {},
        "started_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    run_dir = tempfile.mkdtemp(prefix="kvtwist-bench-")
    started = time.monotonic()
    try:
        with ProcessSet() as procs:
            if cfg.wants("get") or cfg.wants("cycles"):
                _peer_rounds(cfg, procs, run_dir, results)
            if cfg.wants("sizes") and cfg.wants_target("kvcache"):
                _store_sizes(cfg, procs, run_dir, results)
            if cfg.wants("large") and cfg.wants_target("kvcache"):
                _large_values(cfg, procs, run_dir, results)
            if cfg.wants("load") and cfg.wants_target("kvcache"):
                loadrate.run(cfg, procs, run_dir, results, say)
            if cfg.soak or "soak" in cfg.only:
                _soak(cfg, procs, run_dir, results)
            if cfg.scaleout or "scaleout" in cfg.only:
                scaleout.run(cfg, procs, run_dir, results, say)
    finally:
        if cfg.keep_tmp:
            say("kept %s" % run_dir)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    results["elapsed_s"] = time.monotonic() - started
    results["machine"]["load_average_at_end"] = machine.load_average()  # type: ignore[index]
    results["summary"] = summary.summarise(results)
    results["checks"] = summary.checks(results)
    paths = report.write_all(results, cfg.out, cfg.report_to)
    if cfg.scaleout_section_to and results["scaleout"]:
        scaleout.write_section(cfg.scaleout_section_to, scaleout.section(results))
        paths.append(cfg.scaleout_section_to)
    say("wrote %s" % ", ".join(paths))
    if any(c["status"] != "NOT RUN" for c in results["checks"]):  # type: ignore[union-attr]
        print(report.checks_table(results["checks"]))  # type: ignore[arg-type]
    if results["scaleout"]:
        print(scaleout.section(results))
    return 0


def _config_dict(cfg: Config) -> dict:
    return {k: v for k, v in vars(cfg).items() if k != "argv"}


# -- GET and seed cycles, all targets side by side --------------------------


def _peer_rounds(cfg: Config, procs: ProcessSet, run_dir: str, results: dict) -> None:
    nolog = cfg.kvcache_nolog_args
    if nolog is None:
        nolog = kvcache_nolog_args(kvcache_help())
    skipped = results["skipped"]
    targets = [t for t in all_targets(nolog, skipped) if cfg.wants_target(t.name)]
    for t in targets:
        if isinstance(t, KvcacheTarget):
            t.extra_args = cfg.kvcache_args + t.extra_args
    if "kvcache-nolog" in skipped:
        results["pending"].append(
            "kvcache without an access log: compared with ceiling-nolog once twistd kvcache "
            "can turn its access log off (--access-log off)"
        )

    # Start them all at once (startup overlaps), then wait for each.
    start_errors: Dict[str, str] = {}
    for t in targets:
        try:
            t.start(procs, run_dir)
        except OSError as e:  # e.g. a binary that cannot be executed
            start_errors[t.name] = str(e)
    running: List[Target] = []
    for t in targets:
        info = {"description": t.description, "access_log": t.access_log, "seed_api": t.seed_api,
                "argv": t.server.process.args if t.server else None}
        try:
            if t.name in start_errors:
                raise RuntimeError(start_errors[t.name])
            info["startup_s"] = t.wait_ready()
            info["rss_kib_ready"] = rss_kib(t.server.pid)
            running.append(t)
            say("%s ready on port %d (%.2f s)" % (t.name, t.server.port, info["startup_s"]))
        except Exception as e:  # a target that cannot start is reported, not fatal
            info["error"] = str(e)
            skipped[t.name] = "failed to start: %s" % (str(e).splitlines()[0],)
            say("%s failed to start: %s" % (t.name, e))
            if t.server is not None:
                procs.stop(t.server)
        results["targets"][t.name] = info

    scripts = {t.name: write_script(run_dir, "get-" + t.name, fixed_request_script(t.read_request())) for t in running}
    cycle_script = write_script(run_dir, "cycles", CYCLE_SCRIPT)
    # The seed cycles compare kvcache with the baseline, which logs every
    # request: kvcache runs them with its default access log only.
    seed_targets = [t for t in running if t.seed_api and t.access_log]

    if cfg.warmup > 0:
        for t in running:
            _try_wrk(lambda: run_wrk(t.server.port, scripts[t.name], 50, cfg.warmup))
        say("warm-up done")

    for round_no in range(1, cfg.rounds + 1):
        if cfg.wants("get"):
            for conns in cfg.get_connections:
                for t in running:
                    # One wrk thread: wrk keeps one core, the server the other.
                    run = _try_wrk(lambda: run_wrk(t.server.port, scripts[t.name], conns, cfg.duration, threads=1))
                    results["raw"]["get"].append(dict(run, round=round_no, target=t.name, connections=conns))
                    _say_run("GET", t.name, conns, run)
        if cfg.wants("cycles"):
            for clients in cfg.cycle_clients:
                for t in seed_targets:
                    # One connection per wrk thread makes the script's
                    # set/commit toggle a per-client one.
                    run = _try_wrk(lambda: run_wrk(t.server.port, cycle_script, clients, cfg.duration, threads=clients))
                    if "rate" in run:
                        run["cycles_per_s"] = run["rate"] / 2
                    results["raw"]["cycles"].append(dict(run, round=round_no, target=t.name, clients=clients))
                    _say_run("cycles", t.name, clients, run)

    kvcache = [t for t in running if t.name == "kvcache"]
    if kvcache and cfg.wants("cycles"):
        try:
            results["group_commit"] = _syncs_waited(kvcache[0].server.port)
        except (OSError, RuntimeError) as e:
            results["group_commit"] = {"error": str(e)}

    if cfg.profile:
        _profile(cfg, kvcache, scripts, cycle_script, run_dir, results)

    for t in running:
        results["targets"][t.name]["rss_kib_end"] = rss_kib(t.server.pid)
    for name, status in procs.stop_many([t.server for t in running]).items():
        results["targets"][name]["exit_status"] = status


def _syncs_waited(port: int) -> dict:
    """
    From kvcache's C{/v1/metrics} after its seed cycles: how many commits it
    answered and how many waited for more syncs than the one in progress
    and their own (group commit promises none;
    C{kvtwist_commit_syncs_waited}).
    """
    status, body = http_call(port, HttpRequest("GET", "/v1/metrics"))
    if status != 200:
        raise RuntimeError("GET /v1/metrics answered %d" % (status,))
    buckets = {
        sample.labels["le"]: sample.value
        for family in text_string_to_metric_families(body.decode("utf-8", "replace"))
        if family.name == "kvtwist_commit_syncs_waited"
        for sample in family.samples
        if sample.name.endswith("_bucket")
    }
    if "+Inf" not in buckets or "2.0" not in buckets:
        raise RuntimeError("no kvtwist_commit_syncs_waited histogram in /v1/metrics")
    return {
        "commits": int(buckets["+Inf"]),
        "own_sync_only": int(buckets.get("1.0", 0)),
        "waited_longer": int(buckets["+Inf"] - buckets["2.0"]),
    }


def _try_wrk(call) -> dict:
    try:
        return call().as_dict()
    except WrkError as e:
        return {"error": str(e)}


def _say_run(kind: str, name: str, n: int, run: dict) -> None:
    if "error" in run:
        say("%s %s x%d: ERROR %s" % (kind, name, n, run["error"].splitlines()[0]))
        return
    lat = run["latency_us"]
    say("%-6s %-14s x%-3d %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d" % (
        kind, name, n, run["rate"], lat["p50"] / 1e3, lat["p99"] / 1e3, sum(run["errors"].values())))


def _profile(cfg: Config, targets: List[Target], scripts: dict, cycle_script: str, run_dir: str, results: dict) -> None:
    if profile.py_spy_binary() is None:
        results["profiles"]["skipped"] = "py-spy is not installed"
        return
    duration = max(cfg.duration, 5.0)
    for t in targets:
        for label, script, conns, idle in (
            ("get-50", scripts[t.name], 50, False),
            ("cycles-1", cycle_script, 1, True),
            ("cycles-16", cycle_script, 16, True),
        ):
            output = os.path.join(run_dir, "profile-%s-%s.txt" % (t.name, label))
            spy = profile.start_py_spy(t.server.pid, duration, output, idle=idle)
            try:
                time.sleep(0.5)  # let py-spy attach before the load starts
                run = _try_wrk(lambda: run_wrk(t.server.port, script, conns, duration - 1, threads=conns if label.startswith("cycles") else 1))
                spy_out, _ = spy.communicate(timeout=duration + 30)
            finally:
                if spy.poll() is None:
                    spy.kill()
                    spy.wait()
            entry = {"load": run, "idle_included": idle}
            if os.path.exists(output):
                entry.update(profile.summarise(output))
            else:
                entry["error"] = (spy_out or "py-spy wrote nothing")[-1000:]
            results["profiles"]["%s %s" % (t.name, label)] = entry
            say("profiled %s under %s" % (t.name, label))


# -- a one-key commit into stores of growing size ---------------------------


def _start_populate(size: int, directory: str, large: int = 0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.populate", directory, str(size), str(large)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=child_env(),
    )


def _finish_populate(size: int, process: subprocess.Popen) -> dict:
    try:
        out, err = process.communicate(timeout=POPULATE_TIMEOUT)
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError("populating %d keys failed:\n%s" % (size, err[-2000:]))
    return json.loads(out.strip().splitlines()[-1])


def _populate(size: int, directory: str) -> dict:
    return _finish_populate(size, _start_populate(size, directory))


def _store_sizes(cfg: Config, procs: ProcessSet, run_dir: str, results: dict) -> None:
    dirs = {}
    # Built side by side (two cores): the largest store sets the pace.
    say("populating stores of %s keys" % ", ".join(str(s) for s in cfg.sizes))
    builders = {}
    try:
        for size in cfg.sizes:
            builders[size] = _start_populate(size, os.path.join(run_dir, "store-%d" % size))
        for size, builder in builders.items():
            try:
                results["populate"][str(size)] = _finish_populate(size, builder)
                dirs[size] = os.path.join(run_dir, "store-%d" % size)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                results["populate"][str(size)] = {"error": str(e)}
    finally:
        for builder in builders.values():
            if builder.poll() is None:
                builder.kill()
                builder.wait()
    probe = HttpRequest("GET", "/" + key_name(0))
    for round_no in range(1, cfg.rounds + 1):
        for size, directory in dirs.items():
            target = KvcacheTarget("kvcache-%d" % size, "", True, True, list(cfg.kvcache_args))
            server = target.start(procs, run_dir, data_dir=directory)
            entry: Dict[str, object] = {"round": round_no, "keys": size}
            try:
                entry["startup_s"] = server.wait_ready(probe, POPULATE_TIMEOUT)
                entry["rss_kib_ready"] = rss_kib(server.pid)
                entry.update(driver.seed_cycles(server.port, cfg.size_duration))
                entry["rss_kib_after"] = rss_kib(server.pid)
            except Exception as e:
                entry["error"] = str(e)
            finally:
                entry["exit_status"] = procs.stop(server)
            results["raw"]["sizes"].append(entry)
            if "error" in entry:
                say("store of %d keys: ERROR %s" % (size, str(entry["error"]).splitlines()[0]))
            else:
                say("store of %d keys: startup %.2f s, RSS %.1f MiB, commit p50 %.2f ms, %.0f cycles/s" % (
                    size, entry["startup_s"], (entry["rss_kib_ready"] or 0) / 1024,
                    entry["commit_ms"]["p50"], entry["cycles_per_s"]))


# -- large values stored ---------------------------------------------------

#: The large-values store: this many small keys, among LARGE_VALUES values
#: of 1000 KiB (committed first, so that they sit high in the store's tree).
LARGE_STORE_KEYS = 1000
LARGE_VALUES = 16
#: New keys in the timed bulk C{POST /set}.
BULK_SET_KEYS = 10_000


def _large_values(cfg: Config, procs: ProcessSet, run_dir: str, results: dict) -> None:
    """
    With 16 values of 1000 KiB stored: one-key commits (the set+commit
    driver) and one C{POST /set} of 10,000 new keys plus its C{/commit},
    per round. A store layout whose key lookups read values shows here.
    """
    directory = os.path.join(run_dir, "store-large")
    say("populating a store of %d keys and %d values of 1000 KiB" % (LARGE_STORE_KEYS, LARGE_VALUES))
    large: Dict[str, object] = {"keys": LARGE_STORE_KEYS, "large_values": LARGE_VALUES,
                                "bulk_keys": BULK_SET_KEYS, "runs": []}
    results["large"] = large
    try:
        large["populate"] = _finish_populate(
            LARGE_STORE_KEYS, _start_populate(LARGE_STORE_KEYS, directory, LARGE_VALUES))
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        large["populate"] = {"error": str(e)}
        return
    probe = HttpRequest("GET", "/" + key_name(0))
    for round_no in range(1, cfg.rounds + 1):
        target = KvcacheTarget("kvcache-large", "", True, True, list(cfg.kvcache_args))
        server = target.start(procs, run_dir, data_dir=directory)
        entry: Dict[str, object] = {"round": round_no}
        try:
            entry["startup_s"] = server.wait_ready(probe, POPULATE_TIMEOUT)
            entry.update(driver.seed_cycles(server.port, cfg.size_duration))
            entry["bulk"] = driver.bulk_set(server.port, BULK_SET_KEYS, "bulk-%d-" % round_no)
        except Exception as e:
            entry["error"] = str(e)
        finally:
            entry["exit_status"] = procs.stop(server)
        large["runs"].append(entry)  # type: ignore[attr-defined]
        if "error" in entry:
            say("large values: ERROR %s" % str(entry["error"]).splitlines()[0])
        else:
            say("large values: 1-key commit p50 %.2f ms; /set of %d keys %.2f s, its /commit %.2f s" % (
                entry["commit_ms"]["p50"], BULK_SET_KEYS, entry["bulk"]["set_s"], entry["bulk"]["commit_s"]))


# -- the soak ---------------------------------------------------------------


def _read_every_key(port: int, keys: int) -> float:
    """
    GET each of the soak store's keys once, on one keep-alive connection;
    returns the seconds it took. The soak starts on a warm read cache:
    filling a bounded cache is growth by design, and left to the random
    GETs of the soak it would still be going on after the first minute
    (100k keys, about 2,000 GETs a second), passing for a leak.
    """
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for i in range(keys):
            conn.request("GET", "/" + key_name(i))
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError("warming the soak's cache: GET /%s answered %d %r" % (key_name(i), response.status, body[:200]))
    finally:
        conn.close()
    return time.monotonic() - started


def _soak(cfg: Config, procs: ProcessSet, run_dir: str, results: dict) -> None:
    soak: Dict[str, object] = {
        "duration_s": cfg.soak_duration, "keys": cfg.soak_keys,
        "connections": cfg.soak_connections, "get_share": 0.9, "keys_per_commit": 100,
        "interval_s": cfg.soak_interval,
    }
    results["soak"] = soak
    directory = os.path.join(run_dir, "soak-store")
    say("soak: populating %d keys" % cfg.soak_keys)
    try:
        soak["populate"] = _populate(cfg.soak_keys, directory)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        soak["error"] = str(e)
        return
    target = KvcacheTarget("kvcache-soak", "", True, True, list(cfg.kvcache_args))
    server = target.start(procs, run_dir, data_dir=directory)
    port = server.port
    try:
        soak["startup_s"] = server.wait_ready(HttpRequest("GET", "/" + key_name(0)), POPULATE_TIMEOUT)
        soak["rss_mib_before_warm_up"] = (rss_kib(server.pid) or 0) / 1024
        say("soak: warming the read cache (one GET of each of %d keys)" % cfg.soak_keys)
        soak["warm_up_s"] = _read_every_key(port, cfg.soak_keys)
        soak["rss_mib_after_warm_up"] = (rss_kib(server.pid) or 0) / 1024
        script = write_script(run_dir, "soak", soak_script(cfg.soak_keys, 0.9, 100))
        samples: List[List[float]] = []
        soak["rss_samples"] = samples
        t0 = time.monotonic()
        samples.append([0.0, rss_kib(server.pid) or 0])
        wrk = run_wrk(port, script, cfg.soak_connections, cfg.soak_duration,
                      threads=cfg.soak_connections, background=True)
        try:
            next_sample = t0 + cfg.soak_interval
            while wrk.poll() is None:
                time.sleep(max(0.0, min(1.0, next_sample - time.monotonic())))
                if time.monotonic() >= next_sample:
                    samples.append([round(time.monotonic() - t0, 1), rss_kib(server.pid) or 0])
                    next_sample += cfg.soak_interval
                    if samples[-1][1] == 0:
                        break  # the server is gone; wrk's errors will say the rest
            soak["load"] = finish_wrk(wrk, cfg.soak_duration + 60).as_dict()
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
        samples.append([round(time.monotonic() - t0, 1), rss_kib(server.pid) or 0])
        soak["server_alive_at_end"] = server.process.poll() is None
    except Exception as e:
        soak["error"] = str(e)
    finally:
        soak["exit_status"] = procs.stop(server)
    say("soak done: %s" % json.dumps({k: soak.get(k) for k in ("exit_status", "error") if soak.get(k) is not None}))

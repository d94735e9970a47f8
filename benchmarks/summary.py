"""
From raw per-round numbers to medians, and from medians to the targets of
docs/performance.md: each check names the two numbers of this run it divides,
the target and PASS or MISS. Nothing is compared across runs.
"""

from __future__ import annotations

import statistics
from typing import Dict, List, Optional

from benchmarks import loadrate, scaleout

#: The thresholds of the targets (docs/performance.md).
GET_RATE_MIN = 0.9
GET_P99_MAX = 2.0
CYCLES_1_MIN = 1.0
CYCLES_16_MIN = 3.0
COMMIT_GROWTH_MAX = 2.0
#: --workers 2 against one worker (GET x50), against two ceiling processes,
#: and what one client may lose to the workers' extra hop.
WORKERS_GET_MIN = 1.4
WORKERS_CEILING_MIN = 0.85
WORKERS_ONE_CLIENT_MIN = 0.9
SOAK_RSS_MAX = 1.2
#: The store size the commit-growth target is about.
TARGET_STORE = 1_000_000


def _median(values: List[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ok_runs(runs: List[dict]) -> List[dict]:
    return [r for r in runs if "error" not in r]


def summarise(results: dict) -> dict:
    """Medians over rounds for every measurement of C{results}."""
    raw = results["raw"]
    out: Dict[str, object] = {"get": {}, "cycles": {}, "sizes": {}, "large": None, "soak": None,
                              "scaleout": scaleout.summarise(results.get("scaleout"))}

    groups: Dict[tuple, List[dict]] = {}
    for r in raw["get"]:
        groups.setdefault((r["target"], r["connections"]), []).append(r)
    for (target, conns), runs in groups.items():
        ok = _ok_runs(runs)
        out["get"].setdefault(target, {})[str(conns)] = {
            "rounds": len(ok),
            "failed_runs": len(runs) - len(ok),
            "rate": _median([r["rate"] for r in ok]),
            "p50_ms": _median([r["latency_us"]["p50"] / 1e3 for r in ok]),
            "p99_ms": _median([r["latency_us"]["p99"] / 1e3 for r in ok]),
            "errors": sum(sum(r["errors"].values()) for r in ok),
        }

    groups = {}
    for r in raw["cycles"]:
        groups.setdefault((r["target"], r["clients"]), []).append(r)
    for (target, clients), runs in groups.items():
        ok = _ok_runs(runs)
        out["cycles"].setdefault(target, {})[str(clients)] = {
            "rounds": len(ok),
            "failed_runs": len(runs) - len(ok),
            "cycles_per_s": _median([r["cycles_per_s"] for r in ok]),
            "p50_ms": _median([r["latency_us"]["p50"] / 1e3 for r in ok]),
            "p99_ms": _median([r["latency_us"]["p99"] / 1e3 for r in ok]),
            "errors": sum(sum(r["errors"].values()) for r in ok),
        }

    sizes: Dict[int, List[dict]] = {}
    for r in raw["sizes"]:
        sizes.setdefault(r["keys"], []).append(r)
    for keys, runs in sorted(sizes.items()):
        ok = _ok_runs(runs)
        populate = results.get("populate", {}).get(str(keys), {})
        out["sizes"][str(keys)] = {
            "rounds": len(ok),
            "failed_runs": len(runs) - len(ok),
            "populate_s": populate.get("seconds"),
            "file_bytes": sum(populate.get("files", {}).values()) if "files" in populate else None,
            "startup_s": _median([r["startup_s"] for r in ok]),
            "rss_mib_ready": _median([r["rss_kib_ready"] / 1024 for r in ok if r.get("rss_kib_ready")]),
            "rss_mib_after": _median([r["rss_kib_after"] / 1024 for r in ok if r.get("rss_kib_after")]),
            "commit_p50_ms": _median([r["commit_ms"]["p50"] for r in ok]),
            "commit_p99_ms": _median([r["commit_ms"]["p99"] for r in ok]),
            "cycles_per_s": _median([r["cycles_per_s"] for r in ok]),
            "errors": sum(r["errors"] for r in ok),
        }

    large = results.get("large")
    if large and large.get("runs"):
        ok = _ok_runs(large["runs"])
        out["large"] = {
            "keys": large["keys"],
            "large_values": large["large_values"],
            "bulk_keys": large["bulk_keys"],
            "rounds": len(ok),
            "failed_runs": len(large["runs"]) - len(ok),
            "commit_p50_ms": _median([r["commit_ms"]["p50"] for r in ok]),
            "commit_p99_ms": _median([r["commit_ms"]["p99"] for r in ok]),
            "bulk_set_s": _median([r["bulk"]["set_s"] for r in ok]),
            "bulk_commit_s": _median([r["bulk"]["commit_s"] for r in ok]),
            "errors": sum(r["errors"] + r["bulk"]["errors"] for r in ok),
        }

    soak = results.get("soak")
    if soak and "rss_samples" in soak:
        out["soak"] = _soak_summary(soak)
    return out


def _soak_summary(soak: dict) -> dict:
    samples = soak["rss_samples"]
    # "After the first minute"; a shortened soak uses its first quarter.
    mark = 60.0 if soak["duration_s"] >= 120 else soak["duration_s"] / 4
    after_mark = [s for s in samples if s[0] >= mark]
    first = after_mark[0] if after_mark else None
    end = samples[-1] if samples else None
    load = soak.get("load") or {}
    counters = load.get("counters", {})
    errors = sum(load.get("errors", {}).values()) if load else None
    return {
        "mark_s": mark,
        "rss_mib_at_mark": first[1] / 1024 if first else None,
        "rss_mib_end": end[1] / 1024 if end else None,
        "rss_ratio": (end[1] / first[1]) if first and end and first[1] else None,
        "requests": load.get("requests"),
        "rate": load.get("rate"),
        "wrk_errors": load.get("errors"),
        "errors": errors,
        "gets": counters.get("get"),
        "commits": counters.get("commit"),
        "bad_answers": sum(counters.get(k, 0) for k in ("get_bad", "set_bad", "commit_bad")),
        "server_alive_at_end": soak.get("server_alive_at_end"),
        "warm_up_s": soak.get("warm_up_s"),
        "rss_mib_before_warm_up": soak.get("rss_mib_before_warm_up"),
        "rss_mib_after_warm_up": soak.get("rss_mib_after_warm_up"),
    }


def _status(ok: Optional[bool]) -> str:
    return "ERROR" if ok is None else ("PASS" if ok else "MISS")


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def checks(results: dict) -> List[dict]:
    """One row per target (docs/performance.md), in the report's order."""
    s = results["summary"]
    rows: List[dict] = []
    get = s["get"]
    pending_note = "kvcache cannot turn its access log off yet: comparison pending"
    for conns in ("1", "50"):
        for kv, ceiling, label in (("kvcache", "ceiling-log", "with access log"),
                                   ("kvcache-nolog", "ceiling-nolog", "without access log")):
            mine = get.get(kv, {}).get(conns)
            ref = get.get(ceiling, {}).get(conns)
            name = "GET x%s conn, %s" % (conns, label)
            if mine is None or ref is None:
                reason = results["skipped"].get(kv) or results["skipped"].get(ceiling) or "not measured in this run"
                status = "PENDING" if kv in results["skipped"] and "no option" in results["skipped"][kv] else "NOT RUN"
                rows.append({"check": name + ": req/s", "status": status, "note": pending_note if status == "PENDING" else reason,
                             "target": ">= %.1f x %s" % (GET_RATE_MIN, ceiling)})
                rows.append({"check": name + ": p99", "status": status, "note": pending_note if status == "PENDING" else reason,
                             "target": "<= %.0f x %s" % (GET_P99_MAX, ceiling)})
                continue
            ratio = _ratio(mine["rate"], ref["rate"])
            rows.append({
                "check": name + ": req/s", "measured": mine["rate"], "reference": ref["rate"], "unit": "req/s",
                "against": ceiling, "ratio": ratio, "target": ">= %.1f x %s" % (GET_RATE_MIN, ceiling),
                "status": _status(None if ratio is None else ratio >= GET_RATE_MIN),
            })
            ratio = _ratio(mine["p99_ms"], ref["p99_ms"])
            rows.append({
                "check": name + ": p99", "measured": mine["p99_ms"], "reference": ref["p99_ms"], "unit": "ms",
                "against": ceiling, "ratio": ratio, "target": "<= %.0f x %s" % (GET_P99_MAX, ceiling),
                "status": _status(None if ratio is None else ratio <= GET_P99_MAX),
            })

    cycles = s["cycles"]
    base1 = cycles.get("baseline", {}).get("1")
    for clients, minimum in (("1", CYCLES_1_MIN), ("16", CYCLES_16_MIN)):
        mine = cycles.get("kvcache", {}).get(clients)
        name = "Durable seed cycles, %s client%s" % (clients, "" if clients == "1" else "s")
        target = ">= %.0f x baseline (1 client)" % (minimum,)
        if mine is None or base1 is None:
            rows.append({"check": name, "status": "NOT RUN", "target": target,
                         "note": "kvcache or the baseline was not measured in this run"})
            continue
        ratio = _ratio(mine["cycles_per_s"], base1["cycles_per_s"])
        row = {"check": name, "measured": mine["cycles_per_s"], "reference": base1["cycles_per_s"],
               "unit": "cycles/s", "against": "baseline x1", "ratio": ratio, "target": target,
               "status": _status(None if ratio is None else ratio >= minimum)}
        if clients != "1":
            base16 = cycles.get("baseline", {}).get(clients)
            if base16:
                row["note"] = "baseline at %s clients: %.0f cycles/s (%.2f x)" % (
                    clients, base16["cycles_per_s"], _ratio(mine["cycles_per_s"], base16["cycles_per_s"]) or 0)
        rows.append(row)

    _workers_checks(results, rows)

    waits = results.get("group_commit")
    name = "Group commit: no commit waits more than one sync behind another"
    if waits and "commits" in waits:
        rows.append({"check": name, "measured": waits["waited_longer"], "unit": "commits",
                     "target": "0 of the commits answered during the cycles",
                     "status": _status(waits["waited_longer"] == 0),
                     "note": "%d commits, %d with the store thread idle (their own sync only), the rest "
                             "behind the sync in progress" % (waits["commits"], waits["own_sync_only"])})
    elif waits:
        rows.append({"check": name, "status": "ERROR", "target": "0", "note": waits.get("error", "")})

    rows.append(loadrate.check(results))

    sizes = s["sizes"]
    measured_sizes = sorted(int(k) for k, v in sizes.items() if v.get("commit_p50_ms") is not None)
    if len(measured_sizes) >= 2:
        small, large = measured_sizes[0], measured_sizes[-1]
        a, b = sizes[str(large)], sizes[str(small)]
        ratio = _ratio(a["commit_p50_ms"], b["commit_p50_ms"])
        row = {"check": "1-key commit (median) at %s vs %s keys" % (_keys(large), _keys(small)),
               "measured": a["commit_p50_ms"], "reference": b["commit_p50_ms"], "unit": "ms",
               "against": "%s keys" % _keys(small), "ratio": ratio,
               "target": "<= %.0f x (1M vs 1k keys)" % COMMIT_GROWTH_MAX,
               "status": _status(None if ratio is None else ratio <= COMMIT_GROWTH_MAX)}
        if large < TARGET_STORE:
            row["note"] = "%s keys stands in for 1M in this run" % _keys(large)
        rows.append(row)
        rows.append({"check": "Startup time at %s keys" % _keys(large), "measured": a["startup_s"], "unit": "s",
                     "target": "printed and stated in the docs", "status": "INFO"})
        rows.append({"check": "RSS after startup at %s keys" % _keys(large), "measured": a["rss_mib_ready"],
                     "unit": "MiB", "target": "printed and stated in the docs", "status": "INFO",
                     "note": "after the commit load: %s MiB" % _fmt(a["rss_mib_after"])})
    else:
        rows.append({"check": "1-key commit at 1M vs 1k keys", "status": "NOT RUN",
                     "target": "<= %.0f x" % COMMIT_GROWTH_MAX, "note": "fewer than two store sizes measured"})

    soak = s.get("soak")
    if soak is None:
        note = (results.get("soak") or {}).get("error") or "opt-in: run with --soak"
        status = "ERROR" if results.get("soak") else "NOT RUN"
        rows.append({"check": "Soak: errors", "status": status, "target": "0", "note": note})
        rows.append({"check": "Soak: RSS end / RSS after first minute", "status": status,
                     "target": "<= %.1f" % SOAK_RSS_MAX, "note": note})
    else:
        rows.append({"check": "Soak: errors", "measured": soak["errors"], "unit": "errors", "target": "0",
                     "status": _status(None if soak["errors"] is None else soak["errors"] == 0 and soak["bad_answers"] == 0),
                     "note": "%s requests, %s non-2xx answers" % (soak["requests"], soak["bad_answers"])})
        rows.append({"check": "Soak: RSS end / RSS after first minute", "measured": soak["rss_mib_end"],
                     "reference": soak["rss_mib_at_mark"], "unit": "MiB", "ratio": soak["rss_ratio"],
                     "against": "RSS at %.0f s" % soak["mark_s"], "target": "<= %.1f" % SOAK_RSS_MAX,
                     "status": _status(None if soak["rss_ratio"] is None else soak["rss_ratio"] <= SOAK_RSS_MAX)})
    _add_shortfall(rows)
    return rows


def _workers_checks(results: dict, rows: List[dict]) -> None:
    """The --workers 2 targets: against one worker, the two-process ceiling and the baseline."""
    s = results["summary"]
    get, cycles = s["get"], s["cycles"]

    def row(name: str, mine: Optional[dict], ref: Optional[dict], key: str, against: str, bound: float,
            at_least: bool, unit: str) -> None:
        target = "%s %.2f x %s" % (">=" if at_least else "<=", bound, against)
        if not mine or not ref or mine.get(key) is None or not ref.get(key):
            rows.append({"check": name, "status": "NOT RUN", "target": target, "note": "not measured in this run"})
            return
        ratio = mine[key] / ref[key]
        rows.append({"check": name, "measured": mine[key], "reference": ref[key], "unit": unit, "against": against,
                     "ratio": ratio, "target": target,
                     "status": _status(ratio >= bound if at_least else ratio <= bound)})

    for w2, one, ceiling, label in (("kvcache-w2", "kvcache", "ceiling2-log", "with access log"),
                                    ("kvcache-w2-nolog", "kvcache-nolog", "ceiling2-nolog", "without access log")):
        mine = get.get(w2, {}).get("50")
        row("Workers 2: GET x50 conn, %s: req/s vs 1 worker" % label, mine, get.get(one, {}).get("50"),
            "rate", one, WORKERS_GET_MIN, True, "req/s")
        row("Workers 2: GET x50 conn, %s: req/s vs two-process ceiling" % label, mine,
            get.get(ceiling, {}).get("50"), "rate", ceiling, WORKERS_CEILING_MIN, True, "req/s")
        row("Workers 2: GET x50 conn, %s: p99 vs two-process ceiling" % label, mine,
            get.get(ceiling, {}).get("50"), "p99_ms", ceiling, GET_P99_MAX, False, "ms")
        row("Workers 2: GET x1 conn, %s: req/s vs 1 worker" % label, get.get(w2, {}).get("1"),
            get.get(one, {}).get("1"), "rate", one, WORKERS_ONE_CLIENT_MIN, True, "req/s")
    row("Workers 2: durable seed cycles, 16 clients", cycles.get("kvcache-w2", {}).get("16"),
        cycles.get("baseline", {}).get("1"), "cycles_per_s", "baseline x1", CYCLES_16_MIN, True, "cycles/s")
    row("Workers 2: durable seed cycles, 1 client vs 1 worker", cycles.get("kvcache-w2", {}).get("1"),
        cycles.get("kvcache", {}).get("1"), "cycles_per_s", "kvcache x1", WORKERS_ONE_CLIENT_MIN, True, "cycles/s")


def _add_shortfall(rows: List[dict]) -> None:
    """Say in each MISS row by how much the target was missed."""
    for row in rows:
        ratio, target = row.get("ratio"), row.get("target", "")
        if row["status"] != "MISS" or ratio is None:
            continue
        try:
            bound = float(target.split()[1])
        except (IndexError, ValueError):
            continue
        if target.startswith(">="):
            text = "%.0f %% short of %g x" % (100 * (1 - ratio / bound), bound)
        else:
            text = "%.0f %% over %g x" % (100 * (ratio / bound - 1), bound)
        row["note"] = text + ("; " + row["note"] if row.get("note") else "")


def _keys(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return "%dM" % (n // 1_000_000)
    if n >= 1000 and n % 1000 == 0:
        return "%dk" % (n // 1000)
    return str(n)


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else "%.1f" % value

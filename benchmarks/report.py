"""
Writing a run down: C{<stamp>.json} (every raw number), C{<stamp>.md} (the
table of the performance targets of docs/performance.md first, then the
details, the machine and the exact command) and C{<stamp>.png}; with C{--report-to}, a copy of the Markdown
(and the plot, under C{img/} beside it) for the docs.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import List, Optional

from benchmarks import plot, scaleout

STATUS_MARK = {"PASS": "PASS", "MISS": "**MISS**", "ERROR": "**ERROR**"}


def _num(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if abs(value) >= 100:
            return "{:,.0f}".format(value)
        return "%.*f" % (digits, value)
    return "{:,}".format(value) if isinstance(value, int) else str(value)


def checks_table(checks: List[dict]) -> str:
    lines = [
        "| target | measured | compared with | ratio | target | result | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        unit = c.get("unit", "")
        measured = "%s %s" % (_num(c.get("measured")), unit) if "measured" in c else "-"
        reference = ("%s %s (%s)" % (_num(c.get("reference")), unit, c.get("against", ""))) if c.get("reference") is not None else "-"
        ratio = "%.2f x" % c["ratio"] if c.get("ratio") is not None else "-"
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            c["check"], measured, reference, ratio, c.get("target", ""),
            STATUS_MARK.get(c["status"], c["status"]), c.get("note", "")))
    return "\n".join(lines)


def _get_table(results: dict) -> str:
    get = results["summary"]["get"]
    if not get:
        return "_not measured in this run_"
    ceil = {name: get.get(name, {}) for name in ("ceiling-log", "ceiling-nolog")}
    lines = [
        "| server | conns | req/s | p50 ms | p99 ms | x ceiling-log | x ceiling-nolog | errors | rounds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target, by_conns in get.items():
        for conns, m in sorted(by_conns.items(), key=lambda kv: int(kv[0])):
            ratios = []
            for name in ("ceiling-log", "ceiling-nolog"):
                ref = ceil[name].get(conns)
                ratios.append("%.2f" % (m["rate"] / ref["rate"]) if ref and ref["rate"] and m["rate"] else "-")
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                target, conns, _num(m["rate"]), _num(m["p50_ms"]), _num(m["p99_ms"]),
                ratios[0], ratios[1], m["errors"], m["rounds"]))
    return "\n".join(lines)


def _cycles_table(results: dict) -> str:
    cycles = results["summary"]["cycles"]
    if not cycles:
        return "_not measured in this run_"
    base1 = (cycles.get("baseline") or {}).get("1")
    lines = [
        "| server | clients | cycles/s | request p50 ms | request p99 ms | x baseline (1 client) | errors | rounds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target, by_clients in cycles.items():
        for clients, m in sorted(by_clients.items(), key=lambda kv: int(kv[0])):
            ratio = "%.2f" % (m["cycles_per_s"] / base1["cycles_per_s"]) if base1 and base1["cycles_per_s"] and m["cycles_per_s"] else "-"
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                target, clients, _num(m["cycles_per_s"]), _num(m["p50_ms"]), _num(m["p99_ms"]),
                ratio, m["errors"], m["rounds"]))
    return "\n".join(lines)


def _sizes_table(results: dict) -> str:
    sizes = results["summary"]["sizes"]
    if not sizes:
        return "_not measured in this run_"
    lines = [
        "| keys | store file MiB | populate s | startup s | RSS ready MiB | RSS after load MiB | commit p50 ms | commit p99 ms | cycles/s | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for keys, m in sizes.items():
        size_mib = m["file_bytes"] / 2**20 if m.get("file_bytes") else None
        lines.append("| {:,} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            int(keys), _num(size_mib, 1), _num(m["populate_s"], 1), _num(m["startup_s"]),
            _num(m["rss_mib_ready"], 1), _num(m["rss_mib_after"], 1), _num(m["commit_p50_ms"]),
            _num(m["commit_p99_ms"]), _num(m["cycles_per_s"]), m["errors"]))
    return "\n".join(lines)


def _large_table(results: dict) -> str:
    m = results["summary"].get("large")
    if not m:
        return "_not measured in this run_"
    return "\n".join([
        "| store | 1-key commit p50 ms | 1-key commit p99 ms | /set of {:,} new keys s | its /commit s | errors | rounds |".format(m["bulk_keys"]),
        "|---|---|---|---|---|---|---|",
        "| {:,} keys + {} x 1000 KiB | {} | {} | {} | {} | {} | {} |".format(
            m["keys"], m["large_values"], _num(m["commit_p50_ms"]), _num(m["commit_p99_ms"]),
            _num(m["bulk_set_s"]), _num(m["bulk_commit_s"]), m["errors"], m["rounds"]),
    ])


def _soak_section(results: dict) -> str:
    soak = results.get("soak")
    if not soak:
        return "_Not run (opt-in: `--soak`)._"
    s = results["summary"].get("soak")
    if not s:
        return "Soak failed: %s" % soak.get("error", "no samples")
    samples = ", ".join("%.0fs: %.1f" % (t, kib / 1024) for t, kib in soak["rss_samples"])
    return (
        "%.0f s, %d clients, 90 %% GET of random keys / 10 %% 100-key `POST /set` + `POST /commit`, "
        "on a %s-key store, started after one GET of every key (%s s) filled the read cache.\n\n"
        "- RSS before that warm-up: %s MiB, after it: %s MiB\n"
        "- requests: %s (%s req/s), GETs %s, commits %s\n"
        "- errors: %s (wrk: %s), non-2xx answers: %s, server alive at the end: %s\n"
        "- RSS at %.0f s: %s MiB, at the end: %s MiB, ratio %s\n"
        "- RSS samples (s: MiB): %s"
    ) % (
        soak["duration_s"], soak["connections"], "{:,}".format(soak["keys"]), _num(s.get("warm_up_s"), 1),
        _num(s.get("rss_mib_before_warm_up"), 1), _num(s.get("rss_mib_after_warm_up"), 1),
        s["requests"], _num(s["rate"]), s["gets"], s["commits"],
        s["errors"], json.dumps(s["wrk_errors"]), s["bad_answers"], s["server_alive_at_end"],
        s["mark_s"], _num(s["rss_mib_at_mark"], 1), _num(s["rss_mib_end"], 1), _num(s["rss_ratio"]),
        samples,
    )


def _profiles_section(results: dict) -> str:
    profiles = results.get("profiles") or {}
    if not profiles:
        return "_Not profiled in this run (`--profile` records kvcache with py-spy)._"
    if "skipped" in profiles:
        return "_Profiling skipped: %s._" % profiles["skipped"]
    parts = []
    for name, p in profiles.items():
        parts.append("### %s\n" % name)
        if "error" in p:
            parts.append("py-spy failed: `%s`\n" % p["error"].strip().splitlines()[-1:])
            continue
        load = p.get("load", {})
        parts.append("%s samples%s; load while profiled: %s req/s.\n" % (
            p["samples"], " (idle included)" if p.get("idle_included") else "", _num(load.get("rate"))))
        if p.get("categories"):
            parts.append("| where | share of samples |\n|---|---|")
            for category, share in p["categories"].items():
                parts.append("| %s | %.1f %% |" % (category, 100 * share))
            parts.append("")
        if p.get("self_by_package"):
            parts.append("Own (self) samples by package: " + ", ".join(
                "%s %.1f %%" % (name, 100 * share) for name, share in p["self_by_package"].items()) + ".\n")
        for kind in ("self", "inclusive"):
            parts.append("Top frames by %s samples:\n" % kind)
            parts.append("| share | frame |\n|---|---|")
            for row in p[kind]:
                parts.append("| %.1f %% | `%s` |" % (100 * row["share"], row["frame"]))
            parts.append("")
    return "\n".join(parts)


def _bad_answers_section(results: dict) -> str:
    """Up to five distinct non-2xx answers the load generators saw."""
    seen: List[str] = []
    runs = [r for kind in ("get", "cycles") for r in results["raw"][kind]]
    soak = results.get("soak") or {}
    if soak.get("load"):
        runs.append(soak["load"])
    for run in runs:
        for sample in run.get("bad_samples") or []:
            if sample not in seen:
                seen.append(sample)
    if not seen:
        return "_None._"
    return "\n".join("- `%s`" % s.replace("`", "'") for s in seen[:5])


def _machine_section(results: dict) -> str:
    m = results["machine"]
    keys = ("cpu", "cores", "memory_mib", "kernel", "python", "twisted", "wrk", "etcd",
            "git_commit", "server_tree_dirty", "load_average_at_start", "load_average_at_end")
    return "\n".join("- %s: %s" % (k, m.get(k)) for k in keys)


def _busy_warning(m: dict) -> List[str]:
    """A warning when other work had the cores: ratios then carry noise too."""
    loads = [l[0] for l in (m.get("load_average_at_start"), m.get("load_average_at_end")) if l]
    cores = m.get("cores") or 1
    if not loads or max(loads) < cores / 2:
        return []
    return [
        "**The machine was busy** (load average up to %.1f on %d cores, from other work): "
        "interleaving spreads that over all targets, but single numbers and even ratios "
        "are noisy; compare runs on a quiet machine before acting on a small difference." % (max(loads), cores),
        "",
    ]


def markdown(results: dict, image: Optional[str], plot_note: Optional[str]) -> str:
    cfg = results["config"]
    skipped = results.get("skipped") or {}
    pending = results.get("pending") or []
    out = [
        "# kvtwist performance: run %s" % results["stamp"],
        "",
        "Command: `%s` (the same as `%s`)." % (results["command"]["run_sh"], results["command"]["python"]),
        "",
        "Mode: %s; %d interleaved round(s) of %g s wrk runs; medians over rounds. "
        "Every ratio below divides two numbers of this one run, on this machine (%s cores, "
        "load average %s at start, %s at end; other work on the machine makes absolute numbers noisy)."
        % ("quick (smoke)" if cfg["quick"] else "full", cfg["rounds"], cfg["duration"],
           results["machine"].get("cores"), results["machine"].get("load_average_at_start"),
           results["machine"].get("load_average_at_end")),
        "",
    ]
    out += _busy_warning(results["machine"])
    # A run of other measurements only (--only scaleout) says so once,
    # rather than with a NOT RUN row per target.
    measured = any(c["status"] != "NOT RUN" for c in results["checks"])
    out += [
        "## Targets",
        "",
        checks_table(results["checks"]) if measured else "_No target measured in this run._",
        "",
    ]
    if skipped or pending:
        out += ["Skipped or pending:", ""]
        out += ["- %s: %s" % (k, v) for k, v in skipped.items()]
        out += ["- pending: %s" % p for p in pending]
        out.append("")
    out += [
        "## GET of a committed key",
        "",
        "wrk, one thread (so the load generator keeps one core and the server has the other), "
        "keep-alive connections, the same key over and over; etcd answers `POST /v3/kv/range`.",
        "",
        _get_table(results),
        "",
        "## Durable seed cycles",
        "",
        "`POST /set` of one key then `POST /commit`, per client in turn (wrk, one connection per "
        "thread); cycles/s = requests/s / 2. Latencies mix both requests. kvcache syncs every "
        "commit to disk; the baseline never fsyncs.",
        "",
        _cycles_table(results),
        "",
        "## A one-key commit into stores of growing size",
        "",
        "Each store is built in-process with kvcache's own `ShelveStore`, then served by "
        "`twistd kvcache`; startup = process start to the first 200 of `GET /k00000000`; "
        "RSS = `VmRSS`; commit latency from a one-client set+commit driver (%g s per round)." % cfg["size_duration"],
        "",
        _sizes_table(results),
        "",
        "## Commits with large values stored",
        "",
        "A store of 1,000 small keys and 16 values of 1000 KiB (committed first), served by "
        "`twistd kvcache`: one-key commits from the set+commit driver (%g s per round), then one "
        "`POST /set` of new keys and its `POST /commit`, each timed. Key lookups that read "
        "stored values would show here." % cfg["size_duration"],
        "",
        _large_table(results),
        "",
        "## Soak",
        "",
        _soak_section(results),
        "",
        "## Scale-out: 1 vs 2 kvcache nodes on one etcd",
        "",
        scaleout.section(results),
        "",
        "## Non-2xx answers seen",
        "",
        _bad_answers_section(results),
        "",
        "## Plot",
        "",
        ("![GET throughput and p99 by target and connections](%s)" % image) if image else "_No plot: %s._" % plot_note,
        "",
        "## Profiles",
        "",
        _profiles_section(results),
        "",
        "## Targets measured",
        "",
    ]
    for name, t in results["targets"].items():
        if t.get("error"):
            state = " (failed: %s)" % t["error"].splitlines()[0]
        else:
            state = " (started in %s s, exit status %s after SIGTERM)" % (_num(t.get("startup_s")), t.get("exit_status"))
        out.append("- `%s`: %s%s" % (name, t["description"], state))
    out += ["", "## Machine", "", _machine_section(results), "",
            "Raw numbers of every round: `%s.json`." % results["stamp"], ""]
    return "\n".join(out)


def write_all(results: dict, out_dir: str, report_to: Optional[str]) -> List[str]:
    """Write JSON, Markdown and PNG (and the --report-to copies); their paths."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, results["stamp"])
    png = base + ".png"
    plot_note = plot.draw(results["summary"], png)
    image = os.path.basename(png) if plot_note is None else None
    results["plot"] = {"png": png if image else None, "skipped": plot_note}
    paths = [base + ".json", base + ".md"] + ([png] if image else [])
    results["files"] = paths
    with open(base + ".md", "w") as f:
        f.write(markdown(results, image, plot_note))
    if report_to:
        docs_dir = os.path.dirname(os.path.abspath(report_to))
        docs_image = None
        if image:
            os.makedirs(os.path.join(docs_dir, "img"), exist_ok=True)
            shutil.copyfile(png, os.path.join(docs_dir, "img", "performance.png"))
            docs_image = "img/performance.png"
            paths.append(os.path.join(docs_dir, "img", "performance.png"))
        with open(report_to, "w") as f:
            f.write(markdown(results, docs_image, plot_note))
        paths.append(report_to)
    with open(base + ".json.tmp", "w") as f:
        json.dump(results, f, indent=1, sort_keys=True, default=str)
    os.replace(base + ".json.tmp", base + ".json")
    return paths

"""
The benchmark suite's smoke test: C{python -m benchmarks --quick} runs end
to end (every target it can start, every measurement but the soak) and
writes its JSON and Markdown. No timing is asserted: this only keeps the
benchmark code from rotting. Skipped where wrk is not installed.

A trial test case, not pytest functions: tests/conftest.py runs trial cases
first, so these two long runs start early on a pytest-xdist worker instead of
being left together at the end of one worker's share.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.paths import REPO


#: The quick run takes about 25 s on the project's 2-core machines (40 s
#: with other test suites running beside it); the timeout only stops a hung
#: run, it is not a performance assertion.
TIMEOUT = 110


NO_WRK = "wrk is not installed (Debian package wrk; ./run.sh bench installs it)"


class BenchmarkSmokeTests(SynchronousTestCase):
    """The quick benchmark runs end to end and writes its results."""

    def make_tmp_path(self) -> Path:
        """A temporary directory removed after the test (pytest's tmp_path)."""
        path = tempfile.mkdtemp(prefix="kvtwist-bench-smoke-")
        self.addCleanup(shutil.rmtree, path, True)
        return Path(path)

    @unittest.skipIf(shutil.which("wrk") is None, NO_WRK)
    def test_quick_benchmark_writes_its_report(self):
        """
        C{--quick}: every target starts, every measurement but the soak runs
        without errors (C{kvtwist load} loading its whole file too), and the
        JSON, Markdown report and its target table are written.
        """
        tmp_path = self.make_tmp_path()
        check_quick_benchmark(tmp_path)

    @unittest.skipIf(shutil.which("wrk") is None, NO_WRK)
    @unittest.skipIf(shutil.which("etcd") is None, "etcd is not installed (Debian package etcd-server)")
    def test_quick_scaleout_fills_its_doc_section(self):
        """
        C{--quick --only scaleout}: 1 and 2 kvcache nodes and etcd alone, every
        workload, each with its CPU accounting, and the tables written into the
        marked section of a page, the rest of the page untouched.
        """
        tmp_path = self.make_tmp_path()
        check_quick_scaleout(tmp_path)


def check_quick_benchmark(tmp_path: Path) -> None:
    """The body of L{BenchmarkSmokeTests.test_quick_benchmark_writes_its_report}."""
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    [json_path] = glob.glob(str(out / "*.json"))
    [md_path] = glob.glob(str(out / "*.md"))
    assert os.path.splitext(json_path)[0] == os.path.splitext(md_path)[0]
    with open(json_path) as f:
        results = json.load(f)

    for key in ("stamp", "command", "config", "machine", "targets", "skipped", "raw", "summary", "checks"):
        assert key in results, key
    for key in ("cpu", "cores", "memory_mib", "kernel", "python", "twisted", "wrk"):
        assert key in results["machine"], key
    assert results["config"]["quick"] is True
    assert results["command"]["python"].startswith("python -m benchmarks --quick")

    summary = results["summary"]
    assert set(summary["get"]) >= {
        "kvcache", "kvcache-w2", "ceiling-log", "ceiling-nolog", "ceiling2-log", "ceiling2-nolog", "baseline", "naive",
    }
    for by_conns in summary["get"].values():
        assert set(by_conns) == {"1", "50"}
    assert set(summary["cycles"]) == {"kvcache", "kvcache-w2", "baseline"}
    assert set(summary["sizes"]) == {"1000", "10000"}
    assert (summary["large"]["rounds"], summary["large"]["errors"]) == (1, 0), summary["large"]
    assert "etcd" in summary["get"] or "etcd" in results["skipped"]
    # kvtwist load ran every round, loading every key of its dump file.
    load = results["load"]
    assert [run.get("loaded") for run in load["runs"]] == [load["keys"]], load
    assert load["median_keys_per_s"] > 0

    checks = results["checks"]
    assert checks and all({"check", "status", "target"} <= set(c) for c in checks)
    statuses = {c["status"] for c in checks}
    assert statuses <= {"PASS", "MISS", "PENDING", "NOT RUN", "INFO", "ERROR"}
    assert "ERROR" not in statuses, [c for c in checks if c["status"] == "ERROR"]

    with open(md_path) as f:
        text = f.read()
    assert "## Targets" in text
    assert "## Commits with large values stored" in text
    assert results["command"]["run_sh"] in text
    for check in checks:
        assert check["check"] in text


#: The quick scale-out run takes about 20 s here; as above, this only stops a hung run.
SCALEOUT_TIMEOUT = 90

DOC_BEFORE = "# A page\n\nText the run must keep.\n\n<!-- BEGIN scaleout results: generated -->\nold figures\n"
DOC_AFTER = "<!-- END scaleout results -->\n\nMore text to keep.\n"


def check_quick_scaleout(tmp_path: Path) -> None:
    """The body of L{BenchmarkSmokeTests.test_quick_scaleout_fills_its_doc_section}."""
    out = tmp_path / "results"
    doc = tmp_path / "page.md"
    doc.write_text(DOC_BEFORE + DOC_AFTER)
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "scaleout", "--out", str(out),
         "--scaleout-section-to", str(doc)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SCALEOUT_TIMEOUT,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    [json_path] = glob.glob(str(out / "*.json"))
    with open(json_path) as f:
        results = json.load(f)
    scaleout = results["scaleout"]
    assert "error" not in scaleout, scaleout["error"]
    assert scaleout["nproc"] >= 1 and len(scaleout["load_average_at_start"]) == 3
    seen = {(r["layout"], r["workload"]) for r in scaleout["raw"]}
    kv_workloads = {"get", "get-consistent", "put", "mix"}
    assert seen == {(layout, w) for layout in ("1", "2") for w in kv_workloads} | {
        ("etcd", "etcd-range"), ("etcd", "etcd-put")}
    for r in scaleout["raw"]:
        assert "error" not in r, r["error"]
        assert r["requests"] > 0
        assert {"etcd", "node-a", "wrk", "others", "idle"} <= set(r["cpu_s"])
        assert ("node-b" in r["cpu_s"]) == (r["layout"] == "2")
    # Both nodes served in the 2-node runs; the cache-hit GETs were hits.
    for r in scaleout["raw"]:
        if r["layout"] == "2":
            assert r["nodes"]["a"]["kv_requests"] > 0 and r["nodes"]["b"]["kv_requests"] > 0
        if r["workload"] == "get":
            # Warmed until a whole pass hit; a watch restart would empty a cache.
            hits = sum(n["cache_hits"] for n in r["nodes"].values())
            assert hits >= 0.99 * sum(n["kv_requests"] for n in r["nodes"].values())
    summary = results["summary"]["scaleout"]
    assert set(summary["ratios"]) == kv_workloads
    assert all(ratio["rate"] > 0 for ratio in summary["ratios"].values())

    text = doc.read_text()
    assert text.startswith(DOC_BEFORE.replace("old figures\n", ""))
    assert text.endswith(DOC_AFTER)
    assert "old figures" not in text
    assert "| workload | conns | 1 node req/s | 2 nodes req/s | 2 / 1 |" in text
    assert results["command"]["run_sh"] in text
    [md_path] = glob.glob(str(out / "*.md"))
    with open(md_path) as f:
        assert "## Scale-out: 1 vs 2 kvcache nodes on one etcd" in f.read()

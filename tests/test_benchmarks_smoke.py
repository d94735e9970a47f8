"""
The benchmark suite's smoke test: C{python -m benchmarks --quick} runs end
to end (every target it can start, every measurement but the soak) and
writes its JSON and Markdown. No timing is asserted: this only keeps the
benchmark code from rotting. Skipped where wrk is not installed.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The quick run takes about 25 s on the project's 2-core machines (40 s
#: with other test suites running beside it); the timeout only stops a hung
#: run, it is not a performance assertion.
TIMEOUT = 110


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (Debian package wrk; ./run.sh bench installs it)")
def test_quick_benchmark_writes_its_report(tmp_path):
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
    assert set(summary["get"]) >= {"kvcache", "ceiling-log", "ceiling-nolog", "baseline", "naive"}
    for by_conns in summary["get"].values():
        assert set(by_conns) == {"1", "50"}
    assert set(summary["cycles"]) == {"kvcache", "baseline"}
    assert set(summary["sizes"]) == {"1000", "10000"}
    assert "etcd" in summary["get"] or "etcd" in results["skipped"]

    checks = results["checks"]
    assert checks and all({"check", "status", "target"} <= set(c) for c in checks)
    statuses = {c["status"] for c in checks}
    assert statuses <= {"PASS", "MISS", "PENDING", "NOT RUN", "INFO", "ERROR"}
    assert "ERROR" not in statuses, [c for c in checks if c["status"] == "ERROR"]

    with open(md_path) as f:
        text = f.read()
    assert "## SPEC §10 targets" in text
    assert results["command"]["run_sh"] in text
    for check in checks:
        assert check["check"] in text

"""
A description of the machine and software a run measured, written into
every result: numbers from different machines must not be compared.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Dict, Optional

from benchmarks.targets import REPO
from benchmarks.wrk import wrk_version


def _first_line_with(path: str, prefix: str) -> Optional[str]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _command_output(argv, timeout: float = 20) -> Optional[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def load_average() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe() -> Dict[str, object]:
    """CPU, cores, memory, kernel, Python, Twisted, wrk, etcd, git commit."""
    import twisted

    mem_kib = _first_line_with("/proc/meminfo", "MemTotal")
    commit = _command_output(["git", "-C", REPO, "rev-parse", "HEAD"])
    dirty = _command_output(["git", "-C", REPO, "status", "--porcelain", "--", "kvtwist", "twisted", "setup.py"])
    return {
        "cpu": _first_line_with("/proc/cpuinfo", "model name") or platform.processor(),
        "cores": os.cpu_count(),
        "memory_mib": int(mem_kib.split()[0]) // 1024 if mem_kib else None,
        "kernel": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "twisted": twisted.__version__,
        "wrk": wrk_version(),
        "etcd": _command_output(["etcd", "--version"]),
        "git_commit": commit,
        # Uncommitted server changes make the numbers unrepeatable: say so.
        "server_tree_dirty": bool(dirty),
        "load_average_at_start": load_average(),
    }

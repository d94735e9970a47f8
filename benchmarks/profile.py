"""
Where a server spends its time under load: C{py-spy record} attached to the
server process while wrk runs, summarised as the top frames by own
(self) samples and by inclusive samples. Optional: needs C{py-spy} on PATH
or next to the interpreter, and ptrace permission.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional


#: Frames every sample passes through (twistd start-up, the reactor loop,
#: thread bootstrap, logging context): left out of the inclusive ranking,
#: where they would fill the top rows and say nothing.
PLUMBING = (
    "(twistd:",
    "twisted/application/app.py",
    "twisted/scripts/",
    "twisted/internet/base.py",
    "twisted/internet/epollreactor.py",
    "twisted/internet/posixbase.py",
    "twisted/python/log.py",
    "twisted/python/context.py",
    "twisted/python/threadpool.py",
    "twisted/_threads/",
    "threading.py",
)


#: Where the time goes, in the terms docs/performance.md uses: the
#: share of samples whose stack passes through each of these.
CATEGORIES = {
    "access log (Site.log and the log observer)": re.compile(r"^\w*Site\.log \(|^\w*Factory\.log \(|FileLogObserver"),
    "under kvtwist's Resources (render)": re.compile(r"^\w+\.render(_\w+)? \(kvtwist/"),
    "socket writes (writeSomeData)": re.compile(r"writeSomeData "),
    "SQLite commit and sync (SQLiteMapping.transaction)": re.compile(r"^SQLiteMapping\.transaction "),
    "store thread idle (waiting for work)": re.compile(r"^Queue\.get "),
    "reactor idle (epoll wait)": re.compile(r"^EPollReactor\.doPoll .*epollreactor\.py:227"),
}


def _package(frame: str) -> str:
    """The package a frame's file belongs to: kvtwist/web, twisted/web, ..."""
    match = re.search(r"\(([^:()]+):\d+\)$", frame)
    if not match:
        return "other"
    parts = match.group(1).split("/")
    if parts[0] in ("kvtwist", "twisted") and len(parts) > 2:
        return "/".join(parts[:2])
    if parts[0] in ("kvtwist", "twisted"):
        return parts[0]
    return "stdlib and others"


def py_spy_binary() -> Optional[str]:
    candidate = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("py-spy")


def start_py_spy(pid: int, duration: float, output: str, idle: bool = False) -> subprocess.Popen:
    """Record C{pid} for C{duration} seconds into C{output} (collapsed stacks)."""
    binary = py_spy_binary()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    argv = [
        binary, "record", "--pid", str(pid), "--duration", str(max(1, round(duration))),
        "--rate", "250", "--format", "raw", "--output", output, "--nonblocking",
    ]
    if idle:
        argv.append("--idle")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def summarise(path: str, top: int = 12) -> Dict[str, object]:
    """
    Read py-spy's raw output (C{frame;frame;... count} lines) and return
    the total samples and the C{top} frames by self and inclusive samples
    (the inclusive ranking without L{PLUMBING}).
    """
    categories: Dict[str, int] = collections.Counter()
    packages: Dict[str, int] = collections.Counter()
    own: Dict[str, int] = collections.Counter()
    inclusive: Dict[str, int] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = stack.split(";")
            own[frames[-1]] += count
            packages[_package(frames[-1])] += count
            for frame in set(frames):
                inclusive[frame] += count
            for name, pattern in CATEGORIES.items():
                if any(pattern.search(frame) for frame in frames):
                    categories[name] += count

    for frame in list(inclusive):
        if any(marker in frame for marker in PLUMBING):
            del inclusive[frame]

    def rows(counter, count: int) -> List[Dict[str, object]]:
        return [
            {"frame": frame, "samples": n, "share": n / total if total else 0.0}
            for frame, n in counter.most_common(count)
        ]

    return {
        "samples": total,
        "self": rows(own, top),
        # Deeper: the first inclusive rows are the HTTP dispatch chain.
        "inclusive": rows(inclusive, 2 * top),
        "categories": {name: categories[name] / total if total else 0.0 for name in CATEGORIES},
        "self_by_package": {name: n / total for name, n in packages.most_common()} if total else {},
    }

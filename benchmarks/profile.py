"""
Where a server spends its time under load: C{py-spy record} attached to the
server process while wrk runs, summarised as the top frames by own
(self) samples and by inclusive samples. Optional: needs C{py-spy} on PATH
or next to the interpreter, and ptrace permission.
"""

from __future__ import annotations

import collections
import os
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
            for frame in set(frames):
                inclusive[frame] += count

    for frame in list(inclusive):
        if any(marker in frame for marker in PLUMBING):
            del inclusive[frame]

    def rows(counter) -> List[Dict[str, object]]:
        return [
            {"frame": frame, "samples": n, "share": n / total if total else 0.0}
            for frame, n in counter.most_common(top)
        ]

    return {"samples": total, "self": rows(own), "inclusive": rows(inclusive)}

"""
The PNG plot of a run: GET throughput and p99 latency by target and
connection count. matplotlib is an optional extra (C{pip install
.[bench]}); without it the report says the plot was skipped.
"""

from __future__ import annotations

from typing import Optional


def draw(summary: dict, path: str) -> Optional[str]:
    """Write the plot to C{path}; returns None, or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display here
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install .[bench]; ./run.sh bench does it)"
    get = summary.get("get") or {}
    if not get:
        return "no GET measurements in this run"
    targets = list(get)
    conns = sorted({c for t in get.values() for c in t}, key=int)
    fig, (ax_rate, ax_p99) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.8 / max(1, len(conns))
    for i, c in enumerate(conns):
        xs = [x + i * width for x in range(len(targets))]
        rates = [(get[t].get(c) or {}).get("rate") or 0 for t in targets]
        p99s = [(get[t].get(c) or {}).get("p99_ms") or 0 for t in targets]
        ax_rate.bar(xs, rates, width, label="%s conn" % c)
        ax_p99.bar(xs, p99s, width, label="%s conn" % c)
    for ax, title, unit in ((ax_rate, "GET throughput", "requests/s"), (ax_p99, "GET p99 latency", "ms (log)")):
        ax.set_xticks([x + width * (len(conns) - 1) / 2 for x in range(len(targets))])
        ax.set_xticklabels(targets, rotation=30, ha="right")
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.legend()
    ax_p99.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None

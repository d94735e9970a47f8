"""
The benchmark's command line and the settings it resolves to. C{--quick}
is the smoke mode CI runs (the whole run well under 60 s); the default is
the full run the report in C{docs/performance.md} comes from.
"""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass, field
from typing import List, Optional

from benchmarks.targets import REPO

#: Measurement names accepted by C{--only} besides target names.
MEASUREMENTS = ("get", "cycles", "sizes", "large", "load", "soak", "scaleout")
TARGET_NAMES = (
    "kvcache",
    "kvcache-nolog",
    "kvcache-w2",
    "kvcache-w2-nolog",
    "kvcache-w3",
    "kvcache-w4",
    "ceiling-log",
    "ceiling-nolog",
    "ceiling2-log",
    "ceiling2-nolog",
    "baseline",
    "naive",
    "etcd",
)

#: Targets that only trace the workers curve (throughput against
#: --workers): they run only when named in --only.
CURVE_TARGETS = ("kvcache-w3", "kvcache-w4")


@dataclass
class Config:
    """Everything a run needs to know, resolved from the command line."""

    argv: List[str]
    quick: bool
    rounds: int
    duration: float
    warmup: float
    get_connections: List[int]
    cycle_clients: List[int]
    sizes: List[int]
    size_duration: float
    out: str
    report_to: Optional[str]
    only: List[str]
    soak: bool
    soak_duration: float
    soak_interval: float
    soak_keys: int
    soak_connections: int
    profile: bool
    kvcache_args: List[str]
    kvcache_nolog_args: Optional[List[str]]
    keep_tmp: bool
    scaleout: bool = False
    scaleout_members: int = 1
    scaleout_read_keys: int = 1000
    scaleout_section_to: Optional[str] = None
    skipped_measurements: List[str] = field(default_factory=list)

    def wants_target(self, name: str) -> bool:
        named = [n for n in self.only if n in TARGET_NAMES]
        if not named:
            return name not in CURVE_TARGETS
        return name in named

    def wants(self, measurement: str) -> bool:
        named = [n for n in self.only if n in MEASUREMENTS]
        return not named or measurement in named


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Side-by-side benchmark of kvcache against the twisted.web ceiling, "
            "a seed-style baseline, a naive thread-per-GET server and etcd "
            "(targets: docs/performance.md). Everything runs on 127.0.0.1."
        ),
    )
    p.add_argument("--quick", action="store_true", help="smoke mode: 1 round of 1 s runs, stores of 1k and 10k keys (< 60 s)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 10; quick 1)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up load per target before round 1 (default 2; quick 0)")
    p.add_argument("--sizes", type=int, nargs="+", help="store sizes for the commit benchmark (default 1000 100000 1000000; quick 1000 10000)")
    p.add_argument("--only", nargs="+", default=[], metavar="NAME",
                   help="limit to these targets (%s) and/or measurements (%s)" % (", ".join(TARGET_NAMES), ", ".join(MEASUREMENTS)))
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"), help="directory for the JSON, Markdown and PNG (default benchmarks/results)")
    p.add_argument("--report-to", metavar="PATH", help="also copy the Markdown report there (e.g. docs/performance.md) and the plot to its img/ folder")
    p.add_argument("--soak", action="store_true", help="also run the soak: 90%% GET, 10%% 100-key commits on a 100k-key store (with --only soak, nothing else)")
    p.add_argument("--soak-duration", type=float, default=600.0, help="soak seconds (default 600)")
    p.add_argument("--soak-interval", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    p.add_argument("--soak-keys", type=int, default=100_000, help="keys in the soak store (default 100000)")
    p.add_argument("--soak-connections", type=int, default=8, help="soak clients (default 8)")
    p.add_argument("--scaleout", action="store_true",
                   help="also measure 1 vs 2 kvcache nodes on one etcd (docs/scale-out.md; with --only scaleout, nothing else)")
    p.add_argument("--scaleout-members", type=int, choices=(1, 3), default=1,
                   help="etcd members under the scale-out nodes (default 1)")
    p.add_argument("--scaleout-section-to", metavar="PATH",
                   help="write the scale-out tables into the marked section of PATH (e.g. docs/scale-out.md)")
    p.add_argument("--profile", action="store_true", help="record kvcache with py-spy under GET and commit load; top frames go in the report")
    p.add_argument("--kvcache-args", default="", help="extra twistd kvcache arguments for every kvcache started (one string)")
    p.add_argument("--kvcache-nolog-args", help="kvcache arguments that turn the access log off (default: found from its --help)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (server logs, data) for inspection")
    return p


def parse(argv: List[str]) -> Config:
    args = parser().parse_args(argv)
    quick = args.quick

    def pick(value, full, smoke):
        return value if value is not None else (smoke if quick else full)

    unknown = [n for n in args.only if n not in TARGET_NAMES + MEASUREMENTS]
    if unknown:
        parser().error("--only: unknown name(s) %s" % ", ".join(unknown))
    if args.scaleout_section_to and not (args.scaleout or "scaleout" in args.only):
        parser().error("--scaleout-section-to needs --scaleout or --only scaleout")
    rounds = pick(args.rounds, 3, 1)
    duration = pick(args.duration, 10.0, 1.0)
    if rounds < 1 or duration < 1:
        parser().error("--rounds and --duration must be at least 1")
    return Config(
        argv=list(argv),
        quick=quick,
        rounds=rounds,
        duration=duration,
        warmup=pick(args.warmup, 2.0, 0.0),
        get_connections=[1, 50],
        cycle_clients=[1, 16],
        sizes=pick(args.sizes, [1_000, 100_000, 1_000_000], [1_000, 10_000]),
        # The commit comparison needs many cycles per size; quick runs stay short.
        size_duration=duration,
        out=args.out,
        report_to=args.report_to,
        only=args.only,
        soak=args.soak,
        soak_duration=args.soak_duration,
        soak_interval=args.soak_interval,
        soak_keys=args.soak_keys,
        soak_connections=args.soak_connections,
        profile=args.profile,
        kvcache_args=shlex.split(args.kvcache_args),
        kvcache_nolog_args=shlex.split(args.kvcache_nolog_args) if args.kvcache_nolog_args is not None else None,
        keep_tmp=args.keep_tmp,
        scaleout=args.scaleout,
        scaleout_members=args.scaleout_members,
        # Fewer keys when quick: every fresh node reads them all once to fill its cache.
        scaleout_read_keys=100 if quick else 1000,
        scaleout_section_to=args.scaleout_section_to,
    )

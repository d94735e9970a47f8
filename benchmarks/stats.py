"""
Summary statistics shared by the benchmarks and the test suite.

One definition of a percentile, so a p99 printed by a benchmark and a p99
a test asserts on mean the same thing. It lives here rather than in
C{tests/} because the benchmarks must not import the test suite; the tests
run from the source checkout, where C{benchmarks} is importable too.
"""

from __future__ import annotations

import math
from typing import Sequence


def percentile(values: Sequence[float], fraction: float) -> float:
    """
    The nearest-rank percentile of C{values}: the smallest value with at
    least C{fraction} of them at or below it (C{0.99} for p99).

    @param values: the sample, in any order; not empty.
    @param fraction: from 0 to 1.
    @raise ValueError: if C{values} is empty.
    """
    if not values:
        raise ValueError("the percentile of no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]

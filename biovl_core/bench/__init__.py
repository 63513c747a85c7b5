"""Benchmarks: ``python -m biovl_core.bench NAME`` runs ``biovl_core.bench.NAME.main(argv)``."""

from __future__ import annotations

import time
from collections.abc import Callable

HELPER_MODULES = ("videos",)
"""Modules of this package that build benchmark inputs; not benchmarks themselves."""


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` wall-clock runs of ``fn`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best

"""The one place that decides where a batch of alignments runs, from what each path costs.

Three paths, each a fixed cost per batch plus a cost per cell (a cell is one of K x N):

- ``numba`` (CPU): no fixed cost worth counting; cells at the CPU's rate.
- ``cupy`` from host arrays: pack into pinned memory, one copy, one launch, labels back.
- ``resident``: similarities already on the GPU (embeddings there: the fused decode+embed
  path); packed on the device, one launch, only int16 labels and float32 optima come back
  (`biovl_core.align.device_solve`).

Rates and where they come from (docs/BENCHMARKS.md, "Alignment routing"): numba's is measured
on the machine (``python -m biovl_core.bench align``; 4.2-5.2 G cells/s on the H200 host's 16
cores, docs/GPU_CHECK.md); the GPU kernels' resident rates were measured on one H200 (48 G
cells/s "fused", 115 G "shfl"); the host path's fixed cost (0.2 ms) and per-cell rate (10 G
cells/s, the pinned single-copy path) are estimates, not run on a GPU, chosen so that the
crossover stays where ``AUTO_CUPY_MIN_CELLS`` put it (2 M cells) until `make gpu-check`
measures it. Override any rate with ``BIOVL_ALIGN_RATES`` ("numba=5e9,host=1e10,...").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

PATHS = ("numba", "cupy", "resident")
RATES_ENV = "BIOVL_ALIGN_RATES"


@dataclass(frozen=True)
class AlignCost:
    """Seconds per batch = fixed + cells / rate, per path."""

    numba_cells_per_s: float = 5e9  # measured: 4.2-5.2 G on a 16-core host (H200 box)
    host_fixed_s: float = 2e-4  # estimate: pack + copy + launch + labels back
    host_cells_per_s: float = 1e10  # estimate (pinned single copy; not run on a GPU)
    resident_fixed_s: float = 5e-5  # estimate: device pack + one launch + small copy back
    resident_cells_per_s: float = 4.8e10  # measured on an H200: "fused" 48 G ("shfl" 115 G)

    def seconds(self, path: str, cells: int) -> float:
        """Estimated seconds for `cells` on `path`."""
        if path == "numba":
            return cells / self.numba_cells_per_s
        if path == "cupy":
            return self.host_fixed_s + cells / self.host_cells_per_s
        if path == "resident":
            return self.resident_fixed_s + cells / self.resident_cells_per_s
        raise ValueError(f"unknown path {path!r}; one of {PATHS}")

    def crossover_cells(self, path: str) -> int:
        """Smallest batch for which `path` beats numba (a huge number when it never does)."""
        fixed = self.host_fixed_s if path == "cupy" else self.resident_fixed_s
        rate = self.host_cells_per_s if path == "cupy" else self.resident_cells_per_s
        gain = 1.0 / self.numba_cells_per_s - 1.0 / rate
        return int(round(fixed / gain)) if gain > 0 else 2**62

    def route(self, cells: int, gpu: bool, resident: bool = False) -> str:
        """The cheapest path for a batch: numba without a GPU; "resident" only for similarities
        already on the GPU; else the cheaper of numba and the host-array GPU path."""
        if not gpu:
            return "numba"
        path = "resident" if resident else "cupy"
        return path if cells >= self.crossover_cells(path) else "numba"


def _from_env(cost: AlignCost) -> AlignCost:
    """`cost` with the rates named in BIOVL_ALIGN_RATES replaced."""
    text = os.environ.get(RATES_ENV, "").strip()
    if not text:
        return cost
    names = {
        "numba": "numba_cells_per_s",
        "host": "host_cells_per_s",
        "host_fixed": "host_fixed_s",
        "resident": "resident_cells_per_s",
        "resident_fixed": "resident_fixed_s",
    }
    changes = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key.strip() not in names:
            raise ValueError(f"{RATES_ENV}: unknown rate {key.strip()!r}; use {sorted(names)}")
        changes[names[key.strip()]] = float(value)
    return replace(cost, **changes)


def cost_model() -> AlignCost:
    """The cost model in force (defaults, with BIOVL_ALIGN_RATES applied)."""
    return _from_env(AlignCost())

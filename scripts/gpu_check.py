#!/usr/bin/env python3
"""`make gpu-check`: every GPU path against its CPU twin, with throughput.

Runs on a fresh CUDA machine that has torch and cupy (open_clip, PyAV and DALI are needed
for the embedding and decoding checks; each check says SKIP with the reason when its
dependency is missing). Exits 1 if any check FAILS.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHECKS = [
    ("aligner: cupy wavefront + RawKernel vs numba", "biovl_core.bench.align"),
    ("embedding: ViT-B-32 fp16 CUDA vs fp32 CPU", "biovl_core.bench.embed"),
    ("decoding: DALI (NVDEC) vs PyAV", "biovl_core.bench.decode"),
]


def main() -> int:
    """Run each check, print PASS/FAIL/SKIP lines and a summary."""
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU visible to torch; run this on a GPU machine.")
        return 2
    print(f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    outcomes: list[tuple[str, str]] = []
    for title, module in CHECKS:
        print(f"\n=== {title} ===", flush=True)
        start = time.perf_counter()
        try:
            importlib.import_module(module).gpu_check()
            outcome = "PASS"
        except ImportError as exc:
            outcome = f"SKIP ({exc})"
        except Exception:
            traceback.print_exc()
            outcome = "FAIL"
        print(f"--- {outcome} in {time.perf_counter() - start:.1f} s", flush=True)
        outcomes.append((title, outcome))
    print("\nsummary:")
    for title, outcome in outcomes:
        print(f"  {outcome.split()[0]:4s}  {title}  {outcome[4:].strip()}")
    return 1 if any(o == "FAIL" for _, o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())

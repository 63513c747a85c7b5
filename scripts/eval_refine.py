"""What boundaries finer than the grid buy: group mIoU on the grid against refined spans.

Per seed, one lab per experiment type (6 recordings, none annotated; the last three scored, as
``eval_group``). Each scored recording is group-aligned (``align_group``); then frames are drawn
at ``boundary_times`` inside the segments beside each change point (``synthetic.frames_at``:
what is active at that time, fresh noise), centred like the segments (the recording's mean
segment frame removed), and ``refine_spans`` moves each change point against the step looks
learned from the other five recordings (mean centred frame per step label, and of the
background): ``refine.refine_in_group``, what the pipeline runs after a group alignment.
Columns: mIoU % on the grid, refined, and the truth snapped to segments (the grid's ceiling);
and the mean absolute error (s) of the performed steps' ends.

    python scripts/eval_refine.py --seeds 0-9                       # development: choose
    python scripts/eval_refine.py --seeds 100-109                   # held-out
    python scripts/eval_refine.py --seeds 100-109 --pace 0.7 --duration-sd 0.3   # regular lab
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_group import RECORDINGS, SCORED, parse_seeds  # noqa: E402

from biovl_core.align import align_group  # noqa: E402
from biovl_core.align.group import segment_labels, spans_of_labels  # noqa: E402
from biovl_core.align.refine import refine_in_group, segment_times  # noqa: E402
from biovl_core.metrics import miou  # noqa: E402
from biovl_core.synthetic import EXPERIMENTS, make_lab_group  # noqa: E402
from biovl_core.synthetic.frames_at import frames_at  # noqa: E402


def frames_in_draws(r: Any, seg: float, seed: int, segments: np.ndarray, per: int) -> tuple:
    """The generator's frames at the centres of ``per`` parts of each segment (inside the
    recording), fresh noise from ``seed``: (times, frames)."""
    t = segment_times(segments, seg, per)
    t = t[t < r.duration_s]
    return t, frames_at(r.draws, t, seed=seed)


def end_error(spans: list, gt: list) -> list[float]:
    """Absolute errors (s) of both ends of the steps performed in both."""
    return [
        abs(a - b)
        for p, g in zip(spans, gt, strict=True)
        if p and g
        for a, b in zip(p, g, strict=True)
    ]


def evaluate(seeds: list[int], grid: list[tuple[int, float]], **knobs: float) -> None:
    """Print one row per (per_segment, min_gain) setting."""
    rows: dict[str, list[float]] = {"grid": [], "snapped": []}
    errs: dict[str, list[float]] = {"grid": []}
    for setting in grid:
        rows[str(setting)], errs[str(setting)] = [], []
    for seed in seeds:
        for exp in sorted(EXPERIMENTS):
            lab = make_lab_group(exp, RECORDINGS, seed, **knobs)
            res = align_group(lab.frames, lab.texts, None, lab.segment_seconds)
            labels = [a.labels for a in res]
            k, seg = len(lab.steps), lab.segment_seconds
            for i in range(RECORDINGS - SCORED, RECORDINGS):
                r, a = lab.recordings[i], res[i]
                n = r.frames.shape[0]
                truth = spans_of_labels(segment_labels(r.gt_spans, n, seg), k, seg, n * seg)
                rows["grid"].append(miou(a.spans, r.gt_spans))
                rows["snapped"].append(miou(truth, r.gt_spans))
                errs["grid"] += end_error(a.spans, r.gt_spans)
                for per, gain in grid:
                    spans, _, _ = refine_in_group(
                        lab.frames,
                        labels,
                        i,
                        k,
                        partial(frames_in_draws, r, seg, 1000 * seed + i),
                        seg,
                        r.duration_s,
                        per,
                        gain,
                    )
                    rows[str((per, gain))].append(miou(spans, r.gt_spans))
                    errs[str((per, gain))] += end_error(spans, r.gt_spans)
    print(f"seeds {seeds[0]}-{seeds[-1]}, knobs {knobs or 'default'}")
    print("| setting (frames per segment, min gain) | mIoU % | mean end error (s) |\n|---|---|---|")
    for name, v in rows.items():
        err = f"{np.mean(errs[name]):.2f}" if name in errs else "—"
        print(f"| {name} | {100 * np.mean(v):.1f} | {err} |")


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation on the given seeds."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="100-109")
    ap.add_argument("--pace", type=float, default=0.0, help="step_pace_sd of the labs")
    ap.add_argument("--duration-sd", type=float, default=None, help="duration_sd of the labs")
    ap.add_argument("--grid", default="4:0.1", help="per_segment:min_gain,... e.g. 2:0,4:0.1")
    args = ap.parse_args(argv)
    knobs: dict[str, float] = {"step_pace_sd": args.pace} if args.pace else {}
    if args.duration_sd is not None:
        knobs["duration_sd"] = args.duration_sd
    grid = [(int(p), float(g)) for p, g in (x.split(":") for x in args.grid.split(","))]
    evaluate(parse_seeds(args.seeds), grid, **knobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

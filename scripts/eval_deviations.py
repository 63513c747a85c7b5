"""Evaluate the deviation report on synthetic labs with planted deviations, beside mIoU.

Per seed, one lab per experiment type (6 recordings, none annotated unless ``--annotated``);
the last three recordings are scored. Planted (``biovl_core.synthetic.lab`` knobs): skipped
steps (``p_skip``), two adjacent steps swapped (``p_swap``), steps lasting ``long_factor`` = 3
times the step's usual duration in that lab (``p_long``; ``--long-of draw``: 3 times the
recording's own draw, as before), one off-protocol action inserted in a gap (``p_insert``).
Per kind,
precision and recall over (recording, step) pairs; for inserted actions, over stretches
(a reported "unmatched" stretch is right when it overlaps an inserted action). mIoU %: text
only, the naive one-pass group (``eval_group.naive_one_pass``), the group without duration
priors (``duration_weight`` 0) and the group as shipped. "3x longer, oracle": the rule "a step
lasts >= ``ORACLE_RATIO`` (2.9) x its usual" on the true spans and the generator's usual
durations: it finds every planted step, so its precision is the most any report judging by
duration can have at full recall (the lab's own long draws count against it).
As the service does after a group alignment, frames inside the segments (``synthetic.frames_at``)
refine each recording (``refine.refine_in_group``): a skipped step they show after all
(``hidden_steps``, shorter than a segment) is not reported as not performed. "skip, grid only":
the skips of the grid alignment alone.

    python scripts/eval_deviations.py --seeds 0-3      # development seeds (thresholds)
    python scripts/eval_deviations.py --seeds 100-109  # held-out
    python scripts/eval_deviations.py --seeds 100-109 --pace 0.7 --duration-sd 0.3  # regular lab
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_group import RECORDINGS, SCORED, naive_one_pass, parse_seeds  # noqa: E402
from eval_refine import frames_in_draws  # noqa: E402

from biovl_core.align import (  # noqa: E402
    align,
    align_group,  # noqa: E402
)
from biovl_core.align.deviations import deviation_report  # noqa: E402
from biovl_core.align.refine import refine_in_group  # noqa: E402
from biovl_core.metrics import miou  # noqa: E402
from biovl_core.synthetic import EXPERIMENTS, LabRecording, make_lab_group  # noqa: E402

PLANTED = {"p_skip": 0.08, "p_swap": 0.3, "p_long": 0.08, "p_insert": 0.5}
KINDS = ("skip", "swap", "3x longer", "inserted")
ORACLE = "3x longer, oracle"
GRID_SKIP = "skip, grid only"  # without the frames inside the segments (hidden_steps)
ORACLE_RATIO = 2.9  # just under 3: every planted step passes, after rounding to 0.1 s


def oracle_longer(r: LabRecording, usual: np.ndarray) -> set[int]:
    """Steps whose true span lasts at least ``ORACLE_RATIO`` x the lab's usual duration."""
    return {s for s, sp in enumerate(r.gt_spans) if sp and sp[1] - sp[0] >= ORACLE_RATIO * usual[s]}


def truth(r: LabRecording) -> dict[str, set]:
    """The planted deviations of one recording, per kind (steps; inserted spans by index)."""
    first: list[int] = []
    for s in r.order:
        if s not in first:
            first.append(s)
    swapped = {s for i, s in enumerate(first) for t in first[i + 1 :] if t < s} | {
        t for i, s in enumerate(first) for t in first[i + 1 :] if t < s
    }
    return {
        "skip": {s for s, span in enumerate(r.gt_spans) if span is None},
        "swap": swapped,
        "3x longer": set(r.long_steps),
        "inserted": set(range(len(r.inserted))),
    }


def found(report: list[dict], r: LabRecording) -> tuple[dict[str, set], int]:
    """Reported deviations per kind, and how many unmatched stretches hit no inserted action."""
    out: dict[str, set] = {k: set() for k in KINDS}
    stray = 0
    for e in report:
        if e["kind"] == "not_performed":
            out["skip"].add(e["step"])
        elif e["kind"] == "out_of_order":
            out["swap"] |= {e["step"], *e["swapped_with"]}
        elif e["kind"] == "longer":
            out["3x longer"].add(e["step"])
        elif e["kind"] == "unmatched":
            hits = [i for i, (a, b) in enumerate(r.inserted) if e["start"] < b and e["end"] > a]
            out["inserted"] |= set(hits)
            stray += not hits
    return out, stray


def evaluate(seeds: list[int], annotated: int, **knobs: float | str) -> None:
    """Print mIoU per column and P/R per deviation kind."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # tp, fp, fn
    mious: dict[str, list[float]] = defaultdict(list)
    for seed in seeds:
        for exp in sorted(EXPERIMENTS):
            lab = make_lab_group(exp, RECORDINGS, seed, **{**PLANTED, **knobs})
            ann = [r.gt_spans if i < annotated else None for i, r in enumerate(lab.recordings)]
            res = align_group(lab.frames, lab.texts, ann, lab.segment_seconds)
            flat = align_group(lab.frames, lab.texts, ann, lab.segment_seconds, duration_weight=0)
            naive = naive_one_pass(lab, ann)
            labels = [x.labels for x in res]
            for i in range(RECORDINGS - SCORED, RECORDINGS):
                r, a = lab.recordings[i], res[i]
                frames_in = partial(frames_in_draws, r, lab.segment_seconds, 1000 * seed + i)
                _, _, hidden = refine_in_group(
                    lab.frames,
                    labels,
                    i,
                    len(lab.steps),
                    frames_in,
                    lab.segment_seconds,
                    r.duration_s,
                )
                mious["text"].append(miou(align(lab.texts @ r.frames.T).spans, r.gt_spans))
                mious["naive one-pass"].append(miou(naive[i], r.gt_spans))
                mious["group, no priors"].append(miou(flat[i].spans, r.gt_spans))
                mious["group"].append(miou(a.spans, r.gt_spans))
                report = deviation_report(
                    a.spans,
                    a.confidence,
                    a.priors,
                    lab.segment_seconds,
                    a.labels,
                    a.segment_fit,
                    seen=hidden,
                )
                got, stray = found(report, r)
                want = truth(r)
                grid_only = {s for s, span in enumerate(a.spans) if span is None}
                counts[GRID_SKIP][0] += len(grid_only & want["skip"])
                counts[GRID_SKIP][1] += len(grid_only - want["skip"])
                counts[GRID_SKIP][2] += len(want["skip"] - grid_only)
                for kind in KINDS:
                    counts[kind][0] += len(got[kind] & want[kind])
                    counts[kind][1] += len(got[kind] - want[kind])
                    counts[kind][2] += len(want[kind] - got[kind])
                counts["inserted"][1] += stray
                best = oracle_longer(r, lab.usual_s)
                tally = (
                    best & want["3x longer"],
                    best - want["3x longer"],
                    want["3x longer"] - best,
                )
                for j, part in enumerate(tally):
                    counts[ORACLE][j] += len(part)
    print(f"seeds {seeds[0]}-{seeds[-1]}, {annotated} annotated, knobs {knobs or 'default'}")
    print(" | ".join(f"{k} {100 * np.mean(v):.1f}" for k, v in mious.items()))
    print("| kind | planted | precision | recall |\n|---|---|---|---|")
    for kind in (*KINDS, GRID_SKIP, ORACLE):
        tp, fp, fn = counts[kind]
        p = tp / (tp + fp) if tp + fp else float("nan")
        rc = tp / (tp + fn) if tp + fn else float("nan")
        print(f"| {kind} | {tp + fn} | {100 * p:.0f} | {100 * rc:.0f} |")


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation on the given seeds."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="100-109")
    ap.add_argument("--annotated", type=int, default=0)
    ap.add_argument("--pace", type=float, default=0.0, help="step_pace_sd of the labs")
    ap.add_argument("--duration-sd", type=float, default=None, help="duration_sd of the labs")
    ap.add_argument("--long-of", choices=("usual", "draw"), default="usual", help="see module doc")
    args = ap.parse_args(argv)
    knobs: dict[str, float | str] = {"step_pace_sd": args.pace} if args.pace else {}
    if args.long_of != "usual":
        knobs["long_of"] = args.long_of
    if args.duration_sd is not None:
        knobs["duration_sd"] = args.duration_sd
    evaluate(parse_seeds(args.seeds), args.annotated, **knobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

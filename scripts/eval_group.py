"""Evaluate group alignment on synthetic labs: text-only vs the group with 0, 1, 3 annotations.

Per seed, one lab group per experiment type (``synthetic_lab.make_lab_group``, 6 recordings).
The first ``a`` recordings carry their ground truth as annotations (a = 0, 1, 3) and the
last three are scored in every column, so columns compare the same recordings. Reports
mIoU % (mean over scored recordings of per-recording mIoU; steps not performed are left out,
as ``metrics.miou`` does), and precision / recall / F1 of "not performed" over (recording,
step) pairs. The second setting puts a recording of another protocol in the first scored
slot (never scored); the third is a harder lab (``HARD``); the fourth a regular lab
(``REGULAR``: each step its own typical duration, repeated within 30 %), where the lab's
duration priors have something to learn. Beside text only: the naive one-pass group
(``naive_one_pass``). Last mIoU column: the ground truth snapped to segments, the ceiling for
5 s segment embeddings.

    python scripts/eval_group.py --seeds 100-119 --table
    python scripts/eval_group.py --seeds 0-9 --grid      # the default search (tuning seeds)
    python scripts/eval_group.py --seeds 100-109 --before  # the method before issue 22
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from biovl_core.align import align, align_group
from biovl_core.align.group import GROUP_DEFAULTS, segment_labels, spans_of_labels
from biovl_core.metrics import miou
from biovl_core.synthetic import EXPERIMENTS, LabGroup, make_lab_group

RECORDINGS = 6
SCORED = 3  # the last SCORED recordings are scored in every column
ANNOTATED = (0, 1, 3)


@dataclass
class Tally:
    """mIoU values and not-performed counts for one column."""

    mious: list[float] = field(default_factory=list)
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, pred: list, gt: list) -> None:
        """Score one recording's spans against its ground truth."""
        self.mious.append(miou(pred, gt))
        for p, g in zip(pred, gt, strict=True):
            self.tp += p is None and g is None
            self.fp += p is None and g is not None
            self.fn += p is not None and g is None

    def prf(self) -> tuple[float, float, float]:
        """Precision, recall, F1 of "not performed" (0 where undefined)."""
        prec = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        rec = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        return prec, rec, f1


def groups(seeds: Iterable[int], off_protocol: bool, **knobs: float) -> list[LabGroup]:
    """One group per experiment type per seed; with ``off_protocol`` recording 3 is off."""
    out = []
    for seed in seeds:
        for exp in sorted(EXPERIMENTS):
            g = make_lab_group(exp, RECORDINGS, seed, off_protocol=off_protocol, **knobs)
            if off_protocol:  # move the off-protocol recording to the first scored slot
                recs = g.recordings
                recs.insert(RECORDINGS - SCORED, recs.pop())
            out.append(g)
    return out


def evaluate(labs: list[LabGroup], **params: float) -> dict[str, Tally]:
    """Columns "text" and "group a" (a annotated recordings): tallies over scored recordings."""
    cols = {
        "text": Tally(),
        "naive": Tally(),
        **{f"group {a}": Tally() for a in ANNOTATED},
        "snapped": Tally(),
    }
    for lab in labs:
        naive = naive_one_pass(lab)
        scored = [
            i for i in range(RECORDINGS - SCORED, RECORDINGS) if not lab.recordings[i].off_protocol
        ]
        for i in scored:
            r = lab.recordings[i]
            cols["text"].add(align(lab.texts @ r.frames.T, lab.segment_seconds).spans, r.gt_spans)
            n, seg = r.frames.shape[0], lab.segment_seconds
            truth = spans_of_labels(
                segment_labels(r.gt_spans, n, seg), len(lab.steps), seg, n * seg
            )
            cols["snapped"].add(truth, r.gt_spans)
            cols["naive"].add(naive[i], r.gt_spans)
        for a in ANNOTATED:
            ann = [r.gt_spans if i < a else None for i, r in enumerate(lab.recordings)]
            res = align_group(lab.frames, lab.texts, ann, lab.segment_seconds, **params)
            for i in scored:
                cols[f"group {a}"].add(res[i].spans, lab.recordings[i].gt_spans)
    return cols


def evaluate_pairs(
    seeds: Iterable[int], params: dict[str, float] | None = None, **knobs: float
) -> dict[str, Tally]:
    """Groups of two: the second recording scored alone, with an unannotated or annotated partner."""
    cols = {
        "text": Tally(),
        "naive": Tally(),
        "group 0": Tally(),
        "group 1": Tally(),
        "snapped": Tally(),
    }
    for seed in seeds:
        for exp in sorted(EXPERIMENTS):
            lab = make_lab_group(exp, 2, seed, **knobs)
            r = lab.recordings[1]
            cols["naive"].add(naive_one_pass(lab)[1], r.gt_spans)
            cols["text"].add(align(lab.texts @ r.frames.T, lab.segment_seconds).spans, r.gt_spans)
            n, seg = r.frames.shape[0], lab.segment_seconds
            cols["snapped"].add(
                spans_of_labels(segment_labels(r.gt_spans, n, seg), len(lab.steps), seg, n * seg),
                r.gt_spans,
            )
            for a in (0, 1):
                ann = [lab.recordings[0].gt_spans if a else None, None]
                res = align_group(lab.frames, lab.texts, ann, lab.segment_seconds, **(params or {}))
                cols[f"group {a}"].add(res[1].spans, r.gt_spans)
    return cols


def naive_one_pass(lab: LabGroup, annotations: list | None = None) -> list[list]:
    """The naive one-pass group method: each recording's text-only labels (or annotation) give
    step exemplars, the plain mean of the others' frames per step; each recording is aligned
    once more ("biovl") on text plus exemplar cosine. No centring, background, skips or EM."""
    seg, k = lab.segment_seconds, len(lab.steps)
    annotations = annotations or [None] * len(lab.recordings)
    labels = [
        align(lab.texts @ f.T, seg).labels if a is None else segment_labels(a, f.shape[0], seg)
        for f, a in zip(lab.frames, annotations, strict=True)
    ]
    out = []
    for i, f in enumerate(lab.frames):
        proto = np.zeros((k, f.shape[1]))
        for j, other in enumerate(lab.frames):
            for s in range(k) if j != i else ():
                if (labels[j] == s).any():
                    proto[s] += other[labels[j] == s].mean(axis=0)
        proto /= np.maximum(np.linalg.norm(proto, axis=1, keepdims=True), 1e-12)
        out.append(
            annotations[i]
            if annotations[i] is not None
            else align(lab.texts @ f.T + proto @ f.T, seg).spans
        )
    return out


def _pair_row(name: str, cols: dict[str, Tally]) -> str:
    """A table row for groups of two (no 3-annotation column)."""
    m = {k: f"{100 * np.mean(t.mious):5.1f}" for k, t in cols.items()}
    prf = ["/".join(f"{100 * v:.0f}" for v in cols[c].prf()) for c in ("group 0", "group 1")]
    return (
        f"| {name} | {m['text']} | {m['naive']} | {m['group 0']} | {m['group 1']} | — | {m['snapped']} | "
        f"{prf[0]} | {prf[1]} | — |"
    )


def parse_seeds(text: str) -> list[int]:
    """'0-9' or '1,2,5' to a list of ints."""
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def _row(name: str, cols: dict[str, Tally]) -> str:
    """One markdown table row: mIoU per column, then P/R/F1 of the 0- and 1-annotation groups."""
    cells = [f"{100 * np.mean(t.mious):5.1f}" for t in cols.values()]
    prf = [
        "/".join(f"{100 * v:.0f}" for v in cols[c].prf()) for c in ("group 0", "group 1", "group 3")
    ]
    return f"| {name} | " + " | ".join(cells + prf) + " |"


HEADER = (
    "| setting | text only | naive one-pass group | group, 0 annotated | group, 1 | group, 3 | truth snapped to "
    "segments | not performed P/R/F1 (0) | (1) | (3) |\n|---|---|---|---|---|---|---|---|---|---|---|"
)
HARD = {"noise": 0.9, "variation": 0.7, "text_tie": 0.35}  # noisier frames, looser step looks
REGULAR = {"step_pace_sd": 0.7, "duration_sd": 0.3}  # each step its own pace, repeated closely
# The group method as it was before issue 22: no duration or skip priors, no adjacent-swap
# search, no veto or relocation of unrecognised steps, skipped steps placed anywhere at a
# gain of 32.
BEFORE_22 = {
    "duration_weight": 0.0,
    "skip_prior_weight": 0.0,
    "min_step_fit": float("-inf"),
    "max_step_fit": float("-inf"),
    "relocate_fit": float("inf"),
    "swap_gain": float("inf"),
    "place_gain": 32.0,
}


def main(argv: list[str] | None = None) -> int:
    """Print the held-out table, or search the defaults on tuning seeds."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="100-119")
    ap.add_argument("--grid", action="store_true", help="search GROUP_DEFAULTS on these seeds")
    ap.add_argument(
        "--before", action="store_true", help="the group method before issue 22 (BEFORE_22)"
    )
    args = ap.parse_args(argv)
    params = BEFORE_22 if args.before else {}
    seeds = parse_seeds(args.seeds)
    if args.grid:
        plain, off = groups(seeds, False), groups(seeds, True)
        grid = {
            "exemplar_weight": (1.0, 2.0, 4.0),
            "temperature": (3.0,),
            "skip_penalty": (1.0, 2.0, 4.0),
        }
        for values in itertools.product(*grid.values()):
            params = dict(zip(grid, values, strict=True))
            a, b = evaluate(plain, **params), evaluate(off, **params)
            means = [100 * np.mean(t.mious) for t in (*a.values(), *b.values())]
            f1 = a["group 0"].prf()[2]
            print(params, " ".join(f"{m:.1f}" for m in means), f"F1 {100 * f1:.0f}", flush=True)
        return 0
    print(f"seeds {seeds[0]}-{seeds[-1]}, defaults {GROUP_DEFAULTS}, overridden {params}")
    print(HEADER)
    print(_row("deviating recordings", evaluate(groups(seeds, False), **params)))
    print(_row("one off-protocol recording", evaluate(groups(seeds, True), **params)))
    print(
        _row(
            "harder lab (noise 0.9, variation 0.7, text tie 0.35)",
            evaluate(groups(seeds, False, **HARD), **params),
        )
    )
    print(
        _row(
            "regular lab (step paces sd 0.7, per-recording sd 0.3)",
            evaluate(groups(seeds, False, **REGULAR), **params),
        )
    )
    print(_pair_row("two recordings (one partner)", evaluate_pairs(seeds, params)))
    print(_pair_row("two recordings, harder lab", evaluate_pairs(seeds, params, **HARD)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

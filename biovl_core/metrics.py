"""Scoring: temporal IoU per step, mIoU per video, and data-set figures (SPEC.md "Metric").

A video's mIoU is the mean over its steps of the IoU between the predicted and the annotated
span; a missing (None) prediction scores 0. A step with no annotation cannot be scored and
is left out of its video's mean. Data-set figures are the mean over videos of the per-video
mIoU, in percent, overall and per experiment type.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from biovl_core.result import Span


def iou(pred: Span, gt: Span) -> float:
    """Temporal IoU of two spans ``(start_s, end_s)``; 0 when either is None."""
    if pred is None or gt is None:
        return 0.0
    ps, pe = _check_span(pred, "predicted")
    gs, ge = _check_span(gt, "annotated")
    union = max(pe, ge) - min(ps, gs)
    if union <= 0.0:
        return 1.0 if (ps, pe) == (gs, ge) else 0.0
    inter = max(0.0, min(pe, ge) - max(ps, gs))
    return inter / union


def step_ious(pred_spans: Sequence[Span], gt_spans: Sequence[Span]) -> list[float]:
    """IoU of every step, in protocol order; the two lists must have one span per step."""
    if len(pred_spans) != len(gt_spans):
        raise ValueError(
            f"{len(pred_spans)} predicted spans for {len(gt_spans)} annotated steps; "
            "predictions and annotations must list the same protocol steps in the same order."
        )
    return [iou(p, g) for p, g in zip(pred_spans, gt_spans, strict=True)]


def miou(pred_spans: Sequence[Span], gt_spans: Sequence[Span]) -> float:
    """Mean IoU over annotated steps, in [0, 1]; steps whose annotation is None are skipped."""
    scores = [
        s for s, g in zip(step_ious(pred_spans, gt_spans), gt_spans, strict=True) if g is not None
    ]
    if not scores:
        raise ValueError("no annotated step to score: every annotated span is None (or no steps).")
    return sum(scores) / len(scores)


@dataclass(frozen=True)
class GroupStats:
    """Spread of per-video mIoU (percent) over one group of videos."""

    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for a single video
    min: float
    max: float

    @classmethod
    def of(cls, values_pct: Sequence[float]) -> GroupStats:
        """Statistics of a non-empty list of percentages."""
        n = len(values_pct)
        mean = sum(values_pct) / n
        var = sum((v - mean) ** 2 for v in values_pct) / (n - 1) if n > 1 else 0.0
        return cls(n=n, mean=mean, std=math.sqrt(var), min=min(values_pct), max=max(values_pct))


@dataclass(frozen=True)
class DatasetScore:
    """Data-set figures: mean over videos of per-video mIoU (percent), overall and per group."""

    key: str
    overall: GroupStats
    by_experiment: dict[str, GroupStats] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "key": self.key,
            "overall": asdict(self.overall),
            "by_experiment": {k: asdict(v) for k, v in self.by_experiment.items()},
        }

    def table(self) -> str:
        """A fixed-width text table: one row per experiment type, then the overall row."""
        rows = [*self.by_experiment.items(), ("all", self.overall)]
        width = max(10, *(len(name) for name, _ in rows))
        lines = [
            f"{'experiment':<{width}}  {'n':>3}  {self.key + ' %':>8}  {'std':>6}  {'min':>6}  {'max':>6}"
        ]
        for name, s in rows:
            lines.append(
                f"{name:<{width}}  {s.n:>3}  {s.mean:>8.1f}  {s.std:>6.1f}  {s.min:>6.1f}  {s.max:>6.1f}"
            )
        return "\n".join(lines)


def aggregate(
    per_video: Sequence[Mapping[str, Any]],
    key: str = "miou",
    group_by: str = "experiment",
) -> DatasetScore:
    """Data-set figures from per-video rows such as ``{"experiment": "pcr", "miou": 0.31}``.

    ``row[key]`` is a per-video mIoU in [0, 1]; rows without ``group_by`` go to "unspecified".
    """
    if not per_video:
        raise ValueError("no videos to aggregate; score at least one recording first.")
    groups: dict[str, list[float]] = {}
    overall: list[float] = []
    for i, row in enumerate(per_video):
        name = row.get("name", f"row {i}")
        if key not in row:
            raise ValueError(f"video {name!r} has no {key!r} score (keys: {sorted(row)}).")
        value = float(row[key])
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"video {name!r}: {key}={value} is outside [0, 1]; pass fractions, not percent."
            )
        pct = 100.0 * value
        overall.append(pct)
        groups.setdefault(str(row.get(group_by) or "unspecified"), []).append(pct)
    return DatasetScore(
        key=key,
        overall=GroupStats.of(overall),
        by_experiment={g: GroupStats.of(v) for g, v in sorted(groups.items())},
    )


def _check_span(span: tuple[float, float], what: str) -> tuple[float, float]:
    """Validate a span and return it as floats."""
    start, end = float(span[0]), float(span[1])
    if not (math.isfinite(start) and math.isfinite(end)) or end < start:
        raise ValueError(f"invalid {what} span {span!r}: need finite start <= end (seconds).")
    return start, end

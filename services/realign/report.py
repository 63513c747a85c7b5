"""What ``biovl realign`` reports: each recording's outcome (also as a row of columns), the
run's summary with per-experiment figures, and how far spans moved."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.archive import JobFiles
from services.runner import annotate_payload, payload_spans

OUTCOMES = ("done", "skipped", "failed")
SPAN_TOLERANCE_S = 1e-6


def error_text(exc: BaseException) -> str:
    """An exception as the one-line reason of a failed recording."""
    return f"{type(exc).__name__}: {exc}"


@dataclass
class RecordingOutcome:
    """What happened to one archived recording."""

    lab: str
    job_id: str
    outcome: str  # done | skipped | failed
    experiment: str = "unspecified"
    reason: str = ""  # skipped: current | no_result | limit | taken; failed: the error
    version: int | None = None  # the new version (done) or the current one (skipped: current)
    previous_version: int | None = None
    embedded: bool = False  # decoded + embedded (not from the cache)
    spans_changed: int | None = None  # steps whose span moved vs the previous version
    miou: float | None = None  # of the current alignment, where annotations exist

    def row(self) -> dict[str, Any]:
        """The outcome as one row of columns: a missing number is -1 (versions, spans) or NaN."""
        d = dataclasses.asdict(self)
        for name in ("version", "previous_version", "spans_changed"):
            d[name] = -1 if d[name] is None else d[name]
        d["miou"] = math.nan if self.miou is None else self.miou
        return d

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> RecordingOutcome:
        """The outcome in a row made by ``row`` (numpy scalars as Python values)."""

        def count(name: str) -> int | None:
            value = int(row[name])
            return None if value < 0 else value

        miou = float(row["miou"])
        return cls(
            lab=str(row["lab"]),
            job_id=str(row["job_id"]),
            outcome=str(row["outcome"]),
            experiment=str(row["experiment"]),
            reason=str(row["reason"]),
            version=count("version"),
            previous_version=count("previous_version"),
            embedded=bool(row["embedded"]),
            spans_changed=count("spans_changed"),
            miou=None if math.isnan(miou) else miou,
        )


@dataclass
class RealignSummary:
    """The run's totals, per-experiment figures and per-recording outcomes."""

    total: int = 0
    planned: int = 0  # recordings the read stage found to re-align
    done: int = 0
    skipped: int = 0
    failed: int = 0
    embedded: int = 0
    from_cache: int = 0
    spans_changed: int = 0
    recordings_changed: int = 0
    align_calls: int = 0
    dry_run: bool = False
    ray: bool = False
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    groups: dict[str, Any] | None = None  # the group pass's counts (realign/groups.py GroupPass)
    outcomes: list[RecordingOutcome] = field(default_factory=list)

    def add(self, rec: RecordingOutcome) -> None:
        """Count one recording's outcome."""
        self.outcomes.append(rec)
        setattr(self, rec.outcome, getattr(self, rec.outcome) + 1)
        if rec.outcome == "done":
            self.embedded += int(rec.embedded)
            self.from_cache += int(not rec.embedded)
            self.spans_changed += rec.spans_changed or 0
            self.recordings_changed += int(bool(rec.spans_changed))

    def miou_score(self) -> Any:
        """``metrics.aggregate`` over the current alignments that have annotations, or None."""
        from biovl_core.metrics import aggregate

        rows = [
            {"name": o.job_id, "experiment": o.experiment, "miou": o.miou}
            for o in self.outcomes
            if o.miou is not None
        ]
        return aggregate(rows) if rows else None

    def by_experiment(self) -> dict[str, dict[str, Any]]:
        """Per experiment: done, skipped, failed, steps moved, mIoU % (mean over videos)."""
        table: dict[str, dict[str, Any]] = {}
        for o in self.outcomes:
            row = table.setdefault(
                o.experiment, {"done": 0, "skipped": 0, "failed": 0, "spans_changed": 0}
            )
            row[o.outcome] += 1
            row["spans_changed"] += o.spans_changed or 0
        score = self.miou_score()
        for name, row in table.items():
            stats = score.by_experiment.get(name) if score else None
            row["miou_pct"] = stats.mean if stats else None
            row["miou_n"] = stats.n if stats else 0
        return dict(sorted(table.items()))

    def table(self) -> str:
        """A fixed-width table: one row per experiment, then the totals."""
        rows = self.by_experiment()
        total = {
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "spans_changed": self.spans_changed,
        }
        score = self.miou_score()
        total["miou_pct"] = score.overall.mean if score else None
        total["miou_n"] = score.overall.n if score else 0
        width = max([10, *(len(n) for n in rows)])
        lines = [
            f"{'experiment':<{width}}  {'done':>5}  {'skipped':>7}  {'failed':>6}  "
            f"{'steps moved':>11}  {'mIoU %':>6}  {'n':>3}"
        ]
        for name, row in [*rows.items(), ("all", total)]:
            miou = "-" if row["miou_pct"] is None else f"{row['miou_pct']:.1f}"
            lines.append(
                f"{name:<{width}}  {row['done']:>5}  {row['skipped']:>7}  {row['failed']:>6}  "
                f"{row['spans_changed']:>11}  {miou:>6}  {row['miou_n']:>3}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        d = dataclasses.asdict(self)
        score = self.miou_score()
        d["miou"] = score.to_dict() if score else None
        d["by_experiment"] = self.by_experiment()
        return d


def spans_changed(old: dict[str, Any], new: dict[str, Any]) -> int:
    """How many steps' spans differ between two alignment JSONs (all of them if K differs)."""
    a, b = payload_spans(old), payload_spans(new)
    if len(a) != len(b):
        return max(len(a), len(b))
    moved = 0
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None):
            moved += 1
        elif x is not None and y is not None:
            moved += int(max(abs(x[0] - y[0]), abs(x[1] - y[1])) > SPAN_TOLERANCE_S)
    return moved


def annotation_miou(jf: JobFiles, payload: dict[str, Any]) -> float | None:
    """mIoU of an alignment JSON against the job's annotations (None without annotations)."""
    return annotate_payload(dict(payload), jf).get("miou")

"""What a lab's history of one protocol says about each step: durations, skips, orders.

```python
from biovl_core.align.priors import HistoryRecord, group_priors
priors = group_priors([HistoryRecord(spans, weight=3.0), ...], k=len(steps))
priors.steps[s].range_s      # the lab's usual duration of step s (10th-90th percentile)
priors.duration_logpdf(s, seconds)
```

A ``HistoryRecord`` is one earlier recording's K spans (None = not performed) with a weight:
annotated and corrected recordings are ground truth and weigh more (``ANNOTATED_WEIGHT``),
machine alignments 1. Per step:

- **durations**: a log-normal fit: centre the weighted median of log seconds (a single
  3x outlier does not move it), spread a robust sd shrunk towards the spread pooled over all
  steps of the protocol (``pool`` pseudo-recordings; ``DEFAULT_LOG_SD`` before any step was
  seen twice), so two recordings of a step already give a usable prior; the sd never falls
  below ``MIN_LOG_SD``;
- **skip rate**: the weighted share of recordings that did not perform it, with a
  Beta(``SKIP_PRIOR_A``, ``SKIP_PRIOR_B``) prior (most steps are done);
- **order**: ``before[a, b]``, the weighted share of recordings doing both where a started
  before b;
- **evidence**: the summed weight of the recordings that performed it, and a strength
  ``evidence / (evidence + half_strength)`` in [0, 1) that scales every use of the prior.

An empty history gives strength 0 everywhere: an aligner fed it behaves exactly as without.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from biovl_core.result import Span

ANNOTATED_WEIGHT = 3.0  # an annotated or corrected recording counts as this many alignments
MIN_LOG_SD = 0.2  # no step is assumed more regular than ±20 % in duration
SKIP_PRIOR_A, SKIP_PRIOR_B = 0.2, 2.0  # Beta prior of a step's skip rate (mean ≈ 0.09)
HALF_STRENGTH = 2.0  # evidence (recordings) at which a prior is used at half strength
POOL = 4.0  # pseudo-recordings of the protocol's pooled spread in each step's spread
DEFAULT_LOG_SD = 0.7  # a step's spread when no step was seen twice (durations vary ~2x)
LOW_QUANTILE = 0.45  # ``StepPrior.low_s``; chosen with the deviation report (deviations.py)


@dataclass(frozen=True)
class HistoryRecord:
    """One earlier recording of the protocol: K spans in seconds (None = not performed)."""

    spans: Sequence[Span]
    weight: float = 1.0  # ANNOTATED_WEIGHT for annotated / corrected recordings


@dataclass(frozen=True)
class StepPrior:
    """What the history says about one step."""

    log_mean: float  # mean of log(duration in seconds); nan without evidence
    log_sd: float
    skip_rate: float
    evidence: float  # summed weight of recordings that performed the step
    strength: float  # evidence / (evidence + HALF_STRENGTH), 0 without history
    range_s: tuple[float, float] | None  # the usual duration: 10th and 90th percentile (s)
    median_s: float | None
    low_s: float | None = None  # the LOW_QUANTILE of its durations (s): what "usual" is
    # measured from when one of a few recordings may have done the step long too

    def to_dict(self) -> dict[str, float | list[float] | None]:
        """JSON-able form (rounded) for results and the API."""
        return {
            "median_s": None if self.median_s is None else round(self.median_s, 2),
            "range_s": None if self.range_s is None else [round(v, 2) for v in self.range_s],
            "log_sd": None if math.isnan(self.log_mean) else round(self.log_sd, 4),
            "skip_rate": round(self.skip_rate, 4),
            "evidence": round(self.evidence, 3),
            "strength": round(self.strength, 4),
        }


@dataclass(frozen=True)
class GroupPriors:
    """Per-step priors of one protocol group and the pairwise order shares."""

    steps: tuple[StepPrior, ...]
    before: (
        np.ndarray
    )  # [K, K] weighted share of recordings where a started before b (nan: never both)
    recordings: float  # summed weight of the history
    pooled_log_sd: float = math.nan  # the step-to-step spread pooled over the steps (nan: none)

    @property
    def k(self) -> int:
        """The number of steps."""
        return len(self.steps)

    @property
    def empty(self) -> bool:
        """True when no step has any evidence (the priors change nothing)."""
        return all(s.strength == 0.0 for s in self.steps)

    def duration_logpdf(self, step: int, seconds: np.ndarray) -> np.ndarray:
        """Log-normal log density ratio of durations against the step's mode (0 at the mode)."""
        p = self.steps[step]
        if p.strength == 0.0 or math.isnan(p.log_mean):
            return np.zeros_like(np.asarray(seconds, dtype=np.float64))
        x = np.log(np.maximum(np.asarray(seconds, dtype=np.float64), 1e-6))
        return -0.5 * ((x - p.log_mean) / p.log_sd) ** 2


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The q-quantile of weighted values (linear in the cumulative weight)."""
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cum = np.cumsum(w) - 0.5 * w
    return float(np.interp(q * w.sum(), cum, v))


def group_priors(
    history: Sequence[HistoryRecord],
    k: int,
    half_strength: float = HALF_STRENGTH,
    pool: float = POOL,
) -> GroupPriors:
    """Priors of a protocol of ``k`` steps from its lab's earlier recordings (module doc)."""
    recs = [h for h in history if h.weight > 0]
    for h in recs:
        if len(h.spans) != k:
            raise ValueError(f"a history record has {len(h.spans)} spans for {k} steps")
    w = np.array([float(h.weight) for h in recs])
    logd = np.full((len(recs), k), np.nan)
    starts = np.full((len(recs), k), np.nan)
    for r, h in enumerate(recs):
        for s, span in enumerate(h.spans):
            if span is not None:
                starts[r, s] = span[0]
                logd[r, s] = math.log(max(span[1] - span[0], 1e-3))
    done = ~np.isnan(logd)
    centre = np.full(k, np.nan)
    for s in range(k):
        if done[:, s].any():
            centre[s] = _weighted_quantile(logd[done[:, s], s], w[done[:, s]], 0.5)
    # The spread of a step's duration from one recording to the next, pooled over the steps
    # (steps differ in typical duration, not much in how regular they are): the median
    # absolute deviation from each step's median x 1.4826 (the normal's sd), corrected for
    # the medians fitted; a median, so the lab's own outliers (a step once 3x longer) do
    # not widen what counts as usual.
    dev = np.abs(logd - centre[None, :])[done]
    fitted = int((done.sum(axis=0) > 0).sum())
    dof = max(int(done.sum()) - fitted, 0)
    pooled_sd = 1.4826 * float(np.median(dev)) * done.sum() / dof if dof else math.nan
    steps = []
    total = float(w.sum())
    for s in range(k):
        ws = w[done[:, s]]
        ev = float(ws.sum())
        skip = (total - ev + SKIP_PRIOR_A) / (total + SKIP_PRIOR_A + SKIP_PRIOR_B)
        if ev == 0.0:
            steps.append(StepPrior(math.nan, math.nan, skip, 0.0, 0.0, None, None))
            continue
        x = logd[done[:, s], s]
        own = 1.4826 * _weighted_quantile(np.abs(x - centre[s]), ws, 0.5)
        prior_sd = pooled_sd if math.isfinite(pooled_sd) else DEFAULT_LOG_SD
        sd = max(math.sqrt((ev * own**2 + pool * prior_sd**2) / (ev + pool)), MIN_LOG_SD)
        lo, hi = _weighted_quantile(x, ws, 0.1), _weighted_quantile(x, ws, 0.9)
        low = _weighted_quantile(x, ws, LOW_QUANTILE)
        steps.append(
            StepPrior(
                float(centre[s]),
                sd,
                skip,
                ev,
                ev / (ev + half_strength),
                (math.exp(lo), math.exp(hi)),
                math.exp(centre[s]),
                math.exp(low),
            )
        )
    before = np.full((k, k), np.nan)
    for a in range(k):
        for b in range(k):
            both = done[:, a] & done[:, b]
            if a != b and both.any():
                before[a, b] = float(w[both] @ (starts[both, a] < starts[both, b])) / w[both].sum()
    return GroupPriors(tuple(steps), before, total, pooled_sd)


def no_priors(k: int) -> GroupPriors:
    """The priors of an empty history: strength 0, nothing learned."""
    return group_priors([], k)


def duration_scores(priors: GroupPriors, n: int, seg: float, weight: float) -> np.ndarray:
    """``L[K, N + 1]`` for ``kernel_duration``: each run length's log prior times the step's
    strength and ``weight``. A run of d segments stands for d x ``seg`` seconds, known to about
    half a segment, so the log sd is widened by 1 / (2 d). Column 0 is unused."""
    out = np.zeros((priors.k, n + 1))
    d = np.arange(1, n + 1, dtype=np.float64)
    x = np.log(d * seg)
    for s, p in enumerate(priors.steps):
        if p.strength == 0.0 or math.isnan(p.log_mean) or weight == 0.0:
            continue
        sd2 = p.log_sd**2 + (0.5 / d) ** 2
        out[s, 1:] = -0.5 * weight * p.strength * (x - p.log_mean) ** 2 / sd2
    return out


def skip_scores(priors: GroupPriors, weight: float) -> np.ndarray:
    """Per step, what to add to a skip's score: ``weight`` x the history's strength (its summed
    weight over that plus ``HALF_STRENGTH``) x the log-odds of the lab's skip rate less those
    of the prior's mean rate (0 without history)."""
    base = SKIP_PRIOR_A / (SKIP_PRIOR_A + SKIP_PRIOR_B)
    strength = priors.recordings / (priors.recordings + HALF_STRENGTH)
    out = np.zeros(priors.k)
    for s, p in enumerate(priors.steps):
        if weight and strength:
            rate = min(max(p.skip_rate, 1e-3), 1 - 1e-3)
            out[s] = weight * strength * (math.log(rate / (1 - rate)) - math.log(base / (1 - base)))
    return out

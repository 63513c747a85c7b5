"""The group's last word on each step: is its run where the other recordings' step is?

Step 6 of ``biovl_core.align.group`` (its module doc), after the final decode. The text and the
exemplars together chose the labels; this looks again at each step with the exemplars alone
(``llr`` [K + 1, N]: each segment's exemplar log-likelihood ratio per step, and last of the
background, as ``group._exemplar_llr`` gives them).

- Each step's bar is the others' own fit to it, less ``fit_drop`` (a step the lab's runs
  fit only loosely is held to less), kept between ``min_step_fit`` and ``max_step_fit``
  (``veto_bars``); ``min_step_fit`` where fewer than ``MIN_BAR_EVIDENCE`` others did it (in
  a pair, one recording's exemplars are too noisy to hold the other to more).
- A step the decode skipped, or whose run looks on average less like the others' step than
  its bar, is first *relocated*: decoded again in protocol order with its match row
  weighted ``exemplar_weight`` more towards its exemplars, it must be done (and so must every
  step done now). The new labels are kept when the step's new run fits its exemplars by at
  least ``relocate_fit`` and beats what held those segments (another step's fit, or the
  background's) by ``relocate_margin`` on average: the text put the step in the wrong place,
  or a neighbour's run swallowed it (issue 22: most false skips were one or the other).
- A step that cannot be relocated and fits below its bar is judged not performed
  (the *veto*): the text alone put it there, on an off-protocol action or a look-alike.

Labels with steps out of protocol order (a swap) are only vetoed, never relocated: the
protocol-order decode would undo the swap.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from biovl_core.align.order_search import run_fit, solve_order

MIN_BAR_EVIDENCE = 3  # other recordings with a run of the step before its bar may rise


class StepProblem(NamedTuple):
    """One recording's final decode problem: text and exemplar scores ``match`` [K, N] and
    ``drop`` [N], step skip scores ``skip`` [K], run-length scores ``length`` (None: none),
    and the exemplar log-likelihood ratios ``llr`` [K + 1, N] (the background's last)."""

    match: np.ndarray
    drop: np.ndarray
    skip: np.ndarray
    length: np.ndarray | None
    llr: np.ndarray


def relocate(
    labels: np.ndarray, problem: StepProblem, s: int, p: dict[str, float]
) -> tuple[np.ndarray, float] | None:
    """Labels with step ``s`` done where its exemplars put it, and the margin it won by over
    ``relocate_margin``; None when the run it gets there does not pass (module doc)."""
    match, drop, skip, length, llr = problem
    k = match.shape[0]
    weighted = match.astype(np.float64).copy()
    weighted[s] += p["exemplar_weight"] * llr[s]
    done = np.isin(np.arange(k), labels[labels >= 0])
    must = np.where(done, -math.inf, skip)
    must[s] = -math.inf
    new = solve_order(weighted, drop, must, length, np.arange(k))[0]
    cols = np.flatnonzero(new == s)
    fit = float(llr[s, cols].mean())
    held = labels[cols]
    rivals = cols[held != s]  # segments s's old run already had are nobody else's
    holder = np.where(
        held[held != s] >= 0, llr[np.maximum(held[held != s], 0), rivals], llr[k, rivals]
    )
    margin = fit - (float(holder.mean()) if rivals.size else -math.inf)
    if fit < p["relocate_fit"] or margin < p["relocate_margin"]:
        return None
    return new, min(margin - p["relocate_margin"], fit - p["relocate_fit"])


def veto_bars(others_fit: np.ndarray, p: dict[str, float]) -> np.ndarray:
    """Per step the fit its run must reach (module doc) from ``others_fit`` [G, K]: each other
    recording's fit to its own run of the step (NaN: no run)."""
    k = others_fit.shape[1]
    low = p["min_step_fit"]  # -inf with max_step_fit -inf: never veto; a huge one: always
    seen = np.isfinite(others_fit).sum(axis=0) >= MIN_BAR_EVIDENCE
    bars = np.full(k, low)  # too few judges (a pair): the lowest bar
    if seen.any():
        typical = np.nanmedian(others_fit[:, seen], axis=0)
        bars[seen] = np.clip(typical - p["fit_drop"], low, max(p["max_step_fit"], low))
    return bars


def check_steps(
    labels: np.ndarray,
    problem: StepProblem,
    p: dict[str, float],
    temp: float,
    bars: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[int, float]]:
    """Labels after relocating and vetoing steps (module doc), and the confidence of each step
    relocated (a logistic of its margin) or vetoed (of how far its fit falls short).
    ``bars``: each step's fit to reach (``veto_bars``); ``min_step_fit`` for all when None."""
    k = problem.match.shape[0]
    bar = np.full(k, p["min_step_fit"]) if bars is None else np.asarray(bars, dtype=np.float64)
    out: dict[int, float] = {}
    in_order = bool(np.all(np.diff(labels[labels >= 0]) >= 0))
    for s in range(k):
        fit = run_fit(labels, problem.llr, s)
        if fit is not None and fit >= bar[s]:
            continue
        moved = relocate(labels, problem, s, p) if in_order else None
        if moved is not None:
            labels, won = moved
            out[s] = 1.0 / (1.0 + math.exp(-won / temp))
        elif fit is not None:
            labels = np.where(labels == s, -1, labels)
            out[s] = 1.0 / (1.0 + math.exp(fit - bar[s]))
    return labels, out

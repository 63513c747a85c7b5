"""The group's final decode: the best labels in protocol order, or with one swap.

``decode`` is step 5 of ``biovl_core.align.group`` (its module doc). Each order is solved with
``kernel_skip.solve_skip`` (or ``kernel_duration.solve_duration`` when run-length scores are
given) on the score rows permuted into that order. A swap ``(a, a + 1)`` must gain more than
``swap_gain`` over protocol order, and it must also beat the *repeat* hypothesis by
``repeat_gain``: the order ``a, a + 1, a`` in which the second ``a`` is the step done again
(its segments are background in the result, the step's span is the first time). A recording
that did ``a`` again after ``a + 1`` otherwise reads as ``a + 1`` before ``a`` when the second
time fits ``a`` a little better (issue 22: most false swaps were repeats). When the repeat
wins by ``repeat_gain`` over protocol order, its labels (first time) are kept. Last, each
swapped step's run must look like the other recordings' step: its mean exemplar
log-likelihood ratio (``fit``, when given) at least ``swap_fit``; otherwise the swap was a
skipped step given a run next to its neighbour (the other false swaps of issue 22).
With ``swap_reach`` 2 a swap may also jump one step, which is then skipped: ``a + 2`` before
``a`` with ``a + 1`` not done (a lab that skips a step and swaps its neighbours; a third of the
swaps missed on the development labs). Another order may never skip a step protocol order does
(it would take that step's place), except the step a swap jumps.
"""

from __future__ import annotations

import math

import numpy as np

from biovl_core.align import kernel_duration, kernel_skip


def best_run(values: np.ndarray) -> tuple[float, int, int]:
    """The largest sum of a contiguous run of ``values`` (Kadane) and its first and last
    index; the earliest such run on ties."""
    best, run, start, first, last = -math.inf, 0.0, 0, 0, 0
    for j, v in enumerate(values):
        if run <= 0.0:
            run, start = 0.0, j
        run += float(v)
        if run > best:
            best, first, last = run, start, j
    return best, first, last


def solve_order(
    match: np.ndarray,
    drop: np.ndarray,
    skip: np.ndarray,
    length: np.ndarray | None,
    order: np.ndarray,
) -> tuple[np.ndarray, float]:
    """Best labels (step indices; a step's later times in ``order`` -1) with the steps done
    in ``order`` (with run-length scores ``length`` when given), and the optimum."""
    m, d = np.asarray(match[order], dtype=np.float64), np.asarray(drop, dtype=np.float64)
    if length is None:
        lab, v = kernel_skip.solve_skip(m, d, skip)
    else:
        lab, v = kernel_duration.solve_duration(m, d, skip, length[order])
    first = np.array([s not in order[:i] for i, s in enumerate(order)])
    keep = (lab >= 0) & first[np.maximum(lab, 0)]
    return np.where(keep, order[np.maximum(lab, 0)], -1), float(v)


def place_skipped(
    labels: np.ndarray, match: np.ndarray, drop: np.ndarray, min_gain: float, temp: float
) -> dict[int, float]:
    """Put skipped steps into background runs where they gain > ``min_gain`` (swaps).

    Returns the confidence of each placed step: a logistic of its margin over ``min_gain``.
    Runs are found with Kadane's maximum-sum subarray over each background stretch.
    """
    k = match.shape[0]
    placed: dict[int, float] = {}
    if min_gain == math.inf:  # never (the default): no run can gain more
        return placed
    missing = [s for s in range(k) if not (labels == s).any()]
    while missing:
        best = (min_gain, -1, 0, 0)
        free = labels < 0
        for s in missing:
            run, first, last = best_run(np.where(free, match[s] - drop, -np.inf))
            if run > best[0]:
                best = (run, s, first, last)
        g, s, a, b = best
        if s < 0:
            break
        labels[a : b + 1] = s
        placed[s] = 1.0 / (1.0 + math.exp(-(g - min_gain) / temp))
        missing.remove(s)
    return placed


def run_fit(labels: np.ndarray, fit: np.ndarray, s: int) -> float | None:
    """How much step ``s``'s run looks like the other recordings' step: the mean exemplar
    log-likelihood ratio ``fit[s]`` over its segments (None when it has no run)."""
    cols = labels == s
    return float(fit[s, cols].mean()) if cols.any() else None


def _logistic(margin: float, temp: float) -> float:
    """Confidence of a choice won by ``margin`` (score units) at ``temp``."""
    return 1.0 / (1.0 + math.exp(-margin / temp))


def decode(
    scores: tuple[np.ndarray, np.ndarray, np.ndarray],
    skip: np.ndarray,
    p: dict[str, float],
    temp: float,
    length: np.ndarray | None = None,
    fit: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[int, float]]:
    """Best labels with skips (with run-length scores ``length`` when given), in protocol
    order, with a repeat, or with two steps swapped (adjacent, or across one skipped step:
    ``swap_reach``; module doc); skipped steps then placed out of order. Also the confidence
    of swapped and placed steps."""
    match, drop, _ = scores
    k = match.shape[0]

    def solve(order: np.ndarray, step_skip: np.ndarray) -> tuple[np.ndarray, float]:
        """Labels (step indices; a repeat's segments -1) of the best labeling in ``order``."""
        return solve_order(match, drop, step_skip, length, order)

    def exchanged(a: int, b: int) -> np.ndarray:
        """Protocol order with ``a`` and ``b`` exchanged, the steps between them left out."""
        return np.concatenate([np.arange(a), [b, a], np.arange(b + 1, k)])

    def repeat(a: int, b: int) -> tuple[np.ndarray, float]:
        """Order ``.., a, b, a, ..``: ``a`` and ``b`` done (and every step protocol order
        does; those between them left out), the second ``a`` free to leave out."""
        order = np.concatenate([np.arange(a + 1), [b, a], np.arange(b + 1, k)])
        own = kept[order].copy()
        own[a] = own[a + 1] = -math.inf
        own[a + 2] = 0.0
        return solve(order, own)

    def fits(lab: np.ndarray, s: int) -> bool:
        """Step ``s`` has a run that looks enough like the others' ``s`` (``swap_fit``)."""
        if fit is None:
            return bool((lab == s).any())
        score = run_fit(lab, fit, s)
        return score is not None and score >= p["swap_fit"]

    labels, plain = solve(np.arange(k), skip)
    # Another order may not skip a step protocol order does: it would take that step's place.
    kept = np.where(np.isin(np.arange(k), labels[labels >= 0]), -math.inf, skip)
    best, swapped, ceiling = plain + p["swap_gain"], None, math.inf
    reach = int(p["swap_reach"]) if p["swap_gain"] < math.inf else 0
    for a, b in [(a, a + d) for d in range(1, reach + 1) for a in range(k - d)]:
        order = exchanged(a, b)
        lab, v = solve(order, kept[order])
        if not (v > best and fits(lab, a) and fits(lab, b)):
            continue
        rep_lab, rep = repeat(a, b) if p["repeat_gain"] < math.inf else (labels, -math.inf)
        if rep <= v + p["repeat_gain"]:
            labels, best, swapped, ceiling = lab, v, (a, b), v + p["repeat_gain"] - rep
        elif swapped is None:
            labels = rep_lab  # done again: the first time is the step's span
    placed = place_skipped(labels, match, drop, p["place_gain"], temp)
    if swapped is not None:
        c = _logistic(min(best - plain - p["swap_gain"], ceiling), temp)
        placed.update(dict.fromkeys(swapped, c))
    return labels, placed

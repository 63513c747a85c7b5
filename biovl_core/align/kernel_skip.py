"""Compiled CPU kernels for monotonic segmentation where a step may also be skipped (numba).

The problem of ``biovl_core.align`` (each step one contiguous run of segments, runs in
protocol order, other segments background at drop score ``D[n]``) plus one more move: step
``k`` may have no run at all, for skip score ``S[k]`` (``-inf`` = must be performed). With
``S = -inf`` everywhere it is exactly the kernel of ``kernel_numba`` (same optimum).

States, for steps ``k = 0..K`` and segments ``n = 0..N``:

- ``C[k, n]``: best score of the first ``n`` segments with steps ``0..k-1`` settled
  (performed in a run that ended before segment ``n``, or skipped);
- ``O[k, n]``: best score of segments ``0..n`` with segment ``n`` inside step ``k``'s run.

``C[k, n] = max(C[k, n-1] + D[n-1], C[k-1, n] + S[k-1], O[k-1, n-1])`` (drop / skip /
close) and ``O[k, n] = M[k, n] + max(C[k, n], O[k, n-1])`` (start / continue), from
``C[0, 0] = 0``; the optimum is ``C[K, N]``. ``posterior`` runs the same recurrence with
log-sum-exp in place of max (forward and backward) at a temperature, for soft labels.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_NEG = -np.inf


@njit(cache=True, nogil=True)
def _lse2(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without overflow; -inf + -inf stays -inf."""
    hi = a if a >= b else b
    if hi == _NEG:
        return _NEG
    return hi + math.log(math.exp(a - hi) + math.exp(b - hi))


@njit(cache=True, nogil=True)
def solve_skip(match: np.ndarray, drop: np.ndarray, skip: np.ndarray) -> tuple[np.ndarray, float]:
    """Best labels [N] (step index, -1 = background) and the optimum, float64 throughout.

    ``match`` [K, N], ``drop`` [N] and ``skip`` [K] hold scores (``-inf`` = not allowed).
    Ties go to drop, then skip, then close (for ``C``) and to start (for ``O``).
    """
    k, n = match.shape
    c = np.full((k + 1, n + 1), _NEG)
    o = np.full((k, n), _NEG)
    c_from = np.zeros((k + 1, n + 1), dtype=np.int8)  # 0 drop, 1 skip, 2 close
    o_from = np.zeros((k, n), dtype=np.int8)  # 0 start, 1 continue
    c[0, 0] = 0.0
    for j in range(n + 1):
        for i in range(k + 1):
            if i > 0 or j > 0:
                best, arg = _NEG, 0
                if j > 0 and c[i, j - 1] + drop[j - 1] > best:
                    best, arg = c[i, j - 1] + drop[j - 1], 0
                if i > 0 and c[i - 1, j] + skip[i - 1] > best:
                    best, arg = c[i - 1, j] + skip[i - 1], 1
                if i > 0 and j > 0 and o[i - 1, j - 1] > best:
                    best, arg = o[i - 1, j - 1], 2
                c[i, j], c_from[i, j] = best, arg
            if i < k and j < n:
                if j > 0 and o[i, j - 1] > c[i, j]:
                    o[i, j], o_from[i, j] = match[i, j] + o[i, j - 1], 1
                else:
                    o[i, j], o_from[i, j] = match[i, j] + c[i, j], 0
    labels = np.full(n, -1, dtype=np.int64)
    i, j, in_run = k, n, False
    while in_run or i > 0 or j > 0:
        if in_run:
            labels[j] = i
            if o_from[i, j] == 1:
                j -= 1
            else:
                in_run = False
        else:
            arg = c_from[i, j]
            if arg == 0:
                j -= 1
            elif arg == 1:
                i -= 1
            else:
                i -= 1
                j -= 1
                in_run = True
    return labels, c[k, n]


@njit(cache=True, nogil=True)
def posterior(
    match: np.ndarray, drop: np.ndarray, skip: np.ndarray, temperature: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Soft alignment: P(segment n in step k) [K, N], P(step k skipped) [K], log-partition.

    Every score is divided by ``temperature`` (higher = softer); the distribution is over all
    labelings, each weighted by exp(objective / temperature). So that each labeling is one
    path, ``C`` is split into "settled" (just closed or skipped: skips allowed) and "after a
    drop" (no skip: skips come before the drops that follow a run).
    """
    k, n = match.shape
    t = 1.0 / temperature
    cs = np.full((k + 1, n + 1), _NEG)
    cd = np.full((k + 1, n + 1), _NEG)
    o = np.full((k, n), _NEG)
    cs[0, 0] = 0.0
    for j in range(n + 1):
        for i in range(k + 1):
            if i > 0:
                acc = cs[i - 1, j] + skip[i - 1] * t
                if j > 0:
                    acc = _lse2(acc, o[i - 1, j - 1])
                cs[i, j] = acc
            if j > 0:
                cd[i, j] = _lse2(cs[i, j - 1], cd[i, j - 1]) + drop[j - 1] * t
            if i < k and j < n:
                acc = _lse2(cs[i, j], cd[i, j])
                if j > 0:
                    acc = _lse2(acc, o[i, j - 1])
                o[i, j] = match[i, j] * t + acc
    csb = np.full((k + 1, n + 1), _NEG)
    cdb = np.full((k + 1, n + 1), _NEG)
    ob = np.full((k, n), _NEG)
    csb[k, n] = 0.0
    cdb[k, n] = 0.0
    for j in range(n, -1, -1):
        for i in range(k, -1, -1):
            if i < k and j < n:
                acc = csb[i + 1, j + 1]
                if j + 1 < n:
                    acc = _lse2(acc, ob[i, j + 1] + match[i, j + 1] * t)
                ob[i, j] = acc
            if i == k and j == n:
                continue
            start = match[i, j] * t + ob[i, j] if (i < k and j < n) else _NEG
            dropped = cdb[i, j + 1] + drop[j] * t if j < n else _NEG
            cdb[i, j] = _lse2(dropped, start)
            skipped = csb[i + 1, j] + skip[i] * t if i < k else _NEG
            csb[i, j] = _lse2(skipped, cdb[i, j])
    log_z = cs[0, 0] + csb[0, 0]
    post = np.zeros((k, n))
    p_skip = np.zeros(k)
    for i in range(k):
        for j in range(n):
            post[i, j] = math.exp(o[i, j] + ob[i, j] - log_z)
        acc = 0.0
        for j in range(n + 1):
            acc += math.exp(cs[i, j] + skip[i] * t + csb[i + 1, j] - log_z)
        p_skip[i] = acc
    return post, p_skip, log_z

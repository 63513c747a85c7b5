"""Explicit-duration (semi-Markov) segmentation with skips: a step's run is scored as a whole.

The problem of ``kernel_skip`` (each step one contiguous run of segments in protocol order,
or skipped at ``S[k]``; other segments background at ``D[n]``) plus a score per run length:
a run of step ``k`` over ``d`` segments adds ``L[k, d]`` (``d = 1..N``; ``-inf`` = not
allowed), the log prior of that duration from the lab's history (``biovl_core.align.priors``).
With ``L = 0`` everywhere it has exactly ``kernel_skip.solve_skip``'s optimum.

``C[k, n]``, the best score of the first ``n`` segments with steps ``0..k-1`` settled:
``C[k, n] = max(C[k, n-1] + D[n-1], C[k-1, n] + S[k-1],
max_d C[k-1, n-d] + sum(M[k-1, n-d:n]) + L[k-1, d])``, from ``C[0, 0] = 0``; the optimum
is ``C[K, N]``. O(K N^2) time, O(K N) memory: about 10 ms for K = 15, N = 300 in numba.
``solve_duration_numpy`` is the same recurrence vectorised over ``d`` (the reference).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_NEG = -np.inf


@njit(cache=True, nogil=True)
def solve_duration(
    match: np.ndarray, drop: np.ndarray, skip: np.ndarray, length: np.ndarray
) -> tuple[np.ndarray, float]:
    """Best labels [N] (step index, -1 = background) and the optimum, float64 throughout.

    ``match`` [K, N], ``drop`` [N], ``skip`` [K], ``length`` [K, N + 1] (column 0 unused).
    Ties go to drop, then skip, then the shortest run.
    """
    k, n = match.shape
    cum = np.zeros((k, n + 1))
    for i in range(k):
        for j in range(n):
            cum[i, j + 1] = cum[i, j] + match[i, j]
    c = np.full((k + 1, n + 1), _NEG)
    arg = np.zeros((k + 1, n + 1), dtype=np.int64)  # -1 drop, 0 skip, d > 0 a run of d
    c[0, 0] = 0.0
    for j in range(n + 1):
        for i in range(k + 1):
            if i == 0 and j == 0:
                continue
            best, how = _NEG, -1
            if j > 0 and c[i, j - 1] + drop[j - 1] > best:
                best, how = c[i, j - 1] + drop[j - 1], -1
            if i > 0:
                if c[i - 1, j] + skip[i - 1] > best:
                    best, how = c[i - 1, j] + skip[i - 1], 0
                for d in range(1, j + 1):
                    prev = c[i - 1, j - d]
                    if prev == _NEG:
                        continue
                    v = prev + cum[i - 1, j] - cum[i - 1, j - d] + length[i - 1, d]
                    if v > best:
                        best, how = v, d
            c[i, j], arg[i, j] = best, how
    labels = np.full(n, -1, dtype=np.int64)
    i, j = k, n
    while i > 0 or j > 0:
        how = arg[i, j]
        if how == -1:
            j -= 1
        elif how == 0:
            i -= 1
        else:
            labels[j - how : j] = i - 1
            i -= 1
            j -= how
    return labels, c[k, n]


def solve_duration_numpy(
    match: np.ndarray, drop: np.ndarray, skip: np.ndarray, length: np.ndarray
) -> tuple[np.ndarray, float]:
    """``solve_duration`` in numpy, vectorised over run lengths (same optimum and ties)."""
    match = np.asarray(match, dtype=np.float64)
    k, n = match.shape
    cum = np.concatenate([np.zeros((k, 1)), np.cumsum(match, axis=1)], axis=1)
    c = np.full((k + 1, n + 1), _NEG)
    arg = np.zeros((k + 1, n + 1), dtype=np.int64)
    c[0, 0] = 0.0
    for j in range(n + 1):
        for i in range(k + 1):
            if i == 0 and j == 0:
                continue
            best, how = _NEG, -1
            if j > 0 and c[i, j - 1] + drop[j - 1] > best:
                best, how = c[i, j - 1] + drop[j - 1], -1
            if i > 0:
                if c[i - 1, j] + skip[i - 1] > best:
                    best, how = c[i - 1, j] + skip[i - 1], 0
                if j > 0:
                    d = np.arange(1, j + 1)
                    with np.errstate(invalid="ignore"):
                        v = c[i - 1, j - d] + cum[i - 1, j] - cum[i - 1, j - d] + length[i - 1, d]
                    v = np.where(np.isnan(v), _NEG, v)
                    top = int(np.argmax(v))
                    if v[top] > best:
                        best, how = float(v[top]), top + 1
            c[i, j], arg[i, j] = best, how
    labels = np.full(n, -1, dtype=np.int64)
    i, j = k, n
    while i > 0 or j > 0:
        how = int(arg[i, j])
        if how == -1:
            j -= 1
        elif how == 0:
            i -= 1
        else:
            labels[j - how : j] = i - 1
            i -= 1
            j -= how
    return labels, float(c[k, n])

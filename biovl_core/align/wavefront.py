"""Batched wavefront DP written once against an array module (numpy on CPU, cupy on GPU).

Same recurrence, tie-breaking and direction bits as ``kernel_numba`` (see its docstring).
For exclusive segmentation every cell depends only on the previous segment, so the
wavefront (the set of cells computable at once) is a whole column of every alignment in
the batch: ``N`` vectorised steps over ``[B, K+1]`` arrays instead of the ``K+N``
anti-diagonals of classic Needleman-Wunsch with gaps.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


def solve_padded(xp: ModuleType, mt: Any, drop: Any, ks: Any, ns: Any) -> tuple[Any, Any]:
    """Solve a padded batch; return labels [B, Nmax] (int64, -1 past each ``n``) and optima [B].

    ``mt`` is float32 [B, Nmax, Kmax] (match matrices transposed, any finite padding),
    ``drop`` float32 [B, Nmax], ``ks``/``ns`` int64 [B] the true sizes (``1 <= k <= n``).
    Arrays must belong to ``xp``.
    """
    nb, nmax, kmax = mt.shape
    w = kmax + 1
    f32 = xp.float32
    neg = f32(-xp.inf)
    a_prev = xp.full((nb, w), neg, dtype=f32)
    b_prev = xp.full((nb, w), neg, dtype=f32)
    b_prev[:, 0] = 0
    dirs = xp.empty((nmax, nb, w), dtype=xp.uint8)
    rows = xp.arange(nb)
    last = ns - 1
    final_a = xp.full(nb, neg, dtype=f32)
    final_b = xp.full(nb, neg, dtype=f32)
    two = xp.uint8(2)
    four = xp.uint8(4)
    for j in range(nmax):
        a0 = a_prev[:, 1:]
        a1 = a_prev[:, :-1]
        b1 = b_prev[:, :-1]
        best = xp.maximum(a0, a1)
        c = (a1 > a0).astype(xp.uint8)
        take_b = b1 > best
        best = xp.where(take_b, b1, best)
        c = xp.where(take_b, two, c)
        a_cur = xp.empty_like(a_prev)
        a_cur[:, 0] = neg
        a_cur[:, 1:] = mt[:, j, :] + best
        from_b = b_prev > a_prev
        b_cur = drop[:, j, None] + xp.maximum(a_prev, b_prev)
        d = xp.where(from_b, four, xp.uint8(0))
        d[:, 1:] |= c
        dirs[j] = d
        done = last == j
        final_a = xp.where(done, a_cur[rows, ks], final_a)
        final_b = xp.where(done, b_cur[rows, ks], final_b)
        a_prev, b_prev = a_cur, b_cur
    state_b = final_b > final_a
    scores = xp.where(state_b, final_b, final_a)
    labels = xp.full((nb, nmax), -1, dtype=xp.int64)
    i = ks.astype(xp.int64)
    for j in range(nmax - 1, -1, -1):
        active = j <= last
        d = dirs[j, rows, i]
        labels[:, j] = xp.where(active & ~state_b, i - 1, -1)
        c = d & 3
        step_back = active & ~state_b & (c != 0)
        to_b = active & ~state_b & (c == 2)
        to_a = active & state_b & ((d & 4) == 0)
        i = i - step_back.astype(xp.int64)
        state_b = (state_b | to_b) & ~to_a
    return labels, scores

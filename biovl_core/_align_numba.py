"""Compiled CPU kernel for monotonic segmentation with optional background (numba).

The recurrence (shared, cell for cell, with ``_align_wavefront`` and ``_align_cupy``):
with steps ``i = 1..K`` and segments ``j = 0..N-1``,

- ``A[i, j]``: best score with segment ``j`` matched to step ``i`` (steps ``1..i`` all used);
- ``B[i, j]``: best score with segment ``j`` dropped after steps ``1..i`` are done;

``A[i, j] = M[i, j] + max(A[i, j-1], A[i-1, j-1], B[i-1, j-1])`` (continue / start / start
after background) and ``B[i, j] = D[j] + max(A[i, j-1], B[i, j-1])``, starting from
``B[0, -1] = 0`` and ``-inf`` elsewhere; the optimum is ``max(A[K, N-1], B[K, N-1])``.
Ties go to the first candidate in the order written. Every cell depends on the previous
segment only, so a whole column is one wavefront. Direction bits (uint8): bits 0-1 the
choice for ``A`` (0 continue, 1 start, 2 start after background), bit 2 set when ``B``
came from ``B``. ``-inf`` marks "impossible" (and "dropping disabled" in ``D``), which is
why fastmath's no-inf/no-nan flags are not used.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_NEG_INF = np.float32(-np.inf)


@njit(cache=True, nogil=True, inline="always")
def _column(
    row: np.ndarray,
    dj: np.float32,
    ap: np.ndarray,
    bp: np.ndarray,
    ac: np.ndarray,
    bc: np.ndarray,
    dr: np.ndarray,
    k: int,
) -> None:
    """Advance one segment: previous column (``ap``, ``bp``) -> current (``ac``, ``bc``) + bits.

    Written branch-free over shifted views (whose indices are provably non-negative) so
    LLVM vectorises the loop over steps.
    """
    ac[0] = _NEG_INF
    bc[0] = dj + bp[0]
    dr[0] = np.uint8(4)
    ap_lo = ap[:k]
    ap_hi = ap[1:]
    bp_lo = bp[:k]
    bp_hi = bp[1:]
    ac_hi = ac[1:]
    bc_hi = bc[1:]
    dr_hi = dr[1:]
    for i in range(k):
        a0 = ap_hi[i]
        a1 = ap_lo[i]
        b1 = bp_lo[i]
        bi = bp_hi[i]
        g1 = a1 > a0
        m01 = a1 if g1 else a0
        g2 = b1 > m01
        ac_hi[i] = row[i] + (b1 if g2 else m01)
        g3 = bi > a0
        bc_hi[i] = dj + (bi if g3 else a0)
        c = np.uint8(2) if g2 else (np.uint8(1) if g1 else np.uint8(0))
        dr_hi[i] = c | (np.uint8(4) if g3 else np.uint8(0))


@njit(cache=True, nogil=True)
def _solve_into(m: np.ndarray, drop: np.ndarray, labels: np.ndarray) -> np.float32:
    """Solve one problem (match ``m`` [K, N], ``drop`` [N]); write ``labels`` [N], return optimum.

    Two columns per iteration alternate between fixed buffers (no swap, so LLVM can
    vectorise ``_column``); each column of ``m`` is first gathered into a contiguous row.
    """
    k, n = m.shape
    w = k + 1
    a_even = np.full(w, _NEG_INF, dtype=np.float32)
    b_even = np.full(w, _NEG_INF, dtype=np.float32)
    b_even[0] = np.float32(0.0)
    a_odd = np.empty(w, dtype=np.float32)
    b_odd = np.empty(w, dtype=np.float32)
    row_even = np.empty(k, dtype=np.float32)
    row_odd = np.empty(k, dtype=np.float32)
    dirs = np.empty((n, w), dtype=np.uint8)
    j = 0
    while j + 1 < n:
        for i in range(k):
            row_even[i] = m[i, j]
            row_odd[i] = m[i, j + 1]
        _column(row_even, drop[j], a_even, b_even, a_odd, b_odd, dirs[j], k)
        _column(row_odd, drop[j + 1], a_odd, b_odd, a_even, b_even, dirs[j + 1], k)
        j += 2
    if j < n:
        for i in range(k):
            row_even[i] = m[i, j]
        _column(row_even, drop[j], a_even, b_even, a_odd, b_odd, dirs[j], k)
        a_last, b_last = a_odd[k], b_odd[k]
    else:
        a_last, b_last = a_even[k], b_even[k]
    i = k
    state = 0 if a_last >= b_last else 1
    score = a_last if state == 0 else b_last
    for j in range(n - 1, -1, -1):
        d = dirs[j, i]
        if state == 0:
            labels[j] = i - 1
            c = d & 3
            if c == 1:
                i -= 1
            elif c == 2:
                i -= 1
                state = 1
        else:
            labels[j] = -1
            if (d & 4) == 0:
                state = 0
    return score


@njit(cache=True, nogil=True)
def solve_one(m: np.ndarray, drop: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Solve one problem without thread start-up cost: ``m`` [K, N] float32, ``drop`` [N] float32."""
    labels = np.empty(m.shape[1], dtype=np.int64)
    score = _solve_into(m, drop, labels)
    return labels, score


@njit(cache=True, nogil=True, parallel=True)
def solve_flat(
    m_flat: np.ndarray,
    m_off: np.ndarray,
    drop_flat: np.ndarray,
    seg_off: np.ndarray,
    ks: np.ndarray,
    ns: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve a packed batch in parallel (one problem per thread); return flat labels and optima.

    Problem ``b`` has its match matrix at ``m_flat[m_off[b]:][:ks[b]*ns[b]]`` (row-major
    [K, N]) and its drop scores / labels at ``[seg_off[b]:][:ns[b]]``.
    """
    nb = ks.shape[0]
    labels = np.empty(drop_flat.shape[0], dtype=np.int64)
    scores = np.empty(nb, dtype=np.float32)
    for b in prange(nb):
        k = ks[b]
        n = ns[b]
        m = m_flat[m_off[b] : m_off[b] + k * n].reshape((k, n))
        s = seg_off[b]
        scores[b] = _solve_into(m, drop_flat[s : s + n], labels[s : s + n])
    return labels, scores

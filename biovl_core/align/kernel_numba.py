"""Compiled CPU kernel for monotonic segmentation with optional background (numba).

The recurrence (shared, cell for cell, with ``wavefront`` and ``kernel_cupy``):
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
why fastmath's no-inf/no-nan flags are not used in the DP.

Speed: the column update runs over ``KP = K`` rounded up to a multiple of ``LANES`` rows, so
LLVM's vectorised loop (16 float32 lanes with AVX-512) covers every column with no scalar
remainder; rows past ``K`` are padding (match score 0) that never feeds a real row, since
row ``i`` only reads rows ``i`` and ``i-1``. The match matrix is transposed once into
``[N, KP]`` so each column is one contiguous load. The traceback also returns the float64
objective (matched scores plus drop scores, summed from the last segment back) and each
step's first/last segment, so callers need no second pass. ``solve_flat`` fuses the default
drop score (a percentile of the match scores, selected exactly in O(KN) with vectorised
counting passes) and a finiteness check into the same per-alignment call.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_NEG_INF = np.float32(-np.inf)
LANES = 16
#: Below this many cells in a batch, ``solve_flat`` runs serially (no thread-pool wake-up).
PARALLEL_MIN_CELLS = 200_000


@njit(cache=True, nogil=True, inline="always")
def _column(
    row: np.ndarray,
    dj: np.float32,
    ap: np.ndarray,
    bp: np.ndarray,
    ac: np.ndarray,
    bc: np.ndarray,
    dr: np.ndarray,
    kp: int,
) -> None:
    """Advance one segment: previous column (``ap``, ``bp``) -> current (``ac``, ``bc``) + bits.

    Written branch-free over shifted views (whose indices are provably non-negative) so
    LLVM vectorises the loop over the ``kp`` (padded) steps.
    """
    ac[0] = _NEG_INF
    bc[0] = dj + bp[0]
    dr[0] = np.uint8(4)
    ap_lo = ap[:kp]
    ap_hi = ap[1:]
    bp_lo = bp[:kp]
    bp_hi = bp[1:]
    ac_hi = ac[1:]
    bc_hi = bc[1:]
    dr_hi = dr[1:]
    for i in range(kp):
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
def _count_below(x: np.ndarray, t: np.float32) -> int:
    """Number of ``x`` strictly below ``t`` (a vectorised integer reduction)."""
    c = 0
    for i in range(x.shape[0]):
        c += x[i] < t
    return c


@njit(cache=True, nogil=True)
def _count_nonfinite(x: np.ndarray) -> int:
    """Number of NaN / inf values in ``x`` (``v - v`` is NaN exactly for those; vectorised)."""
    c = 0
    for i in range(x.shape[0]):
        v = x[i]
        c += (v - v) != 0.0
    return c


@njit(cache=True, nogil=True)
def _sort_small(buf: np.ndarray) -> None:
    """Sort ``buf`` in place (insertion sort for short arrays, else numpy's sort)."""
    m = buf.shape[0]
    if m > 64:
        buf[:] = np.sort(buf)
        return
    for a in range(1, m):
        v = buf[a]
        b = a - 1
        while b >= 0 and buf[b] > v:
            buf[b + 1] = buf[b]
            b -= 1
        buf[b + 1] = v


@njit(cache=True, nogil=True)
def _collect(x: np.ndarray, lo: np.float32, hi: np.float32, size: int) -> np.ndarray:
    """The ``size`` values of ``x`` in ``[lo, hi)``, in order (branch-free: every value is
    written, the write position advances only for those inside; a data-dependent branch
    here mispredicts on every problem and cost more than all the counting passes together).
    """
    buf = np.empty(size + 1, dtype=np.float32)
    m = 0
    for t in range(x.shape[0]):
        v = x[t]
        buf[m] = v
        m += (lo <= v) & (v < hi)
    return buf[:m]


@njit(cache=True, nogil=True)
def _select_pair(x: np.ndarray, r: int) -> tuple[np.float32, np.float32]:
    """The ``r``-th and ``(r+1)``-th smallest of ``x`` (0-based, clipped to the last), exactly.

    Brackets rank ``r`` between two values of a sorted strided sample, narrows the value
    interval ``[lo, hi)`` holding it with vectorised counting passes (interpolation steps,
    bisection when those stall) until few values remain, then sorts those. ``x`` must be
    finite and non-empty; it is not modified.
    """
    s = x.shape[0]
    r1 = min(r + 1, s - 1)
    if s <= 64:
        buf = x.copy()
        _sort_small(buf)
        return buf[r], buf[r1]
    sample = np.empty(64, dtype=np.float32)
    stride = s // 64
    for t in range(64):
        sample[t] = x[t * stride]
    _sort_small(sample)
    e = int(r * 63 / (s - 1))
    # invariant once bracketed: clo = count(x < lo) <= r < chi = count(x < hi)
    lo = sample[max(e - 4, 0)]
    clo = _count_below(x, lo)
    if clo > r:
        lo = sample[0]
        clo = _count_below(x, lo)
        if clo > r:
            lo = x[0]
            for t in range(s):
                lo = x[t] if x[t] < lo else lo
            clo = 0
    hi = sample[min(e + 5, 63)]
    chi = _count_below(x, hi)
    if chi <= r:
        hi = sample[63]
        chi = _count_below(x, hi)
        if chi <= r:
            hi = np.float32(np.inf)
            chi = s
    bisect = False
    for _ in range(64):
        if chi - clo <= 32 or not np.isfinite(hi):
            break
        if bisect:
            mid = np.float32(lo * np.float32(0.5) + hi * np.float32(0.5))
        else:
            frac = (r + 0.5 - clo) / (chi - clo)
            mid = np.float32(lo + (hi - lo) * np.float32(frac))
        if not (lo < mid < hi):
            mid = np.float32(lo * np.float32(0.5) + hi * np.float32(0.5))
            if not (lo < mid < hi):
                break
        c = _count_below(x, mid)
        quarter = (chi - clo) // 4
        if c <= r:
            bisect = (c - clo) < quarter
            lo, clo = mid, c
        else:
            bisect = (chi - c) < quarter
            hi, chi = mid, c
    buf = _collect(x, lo, hi, chi - clo)
    m = buf.shape[0]
    _sort_small(buf)
    a = buf[r - clo]
    if r1 - clo < m:
        return a, buf[r1 - clo]
    b = np.float32(np.inf)
    for t in range(s):
        v = x[t]
        b = v if (v >= hi) & (v < b) else b
    return a, b


@njit(cache=True, nogil=True)
def percentile(x: np.ndarray, pct: float) -> np.float32:
    """``np.percentile(x, pct)`` (method 'linear', float32 data, float ``pct``), bit for bit."""
    s = x.shape[0]
    virtual = (s - 1) * (pct / 100.0)
    lo = int(np.floor(virtual))
    a, b = _select_pair(x, lo)
    t = virtual - lo
    diff = b - a
    if t >= 0.5:
        return b - diff * np.float32(1.0 - t)
    return a + diff * np.float32(t)


@njit(cache=True, nogil=True)
def _solve_into(
    m_flat: np.ndarray,
    k: int,
    n: int,
    drop: np.ndarray,
    labels: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
) -> tuple[np.float32, float, bool]:
    """Solve one problem: match ``m_flat`` (row-major [K, N]), ``drop`` [N].

    Writes ``labels`` [N] and each step's ``first``/``last`` segment [K]; returns the float32
    optimum of the DP, the float64 objective of the labels, and whether any input was
    non-finite (NaN or inf in the match scores, NaN or +inf in ``drop``; the result is then
    meaningless).
    """
    kp = ((k + LANES - 1) // LANES) * LANES
    w = kp + 1
    bad = _count_nonfinite(m_flat[: k * n])
    for j in range(n):
        dj = drop[j]
        bad += dj != dj or dj == np.float32(np.inf)
    row_even = np.zeros(kp, dtype=np.float32)
    row_odd = np.zeros(kp, dtype=np.float32)
    a_even = np.full(w, _NEG_INF, dtype=np.float32)
    b_even = np.full(w, _NEG_INF, dtype=np.float32)
    b_even[0] = np.float32(0.0)
    a_odd = np.empty(w, dtype=np.float32)
    b_odd = np.empty(w, dtype=np.float32)
    dirs = np.empty((n, w), dtype=np.uint8)
    j = 0
    while j + 1 < n:
        for i in range(k):
            row_even[i] = m_flat[i * n + j]
            row_odd[i] = m_flat[i * n + j + 1]
        _column(row_even, drop[j], a_even, b_even, a_odd, b_odd, dirs[j], kp)
        _column(row_odd, drop[j + 1], a_odd, b_odd, a_even, b_even, dirs[j + 1], kp)
        j += 2
    if j < n:
        for i in range(k):
            row_even[i] = m_flat[i * n + j]
        _column(row_even, drop[j], a_even, b_even, a_odd, b_odd, dirs[j], kp)
        a_last, b_last = a_odd[k], b_odd[k]
    else:
        a_last, b_last = a_even[k], b_even[k]
    i = k
    state = 0 if a_last >= b_last else 1
    optimum = a_last if state == 0 else b_last
    total = 0.0
    for s in range(k):
        first[s] = -1
        last[s] = -1
    for j in range(n - 1, -1, -1):
        d = dirs[j, i]
        if state == 0:
            step = i - 1
            labels[j] = step
            total += float(m_flat[step * n + j])
            if last[step] < 0:
                last[step] = j
            first[step] = j
            c = d & 3
            if c == 1:
                i -= 1
            elif c == 2:
                i -= 1
                state = 1
        else:
            labels[j] = -1
            total += float(drop[j])
            if (d & 4) == 0:
                state = 0
    return optimum, total, bad > 0


@njit(cache=True, nogil=True)
def solve_one(m: np.ndarray, drop: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Solve one problem without thread start-up cost: ``m`` [K, N] float32, ``drop`` [N] float32."""
    k, n = m.shape
    labels = np.empty(n, dtype=np.int64)
    first = np.empty(k, dtype=np.int64)
    last = np.empty(k, dtype=np.int64)
    optimum, _, _ = _solve_into(np.ascontiguousarray(m).ravel(), k, n, drop, labels, first, last)
    return labels, optimum


@njit(cache=True, nogil=True)
def _one_of_flat(
    b: int,
    m_flat: np.ndarray,
    m_off: np.ndarray,
    drop_flat: np.ndarray,
    seg_off: np.ndarray,
    step_off: np.ndarray,
    ks: np.ndarray,
    ns: np.ndarray,
    pct: float,
    labels: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    optima: np.ndarray,
    scores: np.ndarray,
    drop_values: np.ndarray,
    bad: np.ndarray,
) -> None:
    """Problem ``b`` of a packed batch (see ``solve_flat_full``).

    Deliberately not inlined into the ``prange`` loop: compiled on its own, its inner loops
    stay plain (vectorised) loops instead of going through the parfor transforms.
    """
    k = ks[b]
    n = ns[b]
    m = m_flat[m_off[b] : m_off[b] + k * n]
    s = seg_off[b]
    d = drop_flat[s : s + n]
    if pct >= 0.0:
        v = np.float32(0.0)
        if _count_nonfinite(m) == 0:
            v = percentile(m, pct)
        drop_values[b] = v
        d[:] = v
    t = step_off[b]
    opt, score, is_bad = _solve_into(
        m, k, n, d, labels[s : s + n], first[t : t + k], last[t : t + k]
    )
    optima[b] = opt
    scores[b] = score
    bad[b] = is_bad


@njit(cache=True, nogil=True)
def _solve_flat_serial(
    m_flat, m_off, drop_flat, seg_off, step_off, ks, ns, pct,
    labels, first, last, optima, scores, drop_values, bad,
):  # noqa: ANN001  # fmt: skip
    """Serial loop of ``solve_flat``."""
    for b in range(ks.shape[0]):
        _one_of_flat(
            b, m_flat, m_off, drop_flat, seg_off, step_off, ks, ns, pct,
            labels, first, last, optima, scores, drop_values, bad,
        )  # fmt: skip


@njit(cache=True, nogil=True, parallel=True)
def _solve_flat_parallel(
    m_flat, m_off, drop_flat, seg_off, step_off, ks, ns, pct,
    labels, first, last, optima, scores, drop_values, bad,
):  # noqa: ANN001  # fmt: skip
    """Parallel loop of ``solve_flat`` (one alignment per iteration)."""
    for b in prange(ks.shape[0]):
        _one_of_flat(
            b, m_flat, m_off, drop_flat, seg_off, step_off, ks, ns, pct,
            labels, first, last, optima, scores, drop_values, bad,
        )  # fmt: skip


def solve_flat_full(
    m_flat: np.ndarray,
    m_off: np.ndarray,
    drop_flat: np.ndarray,
    seg_off: np.ndarray,
    ks: np.ndarray,
    ns: np.ndarray,
    pct: float = -1.0,
    parallel: bool | None = None,
) -> dict[str, np.ndarray]:
    """Solve a packed batch; return every per-alignment output as flat arrays.

    Problem ``b`` has its match matrix at ``m_flat[m_off[b]:][:ks[b]*ns[b]]`` (row-major
    [K, N], float32) and its drop scores / labels at ``[seg_off[b]:][:ns[b]]``. With
    ``pct >= 0`` the drop score of every segment of problem ``b`` is set (in ``drop_flat``,
    which is overwritten) to ``np.percentile(match_b, pct)``. ``parallel=None`` uses the
    thread pool (``NUMBA_NUM_THREADS`` threads) only for batches of at least
    ``PARALLEL_MIN_CELLS`` cells. Returns ``labels`` (int64, flat like ``drop_flat``),
    ``first``/``last`` (int64, each step's first/last segment, flat at ``step_off``),
    ``step_off``, ``optima`` (float32 DP optimum), ``scores`` (float64 objective of the
    labels), ``drop_values`` (the percentile drop scores, float32) and ``bad`` (a
    non-finite input).
    """
    nb = ks.shape[0]
    step_off = np.zeros(nb, dtype=np.int64)
    if nb > 1:
        np.cumsum(ks[:-1], out=step_off[1:])
    total_k = int(step_off[-1] + ks[-1]) if nb else 0
    out = (
        np.empty(drop_flat.shape[0], dtype=np.int64),
        np.empty(total_k, dtype=np.int64),
        np.empty(total_k, dtype=np.int64),
        np.empty(nb, dtype=np.float32),
        np.empty(nb, dtype=np.float64),
        np.zeros(nb, dtype=np.float32),
        np.zeros(nb, dtype=np.bool_),
    )
    if parallel is None:
        parallel = nb > 1 and m_flat.shape[0] >= PARALLEL_MIN_CELLS
    fn = _solve_flat_parallel if parallel else _solve_flat_serial
    fn(m_flat, m_off, drop_flat, seg_off, step_off, ks, ns, float(pct), *out)
    names = ("labels", "first", "last", "optima", "scores", "drop_values", "bad")
    return {"step_off": step_off, **dict(zip(names, out, strict=True))}


def solve_flat(
    m_flat: np.ndarray,
    m_off: np.ndarray,
    drop_flat: np.ndarray,
    seg_off: np.ndarray,
    ks: np.ndarray,
    ns: np.ndarray,
    parallel: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve a packed batch (layout of ``solve_flat_full``); return flat labels and float32 optima."""
    res = solve_flat_full(m_flat, m_off, drop_flat, seg_off, ks, ns, parallel=parallel)
    return res["labels"], res["optima"]


@njit(cache=True, nogil=True)
def finish_flat(
    m_flat: np.ndarray,
    m_off: np.ndarray,
    drop_flat: np.ndarray,
    seg_off: np.ndarray,
    step_off: np.ndarray,
    ks: np.ndarray,
    ns: np.ndarray,
    labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Objective (float64) and each step's first/last segment for given flat ``labels``.

    Sums exactly as the traceback of ``_solve_into`` does (last segment first), so every
    backend reports bit-identical scores for the same labels. A step with no segment gets
    ``first = last = -1``.
    """
    nb = ks.shape[0]
    scores = np.empty(nb, dtype=np.float64)
    total_k = step_off[nb - 1] + ks[nb - 1] if nb else 0
    first = np.full(total_k, -1, dtype=np.int64)
    last = np.full(total_k, -1, dtype=np.int64)
    for b in range(nb):
        n = ns[b]
        mo = m_off[b]
        so = seg_off[b]
        to = step_off[b]
        total = 0.0
        for j in range(n - 1, -1, -1):
            step = labels[so + j]
            if step >= 0:
                total += float(m_flat[mo + step * n + j])
                if last[to + step] < 0:
                    last[to + step] = j
                first[to + step] = j
            else:
                total += float(drop_flat[so + j])
        scores[b] = total
    return scores, first, last

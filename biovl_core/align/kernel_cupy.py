"""GPU segmentation: the xp wavefront under cupy, and a fused ``cupy.RawKernel``.

The RawKernel mirrors ``kernel_numba._solve_into`` line for line (same recurrence, same
tie-breaking, float32 adds with round-to-nearest and no contraction), so both give the
same labels and bit-identical optima. One block per alignment, one thread per step row
(looping when ``K+1`` exceeds the block), a sweep over segments with the previous column in
double-buffered shared memory, match scores ([K, N] per alignment) staged through shared
memory in tiles of columns (reads coalesced along N, issued LOAD_BATCH at a time so their
latencies overlap), direction bits in shared memory when they fit (else global), and the
traceback walked on the GPU by thread 0.

Checked on one NVIDIA H200 (cupy 14.2): same labels and optima as numba on 1,020 mixed
alignments and in tests/test_align.py (shared- and global-memory direction bits); about
53 G cells/s for 20,000 BioVL-sized alignments resident on the GPU, short of the 100 G
target: one warp per alignment with shared-memory barriers per column is latency bound.
Re-run ``biovl_core.bench.align.gpu_check`` on any other GPU before trusting it there.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np

from biovl_core.device import optional_import
from biovl_core.errors import BioVLError

_INSTALL_HINT = "pip install 'biovl-aligner[gpu]' (cupy-cuda13x) on a machine with a CUDA GPU"

MAX_TILE_COLS = 32
LOAD_BATCH = 16
_SHARED_LIMIT = 48 * 1024

_KERNEL_SOURCE = r"""
extern "C" __global__ void segment_batch(
    const float* __restrict__ m_all, const long long* __restrict__ m_off,
    const float* __restrict__ drop, const long long* __restrict__ seg_off,
    const int* __restrict__ ks, const int* __restrict__ ns,
    const int kmax, const int tile_cols, const int dirs_in_shared,
    unsigned char* __restrict__ dirs_global, const long long* __restrict__ dir_off,
    long long* __restrict__ labels, float* __restrict__ scores)
{
    extern __shared__ float smem[];
    const int b = blockIdx.x;
    const int k = ks[b];
    const int n = ns[b];
    const int w = k + 1;
    const int wmax = kmax + 1;
    const float NEG = __int_as_float(0xff800000);
    float* a_buf = smem;
    float* b_buf = smem + 2 * wmax;
    float* tile = smem + 4 * wmax;
    float* dtile = tile + tile_cols * kmax;
    unsigned char* dirs = dirs_in_shared
        ? reinterpret_cast<unsigned char*>(dtile + tile_cols)
        : dirs_global + dir_off[b];
    const float* m = m_all + m_off[b];
    const float* d = drop + seg_off[b];

    for (int i = threadIdx.x; i < w; i += blockDim.x) {
        a_buf[i] = NEG;
        b_buf[i] = (i == 0) ? 0.0f : NEG;
    }
    int cur = 0;
    for (int j0 = 0; j0 < n; j0 += tile_cols) {
        const int cols = min(tile_cols, n - j0);
        __syncthreads();
        const int total = cols * k;
        for (int base = threadIdx.x; base < total; base += LOAD_BATCH * blockDim.x) {
            float v[LOAD_BATCH];
#pragma unroll
            for (int u = 0; u < LOAD_BATCH; ++u) {
                const int t = base + u * blockDim.x;
                if (t < total) {
                    const int i = t / cols;
                    v[u] = m[(long long)i * n + j0 + (t - i * cols)];
                }
            }
#pragma unroll
            for (int u = 0; u < LOAD_BATCH; ++u) {
                const int t = base + u * blockDim.x;
                if (t < total) {
                    const int i = t / cols;
                    tile[(t - i * cols) * k + i] = v[u];
                }
            }
        }
        for (int t = threadIdx.x; t < cols; t += blockDim.x) {
            dtile[t] = d[j0 + t];
        }
        __syncthreads();
        for (int jj = 0; jj < cols; ++jj) {
            const int j = j0 + jj;
            const float dj = dtile[jj];
            const float* ap = a_buf + cur * wmax;
            const float* bp = b_buf + cur * wmax;
            float* ac = a_buf + (1 - cur) * wmax;
            float* bc = b_buf + (1 - cur) * wmax;
            unsigned char* dr = dirs + (long long)j * w;
            for (int i = threadIdx.x; i < w; i += blockDim.x) {
                if (i == 0) {
                    ac[0] = NEG;
                    bc[0] = __fadd_rn(dj, bp[0]);
                    dr[0] = 4;
                } else {
                    const float a0 = ap[i];
                    const float a1 = ap[i - 1];
                    const float b1 = bp[i - 1];
                    float best = a0;
                    unsigned int c = 0;
                    if (a1 > best) { best = a1; c = 1; }
                    if (b1 > best) { best = b1; c = 2; }
                    ac[i] = __fadd_rn(tile[jj * k + i - 1], best);
                    const float bi = bp[i];
                    float bb = a0;
                    if (bi > bb) { bb = bi; c |= 4; }
                    bc[i] = __fadd_rn(dj, bb);
                    dr[i] = (unsigned char)c;
                }
            }
            cur = 1 - cur;
            __syncthreads();
        }
    }
    if (threadIdx.x == 0) {
        const float* ap = a_buf + cur * wmax;
        const float* bp = b_buf + cur * wmax;
        int i = k;
        int state = (ap[k] >= bp[k]) ? 0 : 1;
        scores[b] = state == 0 ? ap[k] : bp[k];
        long long* lab = labels + seg_off[b];
        for (int j = n - 1; j >= 0; --j) {
            const unsigned int dd = dirs[(long long)j * w + i];
            if (state == 0) {
                lab[j] = i - 1;
                const unsigned int c = dd & 3u;
                if (c == 1u) {
                    i -= 1;
                } else if (c == 2u) {
                    i -= 1;
                    state = 1;
                }
            } else {
                lab[j] = -1;
                if ((dd & 4u) == 0u) state = 0;
            }
        }
    }
}
"""


#: Warps (alignments) per block of the "shfl" variant, and its largest K (2 steps per lane).
SHFL_WARPS = 8
SHFL_MAX_K = 64

_SHFL_SOURCE = r"""
#ifndef SPL
#define SPL 1
#endif
#ifndef WARPS
#define WARPS 8
#endif
#define TC 32
#define TS 33
#define LB 8

// direction bits of one column, 32 steps: ballots of bit 0, bit 1, bit 2 (as in the fused kernel)
struct alignas(16) ColBits {
    unsigned int x, y, z, w;
};

__device__ __forceinline__ ColBits col_bits(unsigned int x, unsigned int y, unsigned int z)
{
    ColBits r;
    r.x = x;
    r.y = y;
    r.z = z;
    r.w = 0u;
    return r;
}

extern "C" __global__ void __launch_bounds__(WARPS * 32) segment_batch_shfl(
    const float* __restrict__ m_all, const long long* __restrict__ m_off,
    const float* __restrict__ drop, const long long* __restrict__ seg_off,
    const int* __restrict__ ks, const int* __restrict__ ns, const int nb,
    ColBits* __restrict__ dirs, long long* __restrict__ labels, float* __restrict__ scores)
{
    __shared__ float tiles[WARPS * SPL * TC * TS];
    const unsigned int FULL = 0xffffffffu;
    const int lane = threadIdx.x & 31;
    const int wid = threadIdx.x >> 5;
    const int b = blockIdx.x * WARPS + wid;
    if (b >= nb) return;  // whole warp leaves; no block-wide barrier below
    float* tile = tiles + wid * (SPL * TC * TS);
    const int k = ks[b];
    const int n = ns[b];
    const float* m = m_all + m_off[b];
    const long long so = seg_off[b];
    const float* d = drop + so;
    ColBits* dw = dirs + so * SPL;
    const float NEG = __int_as_float(0xff800000);
    // lane holds steps q = lane * SPL + s (DP rows q + 1); row 0 (a = -inf, b = sum of drops)
    // is kept by every lane as the scalar b0.
    float a[SPL];
    float bv[SPL];
#pragma unroll
    for (int s = 0; s < SPL; ++s) {
        a[s] = NEG;
        bv[s] = NEG;
    }
    float b0 = 0.0f;
    for (int j0 = 0; j0 < n; j0 += TC) {
        const int cols = min(TC, n - j0);
        float dreg = 0.0f;
        __syncwarp();
        if (lane < cols) {
            const int jc = j0 + lane;
            dreg = d[jc];
            const float* mc = m + jc;
            for (int q0 = 0; q0 < k; q0 += LB) {
                float v[LB];
#pragma unroll
                for (int u = 0; u < LB; ++u) {
                    const int q = q0 + u;
                    v[u] = (q < k) ? mc[(long long)q * n] : 0.0f;
                }
#pragma unroll
                for (int u = 0; u < LB; ++u) {
                    const int q = q0 + u;
                    if (q < k) tile[((q % SPL) * TC + lane) * TS + q / SPL] = v[u];
                }
            }
        }
        __syncwarp();
        for (int jj = 0; jj < cols; ++jj) {
            const float dj = __shfl_sync(FULL, dreg, jj);
            float ua = __shfl_up_sync(FULL, a[SPL - 1], 1);
            float ub = __shfl_up_sync(FULL, bv[SPL - 1], 1);
            if (lane == 0) {
                ua = NEG;
                ub = b0;
            }
            unsigned int c0[SPL];
            unsigned int c1[SPL];
            unsigned int c2[SPL];
#pragma unroll
            for (int s = SPL - 1; s >= 0; --s) {
                const float a0 = a[s];
                const float bi = bv[s];
                const float a1 = (s > 0) ? a[s > 0 ? s - 1 : 0] : ua;
                const float b1 = (s > 0) ? bv[s > 0 ? s - 1 : 0] : ub;
                const bool g1 = a1 > a0;
                const float m01 = g1 ? a1 : a0;
                const bool g2 = b1 > m01;
                const float best = g2 ? b1 : m01;
                const bool g3 = bi > a0;
                const float bb = g3 ? bi : a0;
                a[s] = __fadd_rn(tile[(s * TC + jj) * TS + lane], best);
                bv[s] = __fadd_rn(dj, bb);
                c0[s] = __ballot_sync(FULL, g1 && !g2);
                c1[s] = __ballot_sync(FULL, g2);
                c2[s] = __ballot_sync(FULL, g3);
            }
            b0 = __fadd_rn(dj, b0);
            if (lane < SPL) {
                ColBits wv = col_bits(c0[0], c1[0], c2[0]);
#pragma unroll
                for (int s = 1; s < SPL; ++s) {
                    if (lane == s) wv = col_bits(c0[s], c1[s], c2[s]);
                }
                dw[(long long)(j0 + jj) * SPL + lane] = wv;
            }
        }
    }
    // the optimum: step K-1 sits in lane (K-1)/SPL, slot (K-1)%SPL
    const int qk = k - 1;
    const int sk = qk % SPL;
    float as = a[0];
    float bs = bv[0];
#pragma unroll
    for (int s = 1; s < SPL; ++s) {
        if (sk == s) {
            as = a[s];
            bs = bv[s];
        }
    }
    const float ak = __shfl_sync(FULL, as, qk / SPL);
    const float bk = __shfl_sync(FULL, bs, qk / SPL);
    int i = k;
    int state = (ak >= bk) ? 0 : 1;
    if (lane == 0) scores[b] = state == 0 ? ak : bk;
    // traceback, warp-uniform: lane t prefetches column jhi - t's bits, the walk reads them by
    // shuffle, and lane t keeps column jhi - t's label for one coalesced store per 32 columns.
    long long* lab = labels + so;
    for (int jhi = n - 1; jhi >= 0; jhi -= 32) {
        const int jl = jhi - lane;
        ColBits wv[SPL];
#pragma unroll
        for (int s = 0; s < SPL; ++s) {
            wv[s] = (jl >= 0) ? dw[(long long)jl * SPL + s] : col_bits(0u, 0u, 0u);
        }
        long long mine = -1;
        const int steps = min(32, jhi + 1);
        for (int u = 0; u < steps; ++u) {
            const long long lv = (state == 0) ? (long long)(i - 1) : -1LL;
            if (lane == u) mine = lv;
            if (i == 0) continue;  // row 0's bits are 4: nothing changes (i is warp-uniform)
            const int q = i - 1;
            const int s = q % SPL;
            const int l = q / SPL;
            ColBits x = wv[0];
#pragma unroll
            for (int t = 1; t < SPL; ++t) {
                if (s == t) x = wv[t];
            }
            if (state == 0) {
                const unsigned int y0 = __shfl_sync(FULL, x.x, u);
                const unsigned int y1 = __shfl_sync(FULL, x.y, u);
                if ((y0 >> l) & 1u) {
                    i -= 1;
                } else if ((y1 >> l) & 1u) {
                    i -= 1;
                    state = 1;
                }
            } else {
                const unsigned int y2 = __shfl_sync(FULL, x.z, u);
                if (((y2 >> l) & 1u) == 0u) state = 0;
            }
        }
        if (jl >= 0) lab[jl] = mine;
    }
}
"""


def _cupy() -> Any:
    """The cupy module, or MissingDependency saying how to get it."""
    return optional_import("cupy", _INSTALL_HINT)


@functools.lru_cache(maxsize=1)
def _kernel() -> Any:
    """Compile the fused kernel once per process."""
    cp = _cupy()
    return cp.RawKernel(
        _KERNEL_SOURCE,
        "segment_batch",
        options=("--fmad=false", f"-DLOAD_BATCH={LOAD_BATCH}"),
    )


@functools.lru_cache(maxsize=2)
def _shfl_kernel(steps_per_lane: int) -> Any:
    """Compile the "shfl" variant for 1 (K <= 32) or 2 (K <= 64) steps per lane, once per process."""
    cp = _cupy()
    return cp.RawKernel(
        _SHFL_SOURCE,
        "segment_batch_shfl",
        options=(
            "--fmad=false",
            f"-DSPL={steps_per_lane}",
            f"-DWARPS={SHFL_WARPS // steps_per_lane}",
        ),
    )


def shared_layout(kmax: int, nmax: int) -> tuple[int, int, bool]:
    """Columns per tile, dynamic shared bytes per block, and whether direction bits fit too."""
    buffers = 4 * 4 * (kmax + 1)
    tile_cols = min(MAX_TILE_COLS, (_SHARED_LIMIT - buffers) // (4 * (kmax + 1)))
    if tile_cols < 1:
        raise BioVLError(
            f"the cupy kernel supports up to {_SHARED_LIMIT // 20 - 1} steps per protocol, got "
            f"{kmax}; use backend='cupy_xp' or 'numba'"
        )
    base = buffers + 4 * tile_cols * (kmax + 1)
    with_dirs = base + nmax * (kmax + 1)
    if with_dirs <= _SHARED_LIMIT:
        return tile_cols, with_dirs, True
    return tile_cols, base, False


def solve_flat_rawkernel(
    m_flat: Any,
    m_off: Any,
    drop_flat: Any,
    seg_off: Any,
    ks: Any,
    ns: Any,
    kernel: str = "shfl",
) -> tuple[Any, Any]:
    """Run a fused kernel on a packed batch; return cupy labels and optima.

    Same packed layout as ``kernel_numba.solve_flat``; arrays may be numpy or cupy (``ks`` and
    ``ns`` are best passed as numpy: their maxima size the launch). ``kernel="shfl"`` (the
    default) is the warp-per-alignment kernel (``solve_flat_shfl``; K <= 64, else it hands the
    batch to the block-per-alignment ``"fused"`` kernel). Both were checked on an H200 against
    numba (same labels, bit-identical optima): 115 G cells/s for "shfl", 48 for "fused"
    (``docs/GPU_CHECK.md``).
    """
    if kernel == "shfl":
        return solve_flat_shfl(m_flat, m_off, drop_flat, seg_off, ks, ns)
    if kernel != "fused":
        raise BioVLError(f"unknown cupy kernel {kernel!r}; use 'fused' or 'shfl'")
    cp = _cupy()
    m_d = cp.asarray(m_flat, dtype=cp.float32)
    drop_d = cp.asarray(drop_flat, dtype=cp.float32)
    m_off_d = cp.asarray(m_off, dtype=cp.int64)
    seg_off_d = cp.asarray(seg_off, dtype=cp.int64)
    ks_h = np.asarray(ks.get() if hasattr(ks, "get") else ks, dtype=np.int64)
    ns_h = np.asarray(ns.get() if hasattr(ns, "get") else ns, dtype=np.int64)
    ks_d = cp.asarray(ks_h, dtype=cp.int32)
    ns_d = cp.asarray(ns_h, dtype=cp.int32)
    nb = int(ks_h.shape[0])
    kmax = int(ks_h.max())
    nmax = int(ns_h.max())
    tile_cols, smem, dirs_in_shared = shared_layout(kmax, nmax)
    if dirs_in_shared:
        dirs = cp.empty(1, dtype=cp.uint8)
        dir_off = cp.zeros(nb, dtype=cp.int64)
    else:
        sizes = ns_h * (ks_h + 1)
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        dirs = cp.empty(int(sizes.sum()), dtype=cp.uint8)
        dir_off = cp.asarray(offsets)
    labels = cp.empty(int(drop_d.shape[0]), dtype=cp.int64)
    scores = cp.empty(nb, dtype=cp.float32)
    threads = min(1024, max(32, -(-(kmax + 1) // 32) * 32))
    _kernel()(
        (nb,),
        (threads,),
        (
            m_d,
            m_off_d,
            drop_d,
            seg_off_d,
            ks_d,
            ns_d,
            np.int32(kmax),
            np.int32(tile_cols),
            np.int32(1 if dirs_in_shared else 0),
            dirs,
            dir_off,
            labels,
            scores,
        ),
        shared_mem=smem,
    )
    return labels, scores


def solve_flat_shfl(
    m_flat: Any,
    m_off: Any,
    drop_flat: Any,
    seg_off: Any,
    ks: Any,
    ns: Any,
) -> tuple[Any, Any]:
    """The "shfl" kernel: one warp per alignment, several per block (verified on an H200).

    Same recurrence, float32 adds (``__fadd_rn``, no contraction), comparisons and tie rule as
    the fused kernel, so labels and optima are meant to be bit-identical; it only moves data
    differently. Each lane holds ``SPL`` consecutive steps' A/B state in registers (SPL = 1 for
    K <= 32, 2 for K <= 64); row 0 (A = -inf, B = running sum of drops) is a warp-uniform scalar.
    Row ``i-1`` of the previous column comes from the neighbouring lane by ``__shfl_up_sync``
    (lane 0 takes row 0), so a column costs no barrier. Match scores ([K, N] per alignment) are
    read coalesced along N, 32 columns at a time, into a per-warp shared tile (padded, so both
    the transposing store and the per-column read are free of bank conflicts; ``__syncwarp``
    only). Direction bits: per column and slot, the warp's three ballots (bit 0, 1, 2 of every
    step) as one 16-byte word in global memory. The traceback is warp-uniform: each lane
    prefetches one column's bits, the walk reads them by shuffle, and labels are stored
    coalesced 32 columns at a time. Batches with K > 64 (or K < 1) run the fused kernel.

    Not yet run on a GPU: ``biovl_core.bench.align.gpu_check`` compares it with numba and the
    fused kernel; keep the fused kernel as the default until that passes.
    """
    cp = _cupy()
    ks_h = np.asarray(ks.get() if hasattr(ks, "get") else ks, dtype=np.int64)
    ns_h = np.asarray(ns.get() if hasattr(ns, "get") else ns, dtype=np.int64)
    nb = int(ks_h.shape[0])
    kmax = int(ks_h.max()) if nb else 0
    kmin = int(ks_h.min()) if nb else 0
    if nb == 0 or kmin < 1 or kmax > SHFL_MAX_K:
        return solve_flat_rawkernel(m_flat, m_off, drop_flat, seg_off, ks_h, ns_h, kernel="fused")
    return _launch_shfl(
        cp.asarray(m_flat, dtype=cp.float32),
        cp.asarray(m_off, dtype=cp.int64),
        cp.asarray(drop_flat, dtype=cp.float32),
        cp.asarray(seg_off, dtype=cp.int64),
        cp.asarray(ks_h, dtype=cp.int32),
        cp.asarray(ns_h, dtype=cp.int32),
        kmax,
    )


def _launch_shfl(
    m_d: Any, m_off_d: Any, drop_d: Any, seg_off_d: Any, ks_d: Any, ns_d: Any, kmax: int
) -> tuple[Any, Any]:
    """Launch the "shfl" kernel on device arrays (ks_d/ns_d int32, 1 <= K <= kmax <= 64)."""
    cp = _cupy()
    nb = int(ks_d.shape[0])
    spl = 1 if kmax <= 32 else 2
    warps = SHFL_WARPS // spl
    segments = int(drop_d.shape[0])
    # one 16-byte word (4 x uint32) per segment and slot
    dirs = cp.empty(max(1, segments * spl * 4), dtype=cp.uint32)
    labels = cp.empty(segments, dtype=cp.int64)
    scores = cp.empty(nb, dtype=cp.float32)
    _shfl_kernel(spl)(
        (-(-nb // warps),),
        (warps * 32,),
        (m_d, m_off_d, drop_d, seg_off_d, ks_d, ns_d, np.int32(nb), dirs, labels, scores),
    )
    return labels, scores


class _PinnedBuffers(threading.local):
    """A grow-only page-locked host buffer per thread, reused by its batches (pinning is slow).

    A batch's buffer stays valid until the same thread packs its next batch, so the caller
    can still read the packed host arrays (``align_batch`` sums the optima from them).
    """

    def __init__(self) -> None:
        self._memory: Any = None
        self._array: np.ndarray | None = None

    def allocate(self, nbytes: int) -> np.ndarray:
        """A uint8 view of at least `nbytes` pinned bytes."""
        if self._array is None or self._array.nbytes < nbytes:
            cp = _cupy()
            size = max(nbytes, 2 * (0 if self._array is None else self._array.nbytes))
            self._memory = cp.cuda.alloc_pinned_memory(size)
            self._array = np.frombuffer(self._memory, dtype=np.uint8, count=size)
        return self._array[:nbytes]


PINNED = _PinnedBuffers()


def solve_from_host(matches: Any, drops: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    """Alignments from host arrays: pack once into pinned memory, one copy, one launch.

    ``matches`` [K_b, N_b] and ``drops`` [N_b] per alignment (numpy). Returns host flat labels
    (int64, packed order), float32 optima and the ``PackedBatch`` (valid until this thread's
    next call). Unverified (not run on a GPU): the packing is the CPU-tested
    ``pack.pack_batch``; the kernels are the ones verified on an H200.
    """
    from biovl_core.align.pack import pack_batch

    cp = _cupy()
    packed = pack_batch(matches, drops, allocate=PINNED.allocate)
    device = cp.empty(packed.buffer.nbytes, dtype=cp.uint8)
    device.set(packed.buffer, stream=cp.cuda.get_current_stream())  # the one host->device copy
    m_d, drop_d = packed.view("m_flat", device), packed.view("drop_flat", device)
    m_off_d, seg_off_d = packed.view("m_off", device), packed.view("seg_off", device)
    kmax = int(packed.ks.max()) if len(packed.ks) else 0
    kmin = int(packed.ks.min()) if len(packed.ks) else 0
    if 1 <= kmin and kmax <= SHFL_MAX_K:
        ks_d, ns_d = packed.view("ks", device), packed.view("ns", device)
        labels, scores = _launch_shfl(m_d, m_off_d, drop_d, seg_off_d, ks_d, ns_d, kmax)
    else:
        labels, scores = solve_flat_rawkernel(
            m_d, m_off_d, drop_d, seg_off_d, packed.ks, packed.ns, kernel="fused"
        )
    return labels.get(), scores.get(), packed


def solve_padded_cupy(mt: Any, drop: Any, ks: Any, ns: Any) -> tuple[Any, Any]:
    """The xp wavefront (``wavefront.solve_padded``) run with cupy; returns cupy arrays."""
    from biovl_core.align.wavefront import solve_padded

    cp = _cupy()
    return solve_padded(
        cp,
        cp.asarray(mt, dtype=cp.float32),
        cp.asarray(drop, dtype=cp.float32),
        cp.asarray(ks, dtype=cp.int64),
        cp.asarray(ns, dtype=cp.int64),
    )

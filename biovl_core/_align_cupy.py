"""GPU segmentation: the xp wavefront under cupy, and a fused ``cupy.RawKernel``.

The RawKernel mirrors ``_align_numba._solve_into`` line for line (same recurrence, same
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
) -> tuple[Any, Any]:
    """Run the fused kernel on a packed batch; return cupy labels and optima.

    Same packed layout as ``_align_numba.solve_flat``; arrays may be numpy or cupy (``ks`` and
    ``ns`` are best passed as numpy: their maxima size the launch).
    """
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


def solve_padded_cupy(mt: Any, drop: Any, ks: Any, ns: Any) -> tuple[Any, Any]:
    """The xp wavefront (``_align_wavefront.solve_padded``) run with cupy; returns cupy arrays."""
    from biovl_core._align_wavefront import solve_padded

    cp = _cupy()
    return solve_padded(
        cp,
        cp.asarray(mt, dtype=cp.float32),
        cp.asarray(drop, dtype=cp.float32),
        cp.asarray(ks, dtype=cp.int64),
        cp.asarray(ns, dtype=cp.int64),
    )

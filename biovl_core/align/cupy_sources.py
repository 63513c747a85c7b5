"""CUDA C sources of the GPU segmentation kernels (fused per-alignment block, and the warp-shuffle variant)."""

from __future__ import annotations

MAX_TILE_COLS = 32
LOAD_BATCH = 16

FUSED_SOURCE = r"""
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


SHFL_SOURCE = r"""
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

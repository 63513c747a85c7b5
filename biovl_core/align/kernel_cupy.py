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

from biovl_core.align.cupy_sources import (
    FUSED_SOURCE,
    LOAD_BATCH,
    MAX_TILE_COLS,
    SHFL_MAX_K,
    SHFL_SOURCE,
    SHFL_WARPS,
)
from biovl_core.device import optional_import
from biovl_core.errors import BioVLError

_INSTALL_HINT = "pip install 'biovl-aligner[gpu]' (cupy-cuda13x) on a machine with a CUDA GPU"

_SHARED_LIMIT = 48 * 1024


def _cupy() -> Any:
    """The cupy module, or MissingDependency saying how to get it."""
    return optional_import("cupy", _INSTALL_HINT)


@functools.lru_cache(maxsize=1)
def _kernel() -> Any:
    """Compile the fused kernel once per process."""
    cp = _cupy()
    return cp.RawKernel(
        FUSED_SOURCE,
        "segment_batch",
        options=("--fmad=false", f"-DLOAD_BATCH={LOAD_BATCH}"),
    )


@functools.lru_cache(maxsize=2)
def _shfl_kernel(steps_per_lane: int) -> Any:
    """Compile the "shfl" variant for 1 (K <= 32) or 2 (K <= 64) steps per lane, once per process."""
    cp = _cupy()
    return cp.RawKernel(
        SHFL_SOURCE,
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
    return launch_shfl(
        cp.asarray(m_flat, dtype=cp.float32),
        cp.asarray(m_off, dtype=cp.int64),
        cp.asarray(drop_flat, dtype=cp.float32),
        cp.asarray(seg_off, dtype=cp.int64),
        cp.asarray(ks_h, dtype=cp.int32),
        cp.asarray(ns_h, dtype=cp.int32),
        kmax,
    )


def launch_shfl(
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
        labels, scores = launch_shfl(m_d, m_off_d, drop_d, seg_off_d, ks_d, ns_d, kmax)
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

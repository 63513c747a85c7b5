"""Where the kernel runs: the backend choice ('auto' by batch size), packing, and one solve per batch.

Backends: ``"numba"`` (compiled CPU, parallel over the batch), ``"numpy"`` (the batched
wavefront written against an array module), ``"cupy"`` (fused GPU kernel), ``"cupy_xp"``
(the same wavefront under cupy), ``"auto"`` (cupy when usable and the batch is big enough
to pay for the host-to-device copy, see ``AUTO_CUPY_MIN_CELLS``; else numba).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from biovl_core.align.cost import AlignCost, cost_model
from biovl_core.align.registry import SegmentationProblem
from biovl_core.device import cupy_usable
from biovl_core.errors import BioVLError

BACKENDS = ("auto", "numpy", "numba", "cupy", "cupy_xp")


AUTO_CUPY_MIN_CELLS = AlignCost().crossover_cells("cupy")
"""Smallest batch (sum of K x N) that ``backend="auto"`` sends to the GPU from host arrays
(2 M cells, ~500 BioVL-sized alignments); smaller ones run numba. Derived from the cost model
(`biovl_core.align.cost`, the one place for this decision), whose host-path rates are
estimates until ``make gpu-check`` measures the crossover on the GPU in use.
"""


def auto_backend(cells: int) -> str:
    """The backend 'auto' means for a batch of `cells` (sum of K x N) from host arrays."""
    return cost_model().route(cells, gpu=cupy_usable())


def resolve_backend(backend: str, cells: int | None = None) -> str:
    """Map 'auto' to cupy or numba (by batch size when `cells` is known); refuse unknown names."""
    if backend not in BACKENDS:
        raise BioVLError(f"unknown aligner backend {backend!r}; choose one of {list(BACKENDS)}")
    if backend == "auto":
        return auto_backend(AUTO_CUPY_MIN_CELLS if cells is None else cells)
    if backend in ("cupy", "cupy_xp") and not cupy_usable():
        raise BioVLError(
            f"backend {backend!r} needs a CUDA GPU and cupy, and none is usable here; "
            "use backend='numba' (or 'auto')"
        )
    return backend


def batch_cells(sims: Sequence[Any]) -> int:
    """Sum of K x N over similarity matrices (malformed ones count 0; validation reports them)."""
    total = 0
    for s in sims:
        shape = getattr(s, "shape", None)
        if shape is None:
            try:
                shape = np.shape(s)
            except ValueError:
                continue
        if len(shape) == 2:
            total += int(shape[0]) * int(shape[1])
    return total


def pack_flat(problems: Sequence[SegmentationProblem]) -> tuple[np.ndarray, ...]:
    """Pack problems for the flat kernels: (m_flat, m_off, drop_flat, seg_off, ks, ns), [K, N] each."""
    ks = np.array([p.match.shape[0] for p in problems], dtype=np.int64)
    ns = np.array([p.match.shape[1] for p in problems], dtype=np.int64)
    sizes = ks * ns
    m_off = np.zeros(len(problems), dtype=np.int64)
    seg_off = np.zeros(len(problems), dtype=np.int64)
    m_off[1:] = np.cumsum(sizes)[:-1]
    seg_off[1:] = np.cumsum(ns)[:-1]
    m_flat = np.concatenate([p.match.ravel() for p in problems]).astype(np.float32, copy=False)
    drop_flat = np.concatenate([p.drop for p in problems]).astype(np.float32, copy=False)
    return m_flat, m_off, drop_flat, seg_off, ks, ns


def pack_padded(problems: Sequence[SegmentationProblem]) -> tuple[np.ndarray, ...]:
    """Pack problems for the wavefront: (mt [B, Nmax, Kmax], drop [B, Nmax], ks, ns), zero-padded."""
    ks = np.array([p.match.shape[0] for p in problems], dtype=np.int64)
    ns = np.array([p.match.shape[1] for p in problems], dtype=np.int64)
    mt = np.zeros((len(problems), int(ns.max()), int(ks.max())), dtype=np.float32)
    drop = np.zeros((len(problems), int(ns.max())), dtype=np.float32)
    for b, p in enumerate(problems):
        mt[b, : ns[b], : ks[b]] = p.match.T
        drop[b, : ns[b]] = p.drop
    return mt, drop, ks, ns


def solve_flat(
    problems: Sequence[SegmentationProblem], backend: str
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Flat labels of every problem and the packed host arrays (``pack_flat``'s layout), packed once.

    numba and cupy share one vectorised packing (``pack.pack_batch``); cupy packs into
    pinned memory and makes one copy and one kernel launch per batch.
    """
    matches = [p.match for p in problems]
    drops = [p.drop for p in problems]
    if backend == "cupy":
        from biovl_core.align import kernel_cupy

        labels, _, packed = kernel_cupy.solve_from_host(matches, drops)
        return labels, packed.flat()
    from biovl_core.align import kernel_numba
    from biovl_core.align.pack import pack_batch

    flat = pack_batch(matches, drops).flat()
    if backend == "numba":
        if len(problems) == 1:
            labels, _ = kernel_numba.solve_one(problems[0].match, problems[0].drop)
            return labels, flat
        labels, _ = kernel_numba.solve_flat(*flat)
        return labels, flat
    mt, drop, ks, ns = pack_padded(problems)
    if backend == "cupy_xp":
        from biovl_core.align import kernel_cupy

        padded, _ = kernel_cupy.solve_padded_cupy(mt, drop, ks, ns)
        padded = padded.get()
    else:
        from biovl_core.align.wavefront import solve_padded

        padded, _ = solve_padded(np, mt, drop, ks, ns)
    labels = np.concatenate([padded[b, : ns[b]] for b in range(len(problems))])
    return labels.astype(np.int64, copy=False), flat


def solve_segmentation(
    problems: Sequence[SegmentationProblem], backend: str = "auto"
) -> list[np.ndarray]:
    """Run the generic kernel on every problem (each needs 1 <= K <= N); return labels [N] each."""
    if not problems:
        return []
    resolved = resolve_backend(backend, sum(p.match.size for p in problems))
    labels, flat = solve_flat(problems, resolved)
    seg_off, ns = flat[3], flat[5]
    return [labels[s : s + n] for s, n in zip(seg_off.tolist(), ns.tolist(), strict=True)]

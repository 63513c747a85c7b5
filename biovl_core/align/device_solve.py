"""Alignment where the embeddings already are: similarity, packing and the kernel on the GPU.

For the fused decode+embed path (the video embeddings are CUDA tensors, the step texts' too):
`similarity_on_device` multiplies them on the GPU (cupy, through DLPack from torch);
`solve_resident` packs a batch of device match/drop arrays on the device (cupy
concatenation: one device copy per array, no packing loop over cells in Python, no host
copy), launches the "shfl" kernel (or "fused" for K > 64), and copies back only int16 labels
(2 bytes a segment instead of int64's 8) and float32 optima. Which batches come here is
decided by `biovl_core.align.cost`.

**Unverified on GPU** (no GPU in the session that wrote it): the kernels are the ones checked
on an H200 (`kernel_cupy`); the device packing reproduces ``pack_flat``'s layout, which
tests/test_align_device.py checks with numpy standing in for cupy (same array API).
The method's ``prepare`` (``methods.py``) is array code: given a cupy similarity it builds
the match and drop scores on the GPU (`align_resident`); only K-sized priors from the step
texts are computed on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LABEL_DTYPE = np.int16
"""Labels copied back: step indices 0..K (K <= 32767), -1 for background never needed here."""


def pack_on_device(xp: Any, matches: Sequence[Any], drops: Sequence[Any]) -> tuple[Any, ...]:
    """``pack_flat``'s layout built with array module `xp` on its device: (m_flat, m_off,
    drop_flat, seg_off, ks, ns); offsets and sizes are host int64 (their maxima size the
    launch), data stays on the device."""
    ks = np.array([int(m.shape[0]) for m in matches], dtype=np.int64)
    ns = np.array([int(m.shape[1]) for m in matches], dtype=np.int64)
    m_off = np.zeros(len(matches), dtype=np.int64)
    seg_off = np.zeros(len(matches), dtype=np.int64)
    if len(matches):
        m_off[1:] = np.cumsum(ks * ns)[:-1]
        seg_off[1:] = np.cumsum(ns)[:-1]
    m_flat = xp.concatenate([xp.ravel(m).astype(xp.float32, copy=False) for m in matches])
    drop_flat = xp.concatenate([xp.asarray(d).astype(xp.float32, copy=False) for d in drops])
    return m_flat, m_off, drop_flat, seg_off, ks, ns


def similarity_on_device(video: Any, texts: Any) -> Any:
    """[K, N] cosine-style similarity (texts [K, D] @ video [N, D].T) on the GPU, as cupy.

    Accepts torch CUDA tensors (zero-copy through DLPack) or cupy arrays.
    """
    import cupy as cp

    def as_cupy(x: Any) -> Any:
        return cp.from_dlpack(x) if not isinstance(x, cp.ndarray) else x

    return as_cupy(texts).astype(cp.float32) @ as_cupy(video).astype(cp.float32).T


def solve_resident(
    matches: Sequence[Any], drops: Sequence[Any]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Labels (int16 [N] per alignment, on the host) and float32 optima of device problems."""
    import cupy as cp

    from biovl_core.align.cupy_sources import SHFL_MAX_K
    from biovl_core.align.kernel_cupy import launch_shfl, solve_flat_rawkernel

    if not matches:
        return [], np.zeros(0, dtype=np.float32)
    m_flat, m_off, drop_flat, seg_off, ks, ns = pack_on_device(cp, matches, drops)
    if 1 <= int(ks.min()) and int(ks.max()) <= SHFL_MAX_K:
        labels, scores = launch_shfl(
            m_flat,
            cp.asarray(m_off),
            drop_flat,
            cp.asarray(seg_off),
            cp.asarray(ks, dtype=cp.int32),
            cp.asarray(ns, dtype=cp.int32),
            int(ks.max()),
        )
    else:
        labels, scores = solve_flat_rawkernel(m_flat, m_off, drop_flat, seg_off, ks, ns, "fused")
    small = labels.astype(cp.int16).get()  # the only per-segment copy back: 2 bytes each
    out = [small[s : s + n] for s, n in zip(seg_off.tolist(), ns.tolist(), strict=True)]
    return out, scores.get()


def align_resident(
    sims: Sequence[Any],
    segment_seconds: float,
    durations_s: Sequence[float],
    method: str = "default",
    params: dict[str, Any] | None = None,
) -> list[tuple[list[Any], np.ndarray, float]]:
    """(spans, int16 labels, optimum) of each [K, N] similarity already on the GPU (cupy):
    the method's problem built there, one resident solve, spans from the labels on the host."""
    from biovl_core.align.registry import resolve_method, spans_from_labels

    spec = resolve_method(method)
    if spec.prepare is None:
        raise ValueError(f"method {spec.name!r} has no kernel problem to solve on the GPU")
    full = {**spec.defaults, **(params or {})}
    problems = [spec.prepare(sim, dict(full)) for sim in sims]
    labels, scores = solve_resident([p.match for p in problems], [p.drop for p in problems])
    return [
        (spans_from_labels(lab, int(p.match.shape[0]), segment_seconds, float(d)), lab, float(sc))
        for p, lab, sc, d in zip(problems, labels, scores.tolist(), durations_s, strict=True)
    ]

"""Pack a batch of alignments into one contiguous buffer, once, with vectorised numpy.

The flat kernels (numba's ``solve_flat``, the cupy RawKernels) read every alignment's match
scores [K, N] back to back, the drop scores [N] back to back, and per-alignment offsets and
sizes. `pack_batch` lays all six arrays out in ONE byte buffer (16-byte aligned sections), so
the GPU path makes one host-to-device copy of one (pinned) allocation. Offsets come from
prefix sums over the shapes; the data is copied by ``np.concatenate(..., out=...)`` into the
buffer's views, split over threads for big batches (numpy copies release the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

PARALLEL_PACK_BYTES = 32 << 20
"""Batches with more match-score bytes than this are copied by several threads."""

PACK_THREADS = max(1, min(8, os.cpu_count() or 1))

_ALIGN = 16
_SECTIONS = (
    ("m_flat", np.float32),
    ("drop_flat", np.float32),
    ("m_off", np.int64),
    ("seg_off", np.int64),
    ("ks", np.int32),
    ("ns", np.int32),
)

Allocator = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class PackedBatch:
    """One buffer holding a batch's kernel inputs, with typed views into it (host side)."""

    buffer: np.ndarray  # uint8 [nbytes]: everything below, 16-byte aligned sections
    sections: dict[str, tuple[int, np.dtype, int]]  # name -> (byte offset, dtype, length)
    ks: np.ndarray  # int64 [B] steps per alignment
    ns: np.ndarray  # int64 [B] segments per alignment

    def view(self, name: str, buffer: object | None = None) -> np.ndarray:
        """Typed view of one section of `buffer` (this batch's host buffer, or a device copy)."""
        offset, dtype, length = self.sections[name]
        buf = self.buffer if buffer is None else buffer
        return buf[offset : offset + length * dtype.itemsize].view(dtype)  # type: ignore[index]

    def flat(self) -> tuple[np.ndarray, ...]:
        """(m_flat, m_off, drop_flat, seg_off, ks, ns) as ``align.pack_flat`` returns them."""
        return (
            self.view("m_flat"),
            self.view("m_off"),
            self.view("drop_flat"),
            self.view("seg_off"),
            self.ks,
            self.ns,
        )


def _exclusive_cumsum(sizes: np.ndarray) -> np.ndarray:
    """Start offset of each item (prefix sums, first 0)."""
    off = np.zeros(sizes.shape[0], dtype=np.int64)
    if sizes.shape[0] > 1:
        np.cumsum(sizes[:-1], out=off[1:])
    return off


def _copy_into(parts: list[np.ndarray], out: np.ndarray, offsets: np.ndarray, threads: int) -> None:
    """Concatenate raveled `parts` into `out`, in `threads` contiguous chunks of the list."""
    if not parts:
        return
    if threads <= 1 or len(parts) < 2 * threads:
        np.concatenate(parts, out=out)
        return
    bounds = np.linspace(0, len(parts), threads + 1).astype(int)
    ends = np.append(offsets[1:], out.shape[0])

    def chunk(i: int) -> None:
        a, b = int(bounds[i]), int(bounds[i + 1])
        if a < b:
            np.concatenate(parts[a:b], out=out[int(offsets[a]) : int(ends[b - 1])])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(chunk, range(threads)))


def pack_batch(
    matches: Sequence[np.ndarray],
    drops: Sequence[np.ndarray],
    allocate: Allocator | None = None,
    threads: int | None = None,
) -> PackedBatch:
    """Pack match scores [K_b, N_b] and drop scores [N_b] of B alignments into one buffer.

    ``allocate(nbytes)`` returns the uint8 buffer to fill (default ``np.empty``; the cupy path
    passes pinned host memory). Inputs are cast to float32 while copying.
    """
    count = len(matches)
    if len(drops) != count:
        raise ValueError(f"{count} match matrices but {len(drops)} drop vectors")
    ks = np.fromiter((m.shape[0] for m in matches), dtype=np.int64, count=count)
    ns = np.fromiter((m.shape[1] for m in matches), dtype=np.int64, count=count)
    m_off = _exclusive_cumsum(ks * ns)
    seg_off = _exclusive_cumsum(ns)
    lengths = {
        "m_flat": int((ks * ns).sum()),
        "drop_flat": int(ns.sum()),
        "m_off": count,
        "seg_off": count,
        "ks": count,
        "ns": count,
    }
    sections: dict[str, tuple[int, np.dtype, int]] = {}
    nbytes = 0
    for name, dtype in _SECTIONS:
        dt = np.dtype(dtype)
        sections[name] = (nbytes, dt, lengths[name])
        nbytes += -(-lengths[name] * dt.itemsize // _ALIGN) * _ALIGN
    buffer = (allocate or (lambda n: np.empty(n, dtype=np.uint8)))(max(nbytes, _ALIGN))
    packed = PackedBatch(buffer, sections, ks, ns)
    if threads is None:
        threads = PACK_THREADS if lengths["m_flat"] * 4 > PARALLEL_PACK_BYTES else 1
    _copy_into([np.ravel(m) for m in matches], packed.view("m_flat"), m_off, threads)
    _copy_into([np.ravel(d) for d in drops], packed.view("drop_flat"), seg_off, 1)
    packed.view("m_off")[:] = m_off
    packed.view("seg_off")[:] = seg_off
    packed.view("ks")[:] = ks
    packed.view("ns")[:] = ns
    return packed

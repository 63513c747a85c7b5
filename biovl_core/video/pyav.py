"""The CPU sampler (PyAV): the frames shown at given timestamps, read with `PacketReader`.

Keyframe timestamps are decoded alone, others forward from their keyframe (see
`biovl_core.video.reader`); the container's index is read once per process
(`biovl_core.video.index.container_index`). A reader left positioned after one call is
kept for the next call on the same file when that call's timestamps come later, so a
service that asks batch by batch (the Decoder deployment) decodes a file once, not once
per batch from its keyframe.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from biovl_core.video.container import as_timestamps, check_file
from biovl_core.video.index import ContainerIndex, container_index
from biovl_core.video.info import probe
from biovl_core.video.reader import PacketReader
from biovl_core.video.sampler import DecodeStats

IDLE_READERS = 2
"""Readers kept open between calls (per sampler), for the next batch of the same file."""

LOCK_STRIPES = 16


@functools.lru_cache(maxsize=64)
def _rotation(path: str, size: int, mtime_ns: int) -> int:
    """Display rotation of a file, probed once per version of it."""
    return probe(path).rotation


def _crop_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Scaled (width, height) whose shorter side is `size`."""
    scale = size / min(width, height)
    return max(size, int(round(width * scale))), max(size, int(round(height * scale)))


def _to_rgb(frame: object, size: int, rotation: int) -> np.ndarray:
    """Resize shorter side to `size`, center-crop, turn upright: uint8 [size, size, 3]."""
    sw, sh = _crop_size(frame.width, frame.height, size)  # type: ignore[attr-defined]
    img = frame.to_ndarray(width=sw, height=sh, format="rgb24")  # type: ignore[attr-defined]
    y0, x0 = (sh - size) // 2, (sw - size) // 2
    img = img[y0 : y0 + size, x0 : x0 + size]
    if rotation:
        img = np.rot90(img, k=rotation // 90)
    return img


class PyAVSampler:
    """CPU sampler: decodes only what the timestamps need (PyAV/FFmpeg)."""

    name = "pyav"

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads
        self._local = threading.local()  # last_stats per thread: a Decoder replica decodes
        # several files at once, each call reads back its own counters
        self._latest = DecodeStats()  # the latest call of any thread (a prefetch thread's)
        self._idle: collections.OrderedDict[tuple, PacketReader] = collections.OrderedDict()
        self._idle_lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(LOCK_STRIPES)]

    @property
    def last_stats(self) -> DecodeStats:
        """What the last `sample` / `iter_batches` call of this thread cost."""
        return getattr(self._local, "stats", None) or self._latest

    def sample(self, path: str | Path, timestamps: np.ndarray, size: int = 224) -> np.ndarray:
        """uint8 RGB [N, k, size, size, 3] of the frames shown at `timestamps` [N, k] (s)."""
        ts = as_timestamps(timestamps)
        out = np.empty((*ts.shape, size, size, 3), dtype=np.uint8)
        for sl, frames in self.iter_batches(path, ts, size, batch_segments=max(1, ts.shape[0])):
            out[sl] = frames
        return out

    def _reader(self, index: ContainerIndex, first: float, stats: DecodeStats) -> PacketReader:
        """An idle reader of this file that has not passed `first`, else a new one."""
        key = (index.path, id(index))
        with self._idle_lock:
            reader = self._idle.pop(key, None)
        if reader is not None and reader.last_time <= first:
            reader.stats = stats
            return reader
        if reader is not None:
            reader.close()
        return PacketReader(index, stats, self.threads)

    def _keep(self, reader: PacketReader) -> None:
        """Park a reader for the next call on its file (closing the oldest beyond IDLE_READERS)."""
        reader.sync_bytes()
        with self._idle_lock:
            self._idle[(reader.index.path, id(reader.index))] = reader
            while len(self._idle) > IDLE_READERS:
                self._idle.popitem(last=False)[1].close()

    def close(self) -> None:
        """Close the readers kept for later calls."""
        with self._idle_lock:
            readers, self._idle = list(self._idle.values()), collections.OrderedDict()
        for reader in readers:
            reader.close()

    def iter_batches(
        self,
        path: str | Path,
        timestamps: np.ndarray,
        size: int = 224,
        batch_segments: int = 64,
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield (segment slice, uint8 [b, k, size, size, 3]) so memory stays bounded for long videos."""
        ts = as_timestamps(timestamps)
        if batch_segments < 1:
            raise ValueError(f"batch_segments must be >= 1, got {batch_segments}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        p = check_file(path)
        st = p.stat()
        rotation = _rotation(str(p), st.st_size, st.st_mtime_ns)
        index = container_index(p)
        stats = DecodeStats()
        self._local.stats = self._latest = stats
        started = time.perf_counter()
        n, k = ts.shape
        if n == 0:
            return
        # calls on one file take turns, so a later batch continues the reader of an earlier one
        with self._stripes[hash(index.path) % LOCK_STRIPES]:
            reader = self._reader(index, float(ts.min()), stats)
            done = False
            try:
                for a in range(0, n, batch_segments):
                    b = min(n, a + batch_segments)
                    yield slice(a, b), self._batch(reader, ts[a:b], size, rotation, stats)
                    stats.wall_s = time.perf_counter() - started
                done = True
            finally:
                if done:
                    self._keep(reader)
                else:
                    reader.close()
                stats.wall_s = time.perf_counter() - started

    @staticmethod
    def _batch(
        reader: PacketReader, ts: np.ndarray, size: int, rotation: int, stats: DecodeStats
    ) -> np.ndarray:
        """Frames [b, k, size, size, 3] for one batch of timestamps [b, k]."""
        b, k = ts.shape
        flat = ts.ravel()
        out = np.empty((len(flat), size, size, 3), dtype=np.uint8)
        last_pts, last_j = None, -1
        for j in np.argsort(flat, kind="stable"):
            frame, pts = reader.frame_at(float(flat[j]))
            stats.samples += 1
            if pts is not None and pts == last_pts:
                out[j] = out[last_j]
            else:
                out[j] = _to_rgb(frame, size, rotation)
                stats.frames_converted += 1
            last_pts, last_j = pts, j
        reader.sync_bytes()
        return out.reshape(b, k, size, size, 3)

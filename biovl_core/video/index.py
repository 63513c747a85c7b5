"""Where a recording's frames and keyframes lie, from the container's own index, read once.

- MP4/MOV (and AVI): FFmpeg's index of the sample tables (``stream.index_entries``: byte
  position, size, keyframe flag, decode time of every sample), plus the composition offsets
  (``ctts``, `biovl_core.video.mp4_tables`) that turn decode times into exact presentation
  times. Only the header is read.
- Matroska/WebM: the cues FFmpeg reads at open (exact presentation times of keyframes; no
  per-frame list).
- MPEG-TS, and any file whose index is missing or does not add up: one demux pass over the
  packet headers (no decoding), the only case that reads the whole file.

`container_index` keeps the last few indexes per process (keyed by path, size and mtime),
so the probe, the sample plan and every batch of the sampler share one read.
"""

from __future__ import annotations

import collections
import functools
import io
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from biovl_core.device import optional_import
from biovl_core.video.container import (
    AV_HINT,
    check_file,
    open_container,
    video_error,
    video_stream,
)
from biovl_core.video.mp4_tables import read_track_tables

INDEX_SOURCES = ("sample-tables", "cues", "scan")
CACHED_INDEXES = 8


class CountingFile(io.FileIO):
    """A read-only file that counts the bytes read through it (what a decoder really read)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(str(path), "rb")
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data or b"")
        return data

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer) or 0
        self.bytes_read += n
        return n


@dataclass(frozen=True)
class ContainerIndex:
    """Packets of the first video stream, in decode order: every packet (``complete``), or the
    keyframes only (Matroska cues). Times are seconds from the first frame."""

    path: str
    source: str  # one of INDEX_SOURCES
    complete: bool  # lists every frame (sample tables, scan), not only keyframes (cues)
    pts: np.ndarray  # int64 [P], stream time base
    dts: np.ndarray  # int64 [P]
    pos: np.ndarray  # int64 [P], byte offset (Matroska cues: the keyframe's cluster)
    size: np.ndarray  # int64 [P], bytes (0 where the index does not say)
    keyframe: np.ndarray  # bool [P]
    start_pts: int
    time_base: Fraction
    seekable: bool  # the demuxer seeks to these keyframes by pts (not after a scan)
    bytes_read: int  # bytes read to build this index

    def seconds(self, pts: np.ndarray) -> np.ndarray:
        """Stream pts -> seconds from the first frame."""
        return (np.asarray(pts, dtype=np.int64) - self.start_pts).astype(np.float64) * float(
            self.time_base
        )

    @functools.cached_property
    def keyframe_pts(self) -> np.ndarray:
        """int64 [K] pts of the keyframes, sorted by presentation time."""
        return np.sort(self.pts[self.keyframe])

    @functools.cached_property
    def keyframe_times(self) -> np.ndarray:
        """float64 [K] presentation times of the keyframes (s), sorted."""
        return self.seconds(self.keyframe_pts)

    @functools.cached_property
    def frame_times(self) -> np.ndarray | None:
        """float64 [F] presentation time of every frame, sorted; None where only keyframes are listed."""
        return self.seconds(np.unique(self.pts)) if self.complete else None

    @property
    def num_frames(self) -> int | None:
        """Frames in the stream where the index lists them all."""
        return len(self.pts) if self.complete else None


def _arrays(rows: list[tuple[int, int, int, int, bool]]) -> tuple[np.ndarray, ...]:
    arr = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    return arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4].astype(bool)


def _first_packet(container: Any, stream: Any) -> Any:
    """The first non-empty video packet (decode order), or None."""
    for packet in container.demux(stream):
        if packet.size and not getattr(packet, "is_discard", False):
            return packet
    return None


def _from_sample_tables(
    p: Path, container: Any, stream: Any
) -> tuple[tuple[np.ndarray, ...], int] | None:
    """(pts, dts, pos, size, keyframe) of every sample from the header's tables, and the bytes
    read for ctts; None when the index does not list every frame or disagrees with the stream."""
    entries = stream.index_entries
    n = len(entries)
    if n == 0 or (stream.frames and n != stream.frames):
        return None
    rows = [(e.timestamp, e.timestamp, e.pos, e.size, e.is_keyframe) for e in entries]
    discard = np.fromiter((e.is_discard for e in entries), dtype=bool, count=n)
    pts, dts, pos, size, key = _arrays(rows)
    extra = 0
    if "mov" in container.format.name.split(","):
        tables = read_track_tables(p, stream.id)
        if tables is None or tables.fragmented or tables.sample_count != n:
            return None
        pts = dts + tables.composition_offsets
        extra = tables.bytes_read
    keep = ~discard
    pts, dts, pos, size, key = pts[keep], dts[keep], pos[keep], size[keep], key[keep]
    first = _first_packet(container, stream)
    if first is None or first.pts is None or not len(pts):
        return None
    # FFmpeg may shift decode times (negative composition offsets, edit lists): calibrate on
    # the first packet, the one the probe has read anyway
    shift = int(first.pts) - int(pts[0])
    if first.dts is not None and int(first.dts) != int(dts[0]) + shift:
        return None
    return (pts + shift, dts + shift, pos, size, key), extra


def _from_cues(container: Any, stream: Any) -> tuple[np.ndarray, ...] | None:
    """Keyframes from Matroska cues (presentation times), or None without cues."""
    container.seek(0, stream=stream, backward=True)  # FFmpeg reads cues stored at the end lazily
    entries = [e for e in stream.index_entries if e.is_keyframe]
    if not entries:
        return None
    rows = [(e.timestamp, e.timestamp, e.pos, 0, True) for e in entries]
    return _arrays(sorted(rows))


def _scan(p: Path, container: Any, stream: Any) -> tuple[np.ndarray, ...]:
    """Every packet header of the video stream, by one demux pass (no decoding)."""
    av = optional_import("av", AV_HINT)
    container.seek(0, stream=stream, backward=True)
    rows = []
    try:
        for packet in container.demux(stream):
            if not packet.size or packet.pts is None or getattr(packet, "is_discard", False):
                continue
            dts = packet.dts if packet.dts is not None else packet.pts
            pos = packet.pos if packet.pos is not None else -1
            rows.append((packet.pts, dts, pos, packet.size, bool(packet.is_keyframe)))
    except av.error.FFmpegError as exc:
        raise video_error(
            p, f"is corrupt or truncated ({exc})", "Re-copy or re-upload the recording"
        ) from exc
    if not rows:
        raise video_error(
            p, "has a video stream but no frames", "Record or upload a non-empty video"
        )
    return _arrays(rows)


def build_index(path: str | Path) -> ContainerIndex:
    """Read the index of a recording (no cache): sample tables, cues, else one demux scan."""
    p = check_file(path)
    fh = CountingFile(p)
    extra = 0
    with fh, open_container(p, fh) as container:
        stream = video_stream(container, p)
        tb = Fraction(stream.time_base or Fraction(1, 1_000_000))
        names = container.format.name.split(",")
        source, complete, seekable, arrays = "scan", True, False, None
        if "mpegts" not in names and "matroska" not in names:
            found = _from_sample_tables(p, container, stream)
            if found is not None:
                (arrays, extra), source, seekable = found, "sample-tables", True
        elif "matroska" in names:
            arrays = _from_cues(container, stream)
            if arrays is not None:
                source, complete, seekable = "cues", False, True
        if arrays is None:
            arrays = _scan(p, container, stream)
        start = stream.start_time
    pts, dts, pos, size, key = arrays
    if not key.any():  # nothing flagged: decoding starts at the first packet
        key = key.copy()
        key[0] = True
    start_pts = int(start) if start is not None else int(pts.min())
    return ContainerIndex(
        path=str(p),
        source=source,
        complete=complete,
        pts=pts,
        dts=dts,
        pos=pos,
        size=size,
        keyframe=key,
        start_pts=start_pts,
        time_base=tb,
        seekable=seekable,
        bytes_read=fh.bytes_read + extra,
    )


_CACHE: collections.OrderedDict[tuple, ContainerIndex] = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()


def container_index(path: str | Path) -> ContainerIndex:
    """The recording's index, read once per process while the file is unchanged (LRU of 8)."""
    p = check_file(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    index = build_index(p)
    with _CACHE_LOCK:
        _CACHE[key] = index
        while len(_CACHE) > CACHED_INDEXES:
            _CACHE.popitem(last=False)
    return index

"""The CPU frame sampler: PyAV decodes, seeking only where a segment's frame lies past the next keyframe."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from biovl_core.device import optional_import
from biovl_core.video.container import (
    AV_HINT,
    TIME_EPS,
    as_timestamps,
    check_file,
    open_container,
    video_error,
    video_stream,
)
from biovl_core.video.info import is_vfr, probe, read_index
from biovl_core.video.sampler import DecodeStats

if TYPE_CHECKING:
    import av.container
    import av.stream
    import av.video.frame


def _crop_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Scaled (width, height) whose shorter side is `size`."""
    scale = size / min(width, height)
    return max(size, int(round(width * scale))), max(size, int(round(height * scale)))


def _to_rgb(frame: av.video.frame.VideoFrame, size: int, rotation: int) -> np.ndarray:
    """Resize shorter side to `size`, center-crop, turn upright: uint8 [size, size, 3]."""
    sw, sh = _crop_size(frame.width, frame.height, size)
    img = frame.to_ndarray(width=sw, height=sh, format="rgb24")
    y0, x0 = (sh - size) // 2, (sw - size) // 2
    img = img[y0 : y0 + size, x0 : x0 + size]
    if rotation:
        img = np.rot90(img, k=rotation // 90)
    return img


class _FrameReader:
    """Decodes forward from the current position, seeking only when that is cheaper."""

    def __init__(
        self, path: Path, stats: DecodeStats, seek: bool, seek_threshold_s: float, threads: int
    ):
        self.path = path
        self.av = optional_import("av", AV_HINT)
        self.container = open_container(path)
        self.stream = video_stream(self.container, path)
        self.stream.thread_type = "AUTO"
        if threads:
            self.stream.codec_context.thread_count = threads
        self.tb = float(self.stream.time_base)
        self.start_pts = self.stream.start_time if self.stream.start_time is not None else 0
        index = read_index(self.stream, self.start_pts, self.tb)
        self.keyframes = index.keyframes if index is not None else None
        # Index times are decode times shifted by the first frame's delay: exact for constant
        # frame rate, a few frames off for variable frame rate, so keep that much margin.
        self.slack = 0.0
        if index is not None and len(index.times) > 1 and is_vfr(index, self.stream):
            self.slack = 3.0 * float(np.median(np.diff(index.times)))
        self.stats = stats
        self.seek = seek
        self.seek_threshold_s = seek_threshold_s
        self._frames: Iterator[Any] | None = None
        self._cur: tuple[Any, float] | None = None  # latest decoded frame at or before the target
        self._next: tuple[Any, float] | None = None  # first decoded frame after the target
        self._eof = False

    def close(self) -> None:
        """Release the file and decoder."""
        self.container.close()

    def _decode(self) -> Iterator[Any]:
        """Frames from the current file position, counting each."""
        try:
            for frame in self.container.decode(self.stream):
                self.stats.frames_decoded += 1
                yield frame
        except self.av.error.FFmpegError as exc:
            raise video_error(
                self.path,
                f"decoding failed ({exc}); the file is corrupt or truncated",
                "Re-copy or re-upload the recording",
            ) from exc

    def _time(self, frame: Any) -> float:
        """Frame presentation time in seconds from the first frame."""
        if frame.pts is None:
            raise video_error(
                self.path,
                "has frames without timestamps",
                "Remux it into MP4, e.g. `ffmpeg -i IN -c copy OUT.mp4`",
            )
        return (frame.pts - self.start_pts) * self.tb

    def _seek(self, t: float) -> None:
        """Jump to the keyframe at or before time t."""
        target = self.start_pts + int(math.floor(max(t, 0.0) / self.tb))
        self.container.seek(target, backward=True, any_frame=False, stream=self.stream)
        self._frames = self._decode()
        self._cur = self._next = None
        self._eof = False
        self.stats.seeks += 1

    def _position(self) -> float:
        """Time of the latest decoded frame (-inf before any)."""
        if self._next is not None:
            return self._next[1]
        return self._cur[1] if self._cur is not None else -math.inf

    def _should_seek(self, t: float) -> bool:
        """Seek when behind, or when a keyframe lies between the decode position and t."""
        if self._cur is not None and t + TIME_EPS < self._cur[1]:
            return True
        if not self.seek:
            return False
        pos = self._position() if self._frames is not None else 0.0
        if self.keyframes is not None and len(self.keyframes):
            k = np.searchsorted(self.keyframes, t - self.slack + TIME_EPS, side="right") - 1
            return k >= 0 and self.keyframes[k] > pos + TIME_EPS
        return t - pos > self.seek_threshold_s

    def _advance(self, t: float) -> None:
        """Decode forward until the next frame is after t (or the stream ends)."""
        assert self._frames is not None
        while True:
            if self._next is None:
                if self._eof:
                    return
                frame = next(self._frames, None)
                if frame is None:
                    self._eof = True
                    return
                self._next = (frame, self._time(frame))
            if self._next[1] <= t + TIME_EPS:
                self._cur, self._next = self._next, None
            else:
                return

    def frame_at(self, t: float) -> tuple[Any, int]:
        """The frame shown at time t, and its pts (to recognise repeats)."""
        if self._should_seek(t):
            self._seek(t - self.slack)
            self._advance(t)
            backoff = 1.0
            while self._cur is None and t > TIME_EPS and backoff < 64:
                # landed on a keyframe after t (some containers seek by decode time): step back
                self._seek(t - backoff)
                self._advance(t)
                backoff *= 4
        elif self._frames is None:
            self._frames = self._decode()
            self._advance(t)
        else:
            self._advance(t)
        if self._cur is None and self._next is None:
            self._seek(0.0)
            self._advance(t)
        chosen = self._cur or self._next
        if chosen is None:
            raise video_error(
                self.path, "has no decodable frames", "Re-copy or re-upload the recording"
            )
        return chosen[0], chosen[0].pts


class PyAVSampler:
    """CPU sampler: seeks to keyframes and decodes only what the timestamps need (PyAV/FFmpeg)."""

    name = "pyav"

    def __init__(self, seek: bool = True, seek_threshold_s: float = 2.0, threads: int = 0) -> None:
        self.seek = seek
        self.seek_threshold_s = seek_threshold_s
        self.threads = threads
        self.last_stats = DecodeStats()

    def sample(self, path: str | Path, timestamps: np.ndarray, size: int = 224) -> np.ndarray:
        """uint8 RGB [N, k, size, size, 3] of the frames shown at `timestamps` [N, k] (s)."""
        ts = as_timestamps(timestamps)
        out = np.empty((*ts.shape, size, size, 3), dtype=np.uint8)
        for sl, frames in self.iter_batches(path, ts, size, batch_segments=max(1, ts.shape[0])):
            out[sl] = frames
        return out

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
        info = probe(p)
        stats = DecodeStats()
        self.last_stats = stats
        started = time.perf_counter()
        reader = _FrameReader(p, stats, self.seek, self.seek_threshold_s, self.threads)
        try:
            n, k = ts.shape
            for a in range(0, n, batch_segments):
                b = min(n, a + batch_segments)
                flat = ts[a:b].ravel()
                out = np.empty((len(flat), size, size, 3), dtype=np.uint8)
                last_pts, last_j = None, -1
                for j in np.argsort(flat, kind="stable"):
                    frame, pts = reader.frame_at(float(flat[j]))
                    if pts is not None and pts == last_pts:
                        out[j] = out[last_j]
                    else:
                        out[j] = _to_rgb(frame, size, info.rotation)
                        stats.frames_converted += 1
                    last_pts, last_j = pts, j
                stats.wall_s = time.perf_counter() - started
                yield slice(a, b), out.reshape(b - a, k, size, size, 3)
        finally:
            reader.close()
            stats.wall_s = time.perf_counter() - started

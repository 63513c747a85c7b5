"""From a video file to sampled frames: probe, segment timestamps, frame samplers.

Frame rule (both decoders): the frame returned for a timestamp ``t`` (seconds from
the first frame) is the one whose presentation interval ``[t_i, t_{i+1})`` contains
``t``, i.e. the last frame with ``t_i <= t``; before the first frame that is frame 0,
after the last it is the last frame. Times come from pts * time_base, never from
index / fps, so variable-frame-rate recordings sample the right frame.

Frames come out as uint8 RGB ``[N, k, size, size, 3]``: the shorter side resized to
``size``, center-cropped, then turned upright according to the display rotation.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from biovl_core.device import cuda_available, nvdec_library, optional_import
from biovl_core.errors import VideoError
from biovl_core.files import sha256_file

if TYPE_CHECKING:
    import av.container
    import av.stream
    import av.video.frame

MIN_TAIL_SECONDS = 0.5
"""A trailing remainder shorter than this does not get a segment of its own."""

TIME_EPS = 1e-6
"""Tolerance (seconds) when comparing a timestamp to a frame time, shared by all decoders."""

SAMPLER_NAMES = ("auto", "pyav", "dali")

log = logging.getLogger(__name__)

ALLOWED_DEMUXERS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts")
"""FFmpeg demuxers a recording may use (what lab cameras write: MP4/MOV, MKV/WebM, AVI, AVCHD's
MPEG-TS). Everything else, playlists (HLS), concat lists and image sequences included, is
refused before its header is read, so no file can make the decoder open another path."""

OPEN_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": ",".join(ALLOWED_DEMUXERS)}
"""FFmpeg options every open uses: local files only, allowed demuxers only."""

CANONICAL_EXTENSIONS = {
    "mov": ".mp4",
    "matroska": ".mkv",
    "webm": ".webm",
    "avi": ".avi",
    "mpegts": ".ts",
}
"""Extension an archived video is stored under, chosen from the demuxer that read it."""

_AV_HINT = "pip install av"
_DALI_HINT = "pip install 'biovl-aligner[gpu]' (nvidia-dali-cuda130)"


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a video without decoding more than its first frame."""

    path: str
    duration_s: float  # end of the last frame's presentation interval, from the first frame
    avg_fps: float
    variable_frame_rate: bool
    width: int  # display width (after rotation)
    height: int  # display height (after rotation)
    rotation: (
        int  # counter-clockwise degrees (0/90/180/270) the coded picture is turned for display
    )
    codec: str
    num_frames: int  # exact when `num_frames_exact`, else duration * fps
    num_frames_exact: bool
    coded_width: int
    coded_height: int
    start_s: float  # container time of the first frame; sample timestamps are relative to it
    time_base: Fraction
    size_bytes: int
    container: str = ""  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "matroska,webm"

    @property
    def canonical_extension(self) -> str:
        """The extension to store this video under, from its probed container (not its name)."""
        return canonical_extension(self.container)


def canonical_extension(container: str) -> str:
    """``.mp4``, ``.mkv``, ``.webm``, ``.avi`` or ``.ts`` for an FFmpeg demuxer name."""
    names = container.split(",")
    if "webm" in names and "matroska" not in names:
        return ".webm"
    for name in names:
        if name in CANONICAL_EXTENSIONS:
            return CANONICAL_EXTENSIONS[name]
    raise ValueError(f"container {container!r} is not one of the allowed {ALLOWED_DEMUXERS}")


@dataclass
class DecodeStats:
    """What the last `sample` / `iter_batches` call cost (for tests and benchmarks)."""

    frames_decoded: int = 0
    frames_converted: int = 0
    seeks: int = 0
    wall_s: float = 0.0


@runtime_checkable
class FrameSampler(Protocol):
    """A decoder that returns the frames shown at given timestamps.

    PyAV returns numpy arrays; DALI returns torch CUDA tensors of the same shape and dtype.
    """

    name: str

    def sample(self, path: str | Path, timestamps: np.ndarray, size: int = 224) -> Any:
        """uint8 RGB frames [N, k, size, size, 3] for timestamps [N, k] (seconds)."""
        ...

    def iter_batches(
        self, path: str | Path, timestamps: np.ndarray, size: int = 224, batch_segments: int = 64
    ) -> Iterator[tuple[slice, Any]]:
        """The same frames as `sample`, as (segment slice, frames [b, k, size, size, 3]) batches."""
        ...


def _error(path: str | Path, problem: str, fix: str) -> VideoError:
    """A VideoError naming the file, the problem and what to do."""
    return VideoError(f"{path}: {problem}. {fix}")


def _check_file(path: str | Path) -> Path:
    """The path as a Path, or a VideoError if it is missing, a folder or empty."""
    p = Path(path)
    if not p.exists():
        raise _error(p, "video file not found", "Check the path and that the upload finished")
    if p.is_dir():
        raise _error(p, "is a folder, not a video file", "Pass the video file inside it")
    if p.stat().st_size == 0:
        raise _error(p, "is empty (0 bytes)", "Re-copy or re-upload the recording")
    return p


def _open(path: Path) -> av.container.InputContainer:
    """Open a media file with PyAV, turning FFmpeg errors into a VideoError."""
    av = optional_import("av", _AV_HINT)
    try:
        return av.open(
            str(path), mode="r", container_options=dict(OPEN_OPTIONS), metadata_errors="replace"
        )
    except av.error.ArgumentError as exc:
        raise _error(
            path,
            f"is not in an accepted container ({exc.strerror}); accepted: MP4/MOV, MKV/WebM, AVI, "
            "MPEG-TS (playlists, concat lists and image sequences are refused)",
            "Upload the video file as the camera recorded it, or re-mux it: "
            "`ffmpeg -i IN -c copy OUT.mp4`",
        ) from exc
    except av.error.InvalidDataError as exc:
        raise _error(
            path,
            f"cannot be read as a video ({exc.strerror}): it is not a video file, or it is truncated "
            "(an MP4 whose recording or copy was interrupted has no index)",
            "Upload the complete MP4/MOV/MKV file as recorded by the camera",
        ) from exc
    except av.error.PermissionError as exc:
        raise _error(path, "cannot be opened: permission denied", "Make the file readable") from exc
    except av.error.FFmpegError as exc:
        raise _error(
            path, f"cannot be opened by FFmpeg ({exc})", "Check that it is a video file"
        ) from exc


def _video_stream(container: av.container.InputContainer, path: Path) -> av.stream.Stream:
    """The first video stream, or a VideoError saying what the file holds instead."""
    if not container.streams.video:
        found = (
            ", ".join(
                f"{s.type} ({s.codec_context.name if s.codec_context else '?'})"
                for s in container.streams
            )
            or "none"
        )
        raise _error(
            path,
            f"has no video stream (streams found: {found})",
            "Provide a video recording, not an audio-only or data file",
        )
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise _error(
            path,
            "uses a video codec this FFmpeg build does not know (no decoder for its codec tag)",
            "Re-encode it to H.264, e.g. `ffmpeg -i IN -c:v libx264 -crf 18 OUT.mp4`",
        )
    return stream


@dataclass(frozen=True)
class _Index:
    """Packet index read from the container header (MP4/MOV); None where the container has none."""

    times: np.ndarray  # approx. presentation time of every packet, seconds from the first frame
    keyframes: np.ndarray  # the same for keyframes
    end_byte: int  # where the last packet ends in the file


def _read_index(stream: Any, start_pts: int, tb: float) -> _Index | None:
    """The container's packet index, when it lists every frame (MP4/MOV do; MKV lists keyframes only)."""
    entries = stream.index_entries
    n = len(entries)
    if n == 0 or (stream.frames and n != stream.frames):
        return None
    ts = np.empty(n, dtype=np.int64)
    key = np.zeros(n, dtype=bool)
    end = 0
    for i, e in enumerate(entries):
        ts[i] = e.timestamp
        key[i] = e.is_keyframe
        end = max(end, e.pos + e.size)
    # MP4 indexes decode times; shifting by the first entry's decode delay gives presentation times.
    shift = start_pts - int(ts[0]) if key[0] else 0
    times = (ts + shift - start_pts).astype(np.float64) * tb
    return _Index(times=times, keyframes=times[key], end_byte=end)


def _is_vfr(index: _Index | None, stream: Any) -> bool:
    """Whether frame durations vary (from the index when present, else from the header's rates)."""
    if index is not None and len(index.times) >= 3:
        d = np.diff(np.sort(index.times))
        med = float(np.median(d))
        tick = float(stream.time_base)
        return bool(np.any(np.abs(d - med) > 0.1 * med + 1.5 * tick))
    avg, base = stream.average_rate, stream.guessed_rate or stream.base_rate
    if not avg or not base:
        return False
    return abs(float(avg) - float(base)) > 0.01 * float(base)


def _rotation_of(frame: Any, stream: Any) -> int:
    """Counter-clockwise display rotation from the frame's display matrix, else the 'rotate' tag."""
    deg = getattr(frame, "rotation", 0) or 0
    if not deg:
        tag = stream.metadata.get("rotate")
        if tag:
            try:
                deg = -int(float(tag))  # the legacy tag is clockwise
            except ValueError:
                deg = 0
    return int(round(deg / 90.0)) * 90 % 360


def probe(path: str | Path) -> VideoInfo:
    """Read duration, frame rate, size, rotation and codec; checks that the first frame decodes."""
    p = _check_file(path)
    av = optional_import("av", _AV_HINT)
    size_bytes = p.stat().st_size
    with _open(p) as container:
        stream = _video_stream(container, p)
        tb = stream.time_base or Fraction(1, 1000000)
        start_pts = stream.start_time if stream.start_time is not None else 0
        index = _read_index(stream, start_pts, float(tb))
        if index is not None and index.end_byte > size_bytes:
            raise _error(
                p,
                f"is truncated: its index expects {index.end_byte} bytes but the file has {size_bytes}",
                "Re-copy or re-upload the complete recording",
            )
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise _error(
                p,
                f"its {stream.codec_context.name} video stream cannot be decoded ({exc})",
                "The file is corrupt or uses an unsupported codec; re-encode it to H.264",
            ) from exc
        if first is None:
            raise _error(
                p,
                "has a video stream but no frames (zero duration)",
                "Record or upload a non-empty video",
            )
        duration = _video_duration(container, stream, tb, start_pts)
        frames = stream.frames or (len(index.times) if index is not None else 0)
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        if not fps and frames and duration:
            fps = frames / duration
        if duration <= 0 and frames and fps:
            duration = frames / fps
        if duration <= 0:
            raise _error(p, "has zero duration", "Record or upload a non-empty video")
        exact = bool(frames)
        if not frames:
            frames = max(1, int(round(duration * (fps or 30.0))))
        rotation = _rotation_of(first, stream)
        cw, ch = first.width, first.height
        w, h = (ch, cw) if rotation in (90, 270) else (cw, ch)
        return VideoInfo(
            path=str(p),
            duration_s=duration,
            avg_fps=fps or frames / duration,
            variable_frame_rate=_is_vfr(index, stream),
            width=w,
            height=h,
            rotation=rotation,
            codec=stream.codec_context.name,
            num_frames=frames,
            num_frames_exact=exact,
            coded_width=cw,
            coded_height=ch,
            start_s=float(start_pts * tb),
            time_base=Fraction(tb),
            size_bytes=size_bytes,
            container=container.format.name,
        )


def _video_duration(container: Any, stream: Any, tb: Fraction, start_pts: int) -> float:
    """Seconds from the first video frame to the end of the last one: the video stream's, never
    the container's (an MKV/WebM's container duration includes a longer audio track)."""
    if stream.duration:
        return float(stream.duration * tb)
    end = _last_video_packet_end(container, stream)
    if end is not None:
        return max(0.0, float((end - start_pts) * tb))
    return container.duration / 1_000_000 if container.duration else 0.0


def _last_video_packet_end(container: Any, stream: Any) -> int | None:
    """End pts of the video stream's last packet: seek near the end, demux (no decoding)."""
    av = optional_import("av", _AV_HINT)
    try:
        if container.duration:
            target = int(container.duration / 1_000_000 / float(stream.time_base))
            container.seek(target, stream=stream, backward=True, any_frame=False)
        last = None
        for packet in container.demux(stream):
            if packet.pts is not None:
                end = packet.pts + (packet.duration or 0)
                last = end if last is None else max(last, end)
        return last
    except av.error.FFmpegError:
        return None
    finally:
        try:
            container.seek(0, stream=stream, backward=True)
        except av.error.FFmpegError:
            pass


def frame_times(path: str | Path) -> np.ndarray:
    """Exact presentation time (s, from the first frame) of every frame, sorted.

    Reads every packet header of the video stream (no decoding): cost is one pass over
    the file. The GPU sampler uses it to turn timestamps into frame indices.
    """
    p = _check_file(path)
    av = optional_import("av", _AV_HINT)
    with _open(p) as container:
        stream = _video_stream(container, p)
        tb = float(stream.time_base)
        start_pts = stream.start_time
        pts = []
        try:
            for packet in container.demux(stream):
                if (
                    packet.size
                    and packet.pts is not None
                    and not getattr(packet, "is_discard", False)
                ):
                    pts.append(packet.pts)
        except av.error.FFmpegError as exc:
            raise _error(
                p, f"is corrupt or truncated ({exc})", "Re-copy or re-upload the recording"
            ) from exc
    if not pts:
        raise _error(p, "has a video stream but no frames", "Record or upload a non-empty video")
    arr = np.unique(np.asarray(pts, dtype=np.int64))
    return (arr - (start_pts if start_pts is not None else arr[0])).astype(np.float64) * tb


def frame_index_at(times: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Index of the frame shown at each timestamp (the module's frame rule), same shape as timestamps."""
    t = np.asarray(timestamps, dtype=np.float64)
    idx = np.searchsorted(np.asarray(times, dtype=np.float64), t + TIME_EPS, side="right") - 1
    return np.clip(idx, 0, len(times) - 1).astype(np.int64)


def segment_count(duration_s: float, segment_seconds: float = 5.0) -> int:
    """Number of segments: ceil(duration / S), at least 1, a trailing sliver < 0.5 s dropped."""
    if segment_seconds <= 0:
        raise ValueError(f"segment_seconds must be positive, got {segment_seconds}")
    if not duration_s > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    n = max(1, math.ceil(duration_s / segment_seconds - 1e-9))
    if n > 1 and duration_s - (n - 1) * segment_seconds < MIN_TAIL_SECONDS:
        n -= 1
    return n


def segment_timestamps(
    info_or_duration: VideoInfo | float,
    segment_seconds: float = 5.0,
    frames_per_segment: int = 1,
) -> np.ndarray:
    """float64 [N, k] sample times: segment i covers [i*S, min((i+1)*S, duration)).

    k = 1 gives each segment's middle; k > 1 the centers of k equal sub-intervals.
    """
    duration = (
        info_or_duration.duration_s
        if isinstance(info_or_duration, VideoInfo)
        else float(info_or_duration)
    )
    if frames_per_segment < 1:
        raise ValueError(f"frames_per_segment must be >= 1, got {frames_per_segment}")
    n = segment_count(duration, segment_seconds)
    starts = np.arange(n, dtype=np.float64) * segment_seconds
    ends = np.minimum(starts + segment_seconds, duration)
    ends[-1] = duration if n * segment_seconds > duration else ends[-1]
    frac = (np.arange(frames_per_segment, dtype=np.float64) + 0.5) / frames_per_segment
    return starts[:, None] + (ends - starts)[:, None] * frac[None, :]


def _as_timestamps(timestamps: np.ndarray) -> np.ndarray:
    """Validate sample timestamps: a finite float array [N, k]."""
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 2:
        raise ValueError(
            f"timestamps must be a 2-D array [segments, frames_per_segment], got shape {ts.shape}"
        )
    if not np.all(np.isfinite(ts)):
        raise ValueError("timestamps contain NaN or infinity")
    return ts


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
        self.av = optional_import("av", _AV_HINT)
        self.container = _open(path)
        self.stream = _video_stream(self.container, path)
        self.stream.thread_type = "AUTO"
        if threads:
            self.stream.codec_context.thread_count = threads
        self.tb = float(self.stream.time_base)
        self.start_pts = self.stream.start_time if self.stream.start_time is not None else 0
        index = _read_index(self.stream, self.start_pts, self.tb)
        self.keyframes = index.keyframes if index is not None else None
        # Index times are decode times shifted by the first frame's delay: exact for constant
        # frame rate, a few frames off for variable frame rate, so keep that much margin.
        self.slack = 0.0
        if index is not None and len(index.times) > 1 and _is_vfr(index, self.stream):
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
            raise _error(
                self.path,
                f"decoding failed ({exc}); the file is corrupt or truncated",
                "Re-copy or re-upload the recording",
            ) from exc

    def _time(self, frame: Any) -> float:
        """Frame presentation time in seconds from the first frame."""
        if frame.pts is None:
            raise _error(
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
            raise _error(self.path, "has no decodable frames", "Re-copy or re-upload the recording")
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
        ts = _as_timestamps(timestamps)
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
        ts = _as_timestamps(timestamps)
        if batch_segments < 1:
            raise ValueError(f"batch_segments must be >= 1, got {batch_segments}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        p = _check_file(path)
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


def dali_unavailable_reason() -> str | None:
    """Why the DALI decoder cannot run here (no CUDA GPU, DALI not installed), or None."""
    if not cuda_available():
        return "no CUDA GPU is visible (or BIOVL_DEVICE=cpu)"
    try:
        found = importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"nvidia.dali is not installed ({_DALI_HINT})"


def dali_available() -> bool:
    """True when a CUDA GPU is visible and NVIDIA DALI is installed."""
    return dali_unavailable_reason() is None


@dataclass(frozen=True)
class DecoderChoice:
    """Which decoder runs and why; ``reason`` is a short token fit for a metric label."""

    backend: str  # "dali" | "pyav"
    reason: str  # "requested" | "nvdec_ok" | "no_cuda" | "no_dali" | "no_nvcuvid" | "probe_failed"
    detail: str = ""  # what the probe saw, for the log


@functools.lru_cache(maxsize=4)
def choose_decoder(requested: str = "auto") -> DecoderChoice:
    """Resolve a decoder name once per process; 'auto' probes CUDA, DALI, NVDEC and one decode.

    A GPU node whose driver lacks NVDEC (``libnvcuvid``) or whose DALI cannot decode still
    serves, on PyAV, after one warning. Services export the result as
    ``decoder_backend{backend=..., reason=...}``.
    """
    key = (requested or "auto").strip().lower()
    if key not in SAMPLER_NAMES:
        raise ValueError(f"unknown decoder {requested!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    if key != "auto":
        return DecoderChoice(key, "requested")
    if not cuda_available():
        return DecoderChoice("pyav", "no_cuda", "no CUDA GPU visible (or BIOVL_DEVICE=cpu)")
    if not dali_available():
        choice = DecoderChoice("pyav", "no_dali", f"nvidia.dali is not installed: {_DALI_HINT}")
    elif nvdec_library() is None:
        choice = DecoderChoice(
            "pyav",
            "no_nvcuvid",
            "the NVIDIA driver's libnvcuvid (NVDEC) is not loadable; in a container set "
            "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video",
        )
    else:
        from biovl_core.video.dali import smoke_test

        try:
            smoke_test()
            return DecoderChoice("dali", "nvdec_ok", f"NVDEC via {nvdec_library()}")
        except Exception as exc:  # any DALI/driver failure means: serve on the CPU decoder
            choice = DecoderChoice("pyav", "probe_failed", f"{type(exc).__name__}: {exc}")
    log.warning(
        "GPU visible but decoding falls back to PyAV (reason %s): %s", choice.reason, choice.detail
    )
    return choice


def get_sampler(name: str = "auto", **options: Any) -> FrameSampler:
    """A frame sampler by name: 'auto' (DALI when `choose_decoder` finds NVDEC working, else PyAV), 'pyav', 'dali'."""
    key = choose_decoder(name).backend
    if key == "pyav":
        return PyAVSampler(**options)
    from biovl_core.video.dali import DALISampler

    return DALISampler(**options)


def video_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes, read in chunks (the archive's content key)."""
    return sha256_file(_check_file(path), chunk)

"""What a recording is: its probe (duration, frame rate, size, rotation, codec) and its frame times."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from biovl_core.device import optional_import
from biovl_core.video.container import (
    AV_HINT,
    TIME_EPS,
    canonical_extension,
    check_file,
    open_container,
    video_error,
    video_stream,
)

if TYPE_CHECKING:
    pass


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


@dataclass(frozen=True)
class _Index:
    """Packet index read from the container header (MP4/MOV); None where the container has none."""

    times: np.ndarray  # approx. presentation time of every packet, seconds from the first frame
    keyframes: np.ndarray  # the same for keyframes
    end_byte: int  # where the last packet ends in the file


def read_index(stream: Any, start_pts: int, tb: float) -> _Index | None:
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


def is_vfr(index: _Index | None, stream: Any) -> bool:
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
    p = check_file(path)
    av = optional_import("av", AV_HINT)
    size_bytes = p.stat().st_size
    with open_container(p) as container:
        stream = video_stream(container, p)
        tb = stream.time_base or Fraction(1, 1000000)
        start_pts = stream.start_time if stream.start_time is not None else 0
        index = read_index(stream, start_pts, float(tb))
        if index is not None and index.end_byte > size_bytes:
            raise video_error(
                p,
                f"is truncated: its index expects {index.end_byte} bytes but the file has {size_bytes}",
                "Re-copy or re-upload the complete recording",
            )
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise video_error(
                p,
                f"its {stream.codec_context.name} video stream cannot be decoded ({exc})",
                "The file is corrupt or uses an unsupported codec; re-encode it to H.264",
            ) from exc
        if first is None:
            raise video_error(
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
            raise video_error(p, "has zero duration", "Record or upload a non-empty video")
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
            variable_frame_rate=is_vfr(index, stream),
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
    av = optional_import("av", AV_HINT)
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
    p = check_file(path)
    av = optional_import("av", AV_HINT)
    with open_container(p) as container:
        stream = video_stream(container, p)
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
            raise video_error(
                p, f"is corrupt or truncated ({exc})", "Re-copy or re-upload the recording"
            ) from exc
    if not pts:
        raise video_error(
            p, "has a video stream but no frames", "Record or upload a non-empty video"
        )
    arr = np.unique(np.asarray(pts, dtype=np.int64))
    return (arr - (start_pts if start_pts is not None else arr[0])).astype(np.float64) * tb


def frame_index_at(times: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Index of the frame shown at each timestamp (the module's frame rule), same shape as timestamps."""
    t = np.asarray(timestamps, dtype=np.float64)
    idx = np.searchsorted(np.asarray(times, dtype=np.float64), t + TIME_EPS, side="right") - 1
    return np.clip(idx, 0, len(times) - 1).astype(np.int64)

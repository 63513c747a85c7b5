"""Opening a recording safely: allowed containers, its video stream, canonical extensions, errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from biovl_core.device import optional_import
from biovl_core.errors import VideoError
from biovl_core.files import sha256_file

if TYPE_CHECKING:
    import av.container
    import av.stream
    import av.video.frame


TIME_EPS = 1e-6
"""Tolerance (seconds) when comparing a timestamp to a frame time, shared by all decoders."""


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


AV_HINT = "pip install av"


def canonical_extension(container: str) -> str:
    """``.mp4``, ``.mkv``, ``.webm``, ``.avi`` or ``.ts`` for an FFmpeg demuxer name."""
    names = container.split(",")
    if "webm" in names and "matroska" not in names:
        return ".webm"
    for name in names:
        if name in CANONICAL_EXTENSIONS:
            return CANONICAL_EXTENSIONS[name]
    raise ValueError(f"container {container!r} is not one of the allowed {ALLOWED_DEMUXERS}")


def video_error(path: str | Path, problem: str, fix: str) -> VideoError:
    """A VideoError naming the file, the problem and what to do."""
    return VideoError(f"{path}: {problem}. {fix}")


def check_file(path: str | Path) -> Path:
    """The path as a Path, or a VideoError if it is missing, a folder or empty."""
    p = Path(path)
    if not p.exists():
        raise video_error(p, "video file not found", "Check the path and that the upload finished")
    if p.is_dir():
        raise video_error(p, "is a folder, not a video file", "Pass the video file inside it")
    if p.stat().st_size == 0:
        raise video_error(p, "is empty (0 bytes)", "Re-copy or re-upload the recording")
    return p


def open_container(path: Path, fileobj: BinaryIO | None = None) -> av.container.InputContainer:
    """Open a media file with PyAV (through ``fileobj`` when given, e.g. a byte-counting file),
    turning FFmpeg errors into a VideoError."""
    av = optional_import("av", AV_HINT)
    try:
        return av.open(
            fileobj if fileobj is not None else str(path),
            mode="r",
            container_options=dict(OPEN_OPTIONS),
            metadata_errors="replace",
        )
    except av.error.ArgumentError as exc:
        raise video_error(
            path,
            f"is not in an accepted container ({exc.strerror}); accepted: MP4/MOV, MKV/WebM, AVI, "
            "MPEG-TS (playlists, concat lists and image sequences are refused)",
            "Upload the video file as the camera recorded it, or re-mux it: "
            "`ffmpeg -i IN -c copy OUT.mp4`",
        ) from exc
    except av.error.InvalidDataError as exc:
        raise video_error(
            path,
            f"cannot be read as a video ({exc.strerror}): it is not a video file, or it is truncated "
            "(an MP4 whose recording or copy was interrupted has no index)",
            "Upload the complete MP4/MOV/MKV file as recorded by the camera",
        ) from exc
    except av.error.PermissionError as exc:
        raise video_error(
            path, "cannot be opened: permission denied", "Make the file readable"
        ) from exc
    except av.error.FFmpegError as exc:
        raise video_error(
            path, f"cannot be opened by FFmpeg ({exc})", "Check that it is a video file"
        ) from exc


def video_stream(container: av.container.InputContainer, path: Path) -> av.stream.Stream:
    """The first video stream, or a VideoError saying what the file holds instead."""
    if not container.streams.video:
        found = (
            ", ".join(
                f"{s.type} ({s.codec_context.name if s.codec_context else '?'})"
                for s in container.streams
            )
            or "none"
        )
        raise video_error(
            path,
            f"has no video stream (streams found: {found})",
            "Provide a video recording, not an audio-only or data file",
        )
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise video_error(
            path,
            "uses a video codec this FFmpeg build does not know (no decoder for its codec tag)",
            "Re-encode it to H.264, e.g. `ffmpeg -i IN -c:v libx264 -crf 18 OUT.mp4`",
        )
    return stream


def as_timestamps(timestamps: np.ndarray) -> np.ndarray:
    """Validate sample timestamps: a finite float array [N, k]."""
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 2:
        raise ValueError(
            f"timestamps must be a 2-D array [segments, frames_per_segment], got shape {ts.shape}"
        )
    if not np.all(np.isfinite(ts)):
        raise ValueError("timestamps contain NaN or infinity")
    return ts


def video_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes, read in chunks (the archive's content key)."""
    return sha256_file(check_file(path), chunk)

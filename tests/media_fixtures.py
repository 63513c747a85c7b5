"""Small media files for hostile-input tests: H.264 video with lying timestamps, long audio, or
no video at all (written with PyAV, skipped where it is missing)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def encode_video(
    path: Path,
    *,
    fmt: str | None = None,
    seconds: float = 2.0,
    fps: int = 10,
    audio_seconds: float = 0.0,
    pts_ms: list[int] | None = None,
) -> Path:
    """A small H.264 video (optionally with a silent AAC track, or frames at given ms);
    ``seconds=0`` and no ``pts_ms`` writes the audio track alone."""
    av = pytest.importorskip("av")
    times = (
        pts_ms if pts_ms is not None else [int(i * 1000 / fps) for i in range(int(seconds * fps))]
    )
    with av.open(str(path), "w", format=fmt) as c:
        v = c.add_stream("libx264", rate=fps) if times else None
        a = c.add_stream("aac", rate=48000) if audio_seconds else None
        if v is not None:
            _write_video(c, v, times)
        if a is not None:
            _write_silence(c, a, audio_seconds)
    return path


def _write_video(container: Any, stream: Any, times_ms: list[int]) -> None:
    """64x64 frames shown at ``times_ms``, each a different grey."""
    av = pytest.importorskip("av")
    stream.width = stream.height = 64
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = Fraction(1, 1000)
    for i, t in enumerate(times_ms):
        frame = av.VideoFrame.from_ndarray(
            np.full((64, 64, 3), i * 40 % 255, np.uint8), format="rgb24"
        )
        frame.pts = t
        frame.time_base = Fraction(1, 1000)
        for p in stream.encode(frame):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)


def _write_silence(container: Any, stream: Any, seconds: float) -> None:
    """``seconds`` of mono silence at 48 kHz."""
    av = pytest.importorskip("av")
    n = 0
    while n < seconds * 48000:
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = 48000, n
        for p in stream.encode(frame):
            container.mux(p)
        n += 1024
    for p in stream.encode():
        container.mux(p)

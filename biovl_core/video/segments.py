"""Where a recording's segments lie and which timestamps stand for each (SPEC.md "Frames")."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from biovl_core.video.info import VideoInfo

if TYPE_CHECKING:
    pass


MIN_TAIL_SECONDS = 0.5
"""A trailing remainder shorter than this does not get a segment of its own."""


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

"""Where a recording's segments lie and which timestamps stand for each (SPEC.md "Frames").

The sampling rule is decided here, once, from the keyframe times of the container's index,
so every decoder just decodes the timestamps it is given:

- ``"keyframe"`` (the default): each sample time (a segment's middle, or the centre of one of
  its k sub-intervals) moves to the nearest keyframe when one lies within the tolerance (and
  within half the sampling interval, so a sample never leaves its sub-interval); decoders
  decode such a keyframe alone. A sample with no keyframe that close keeps its exact time.
- ``"exact"``: every sample at its exact time (the frame shown then, decoded from the
  keyframe before it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biovl_core.video.container import TIME_EPS
from biovl_core.video.index import container_index
from biovl_core.video.info import VideoInfo, frame_index_at

MIN_TAIL_SECONDS = 0.5
"""A trailing remainder shorter than this does not get a segment of its own."""

SAMPLING_RULES = ("keyframe", "exact")


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


def segment_bounds(
    info_or_duration: VideoInfo | float, segment_seconds: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) float64 [N]: segment i covers [i*S, min((i+1)*S, duration)), the last
    one stretched over a dropped sliver."""
    duration = (
        info_or_duration.duration_s
        if isinstance(info_or_duration, VideoInfo)
        else float(info_or_duration)
    )
    n = segment_count(duration, segment_seconds)
    starts = np.arange(n, dtype=np.float64) * segment_seconds
    ends = np.minimum(starts + segment_seconds, duration)
    ends[-1] = duration if n * segment_seconds > duration else ends[-1]
    return starts, ends


def segment_timestamps(
    info_or_duration: VideoInfo | float,
    segment_seconds: float = 5.0,
    frames_per_segment: int = 1,
) -> np.ndarray:
    """float64 [N, k] exact sample times: segment i covers [i*S, min((i+1)*S, duration)).

    k = 1 gives each segment's middle; k > 1 the centers of k equal sub-intervals.
    """
    if frames_per_segment < 1:
        raise ValueError(f"frames_per_segment must be >= 1, got {frames_per_segment}")
    starts, ends = segment_bounds(info_or_duration, segment_seconds)
    frac = (np.arange(frames_per_segment, dtype=np.float64) + 0.5) / frames_per_segment
    return starts[:, None] + (ends - starts)[:, None] * frac[None, :]


@dataclass(frozen=True)
class SamplePlan:
    """Which frame stands for each sample of each segment, and where it lies."""

    timestamps: np.ndarray  # float64 [N, k]: what the decoder is asked for
    frame_times: np.ndarray  # float64 [N, k]: presentation time of the frame shown then
    on_keyframe: np.ndarray  # bool [N, k]: the sample is a keyframe, decoded alone
    exact: np.ndarray  # float64 [N, k]: the exact sample times the rule started from
    rule: str

    @property
    def offsets(self) -> np.ndarray:
        """float64 [N, k]: how far each embedded frame lies from its exact sample time (s)."""
        return self.frame_times - self.exact

    def frame_times_lists(self) -> list[list[float]]:
        """One list of seconds per segment (the alignment JSON's ``frame_times``)."""
        return [[round(float(t), 6) for t in row] for row in self.frame_times]


def check_sampling(rule: str, tolerance_s: float) -> None:
    """A ValueError naming the setting when the rule or the tolerance is not valid."""
    if rule not in SAMPLING_RULES:
        raise ValueError(f"sampling {rule!r} is not one of {', '.join(SAMPLING_RULES)}")
    if not tolerance_s >= 0:
        raise ValueError(f"keyframe_tolerance_s must be >= 0 seconds, got {tolerance_s}")


def sample_plan(
    info_or_duration: VideoInfo | float,
    segment_seconds: float = 5.0,
    frames_per_segment: int = 1,
    *,
    rule: str = "keyframe",
    tolerance_s: float = 1.0,
    keyframe_times: np.ndarray | None = None,
    frame_times: np.ndarray | None = None,
) -> SamplePlan:
    """The sample plan of a recording under ``rule`` (see the module docstring).

    ``keyframe_times``: sorted keyframe presentation times (s); without them every sample is
    exact. ``frame_times``: every frame's time where the container lists them, to report the
    time of the frame an exact sample shows (else the sample time itself is reported).
    """
    check_sampling(rule, tolerance_s)
    exact = segment_timestamps(info_or_duration, segment_seconds, frames_per_segment)
    chosen = exact.copy()
    on_key = np.zeros(exact.shape, dtype=bool)
    keys = np.asarray(keyframe_times if keyframe_times is not None else [], dtype=np.float64)
    if rule == "keyframe" and len(keys):
        n, k = exact.shape
        starts, ends = segment_bounds(info_or_duration, segment_seconds)
        half = np.repeat((ends - starts) / (2 * k), k)  # a sample stays in its sub-interval
        reach = np.minimum(tolerance_s, half)
        flat = exact.ravel()
        right = np.clip(np.searchsorted(keys, flat), 0, len(keys) - 1)
        left = np.clip(right - 1, 0, len(keys) - 1)
        pick = np.where(np.abs(keys[left] - flat) <= np.abs(keys[right] - flat), left, right)
        near = keys[pick]
        ok = np.abs(near - flat) <= reach + TIME_EPS
        chosen = np.where(ok, near, flat).reshape(n, k)
        on_key = ok.reshape(n, k)
    shown = chosen.copy()
    if frame_times is not None and len(frame_times):
        times = np.asarray(frame_times, dtype=np.float64)
        shown = np.where(on_key, chosen, times[frame_index_at(times, chosen)])
    return SamplePlan(chosen, shown, on_key, exact, rule)


def recording_plan(
    path: str | Path,
    info: VideoInfo,
    segment_seconds: float = 5.0,
    frames_per_segment: int = 1,
    *,
    rule: str = "keyframe",
    tolerance_s: float = 1.0,
) -> SamplePlan:
    """`sample_plan` of a file, from its container index (read once per process)."""
    index = container_index(path)
    return sample_plan(
        info,
        segment_seconds,
        frames_per_segment,
        rule=rule,
        tolerance_s=tolerance_s,
        keyframe_times=index.keyframe_times,
        frame_times=index.frame_times,
    )

"""Camera-like recordings: 1080p H.264 High profile with B-frames, a 0.5-1 s GOP, 10-40 Mbps.

What a head camera writes, so decoding benchmarks and tests see the real cost: large
keyframes, B-frame reordering, short GOPs and (optionally) variable frame rate. The bitrate
is real, not padding: every frame carries fresh sensor grain (two shifted noise planes mixed,
so the encoder cannot predict it from earlier frames), texture, camera shake and a moving
object, and the rate control holds the requested bitrate (libx264 through PyAV).
Each frame still carries the frame counter of `biovl_core.synthetic.video`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biovl_core.synthetic.video import Scene, SyntheticVideo, write_video

CAMERA_SIZE = (1920, 1080)
CAMERA_FPS = 30.0


@dataclass(frozen=True)
class CameraProfile:
    """How a head camera encodes: GOP length, bitrate, B-frames, frame-rate regularity."""

    gop_s: float = 0.5  # seconds between keyframes (0.5-1 s on head and action cameras)
    bitrate_mbps: float = 20.0  # 10-40 Mbps
    bframes: int = 3
    grain: float = 14.0  # std of the per-frame sensor grain, grey levels
    variable_frame_rate: bool = False

    def x264_params(self, fps: float) -> str:
        """libx264 settings: fixed GOP (no scene cuts), B-frames, constant-ish bitrate."""
        keyint = max(1, int(round(self.gop_s * fps)))
        kbps = int(self.bitrate_mbps * 1000)
        return (
            f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={self.bframes}:"
            f"bitrate={kbps}:vbv-maxrate={kbps}:vbv-bufsize={kbps}:nal-hrd=none"
        )


def write_camera_video(
    path: str | Path,
    duration_s: float,
    profile: CameraProfile | None = None,
    fps: float = CAMERA_FPS,
    size: tuple[int, int] = CAMERA_SIZE,
    scenes: Sequence[Scene] | None = None,
    seed: int = 0,
) -> SyntheticVideo:
    """Write a camera-like MP4 (H.264 High, B-frames); small `size` and `duration_s` for tests."""
    profile = profile or CameraProfile()
    if not 0 < profile.gop_s:
        raise ValueError(f"gop_s must be positive, got {profile.gop_s}")
    return write_video(
        path,
        duration_s,
        fps=fps,
        size=size,
        scenes=scenes,
        variable_frame_rate=profile.variable_frame_rate,
        gop=max(1, int(round(profile.gop_s * fps))),
        preset="superfast",
        motion=1.0,
        noise=4.0,
        grain=profile.grain,
        x264_params=profile.x264_params(fps),
        profile="high",
        seed=seed,
    )


def keyframe_times(path: str | Path) -> np.ndarray:
    """Presentation times (s from the first frame) of the keyframes, by demuxing (for tests)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        tb = float(stream.time_base)
        pts = [p.pts for p in container.demux(stream) if p.size and p.is_keyframe]
    return (np.sort(np.asarray(pts, dtype=np.int64)) - start).astype(np.float64) * tb

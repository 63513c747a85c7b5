"""Benchmark recordings, built once and cached: the 720p synthetic recording, camera-like 1080p
files (H.264 High, B-frames, short GOP, ~20 Mbps) and single-keyframe MPEG-TS files.

Long files are one encoded clip repeated by packet copy (decoding cost is that of a fresh
encode), so a frame's counter is its index modulo the clip's frame count.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from biovl_core.synthetic import write_video
from biovl_core.synthetic.camera import CameraProfile, write_camera_video

CLIP_S = 60.0
FPS = 30
SIZE = (1280, 720)
CAMERA_CLIP_S = 20.0
CAMERA_PROFILE = CameraProfile(gop_s=0.6, bitrate_mbps=20.0)
"""The camera-like benchmark file: a 0.6 s GOP (18 frames, so keyframes do not line up with
segment middles, as on a camera whose recording starts anywhere), 20 Mbps, 3 B-frames."""


def cache_dir() -> Path:
    """Where benchmark videos are kept between runs ($BIOVL_BENCH_CACHE, else ~/.cache/biovl/bench)."""
    root = os.environ.get("BIOVL_BENCH_CACHE") or Path.home() / ".cache" / "biovl" / "bench"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def repeat_clip(clip: Path, out: Path, repeats: int) -> None:
    """Write `clip` `repeats` times back to back by copying packets (no re-encode)."""
    import av

    with av.open(str(clip)) as probe_src:
        period = probe_src.streams.video[0].duration
    with av.open(str(out), "w") as dst:
        ost = None
        for r in range(repeats):
            with av.open(str(clip)) as src:
                ist = src.streams.video[0]
                if ost is None:
                    ost = dst.add_stream_from_template(ist)
                    ost.time_base = ist.time_base
                for packet in src.demux(ist):
                    if not packet.size:
                        continue
                    packet.pts += r * period
                    packet.dts += r * period
                    packet.stream = ost
                    dst.mux(packet)


def _built(path: Path, what: str, build) -> Path:  # noqa: ANN001 - a zero-argument writer
    """`path`, written by `build(tmp_path)` on first use (announced, timed)."""
    if path.exists():
        return path
    print(f"building {what} once (cached in {path.parent}) ...", flush=True)
    start = time.perf_counter()
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    build(tmp)
    tmp.replace(path)
    print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return path


def bench_video(
    minutes: float,
    directory: Path | None = None,
    size: tuple[int, int] = SIZE,
    clip_s: float = CLIP_S,
) -> Path:
    """The cached 720p synthetic recording of `minutes` minutes (30 fps, 1 s GOP, B-frames)."""
    directory = directory or cache_dir()
    tag = f"{size[1]}p" + ("" if clip_s == CLIP_S else f"_c{clip_s:g}")
    scenes = [(a, a + 8.0, i + 1) for i, a in enumerate(np.arange(4.0, clip_s - 8.0, 12.0))]
    clip = _built(
        directory / f"bench_{size[1]}p_clip{clip_s:g}.mp4",
        f"a {clip_s:.0f} s {size[1]}p clip",
        lambda p: write_video(
            p, clip_s, fps=FPS, size=size, scenes=scenes, gop=FPS, motion=0.3, noise=0.0
        ),
    )
    repeats = max(1, int(round(minutes * 60 / clip_s)))
    return _built(
        directory / f"bench_{tag}_{minutes:g}min.mp4",
        f"the {minutes:g} min recording",
        lambda p: repeat_clip(clip, p, repeats),
    )


def camera_video(
    minutes: float,
    directory: Path | None = None,
    profile: CameraProfile = CAMERA_PROFILE,
    clip_s: float = CAMERA_CLIP_S,
) -> Path:
    """The cached camera-like 1080p recording of `minutes` minutes (`CAMERA_PROFILE`)."""
    directory = directory or cache_dir()
    tag = f"g{profile.gop_s:g}_{profile.bitrate_mbps:g}M" + (
        "_vfr" if profile.variable_frame_rate else ""
    )
    scenes = [(a, a + 6.0, i + 1) for i, a in enumerate(np.arange(2.0, clip_s - 6.0, 8.0))]
    clip = _built(
        directory / f"camera_1080p_{tag}_clip{clip_s:g}.mp4",
        f"a {clip_s:.0f} s camera-like 1080p clip ({tag})",
        lambda p: write_camera_video(p, clip_s, profile, scenes=scenes),
    )
    repeats = max(1, int(round(minutes * 60 / clip_s)))
    return _built(
        directory / f"camera_1080p_{tag}_{minutes:g}min.mp4",
        f"the {minutes:g} min camera-like recording",
        lambda p: repeat_clip(clip, p, repeats),
    )


def single_keyframe_ts(seconds: float, directory: Path | None = None) -> Path:
    """A cached MPEG-TS of `seconds` seconds with one keyframe (320x240, 30 fps): the
    hostile case where every seek lands back at the start."""
    directory = directory or cache_dir()
    return _built(
        directory / f"one_keyframe_{seconds:g}s.ts",
        f"a {seconds:g} s single-keyframe MPEG-TS",
        lambda p: write_video(
            p,
            seconds,
            fps=FPS,
            size=(320, 240),
            gop=10**6,
            motion=0.5,
            noise=0.0,
            x264_params="scenecut=0",
        ),
    )

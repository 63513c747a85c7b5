"""Decoding benchmark: seconds of video per wall second, our sampler against OpenCV.

``python -m biovl_core.bench decode [--quick]`` decodes a synthetic 10-minute (``--quick``:
2-minute) 1280x720 H.264 recording (30 fps, a keyframe every second, B-frames, like a head
camera's) three ways, side by side in one run: the PyAV sampler with the middle frame of
each 5 s segment, the PyAV sampler with 8 frames per segment, and OpenCV reading every
frame (``cv2.VideoCapture`` loop, the naive baseline). The video is built once from a
60 s encoded clip repeated by packet copy (decoding cost is the same as a fresh
encode) and cached. ``gpu_check()`` compares DALI with PyAV on the GPU machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biovl_core.synthetic import read_frame_counter, write_video
from biovl_core.video import (
    PyAVSampler,
    VideoInfo,
    frame_index_at,
    frame_times,
    probe,
    segment_timestamps,
)

CLIP_S = 60.0
FPS = 30
SIZE = (1280, 720)
GPU_TARGET_X = 500.0
MAX_MEAN_ABS_DIFF = 6.0
"""Grey levels DALI's frames may differ from PyAV's on average (both resize the same frame,
with different filters)."""


def cache_dir() -> Path:
    """Where benchmark videos are kept between runs ($BIOVL_BENCH_CACHE, else ~/.cache/biovl/bench)."""
    root = os.environ.get("BIOVL_BENCH_CACHE") or Path.home() / ".cache" / "biovl" / "bench"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _repeat_clip(clip: Path, out: Path, repeats: int) -> None:
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


def bench_video(
    minutes: float,
    directory: Path | None = None,
    size: tuple[int, int] = SIZE,
    clip_s: float = CLIP_S,
) -> Path:
    """The cached benchmark recording of `minutes` minutes at `size` (built on first use).

    A `clip_s` second clip is encoded once and repeated by packet copy, so a frame's counter
    is its index modulo the clip's frame count.
    """
    directory = directory or cache_dir()
    tag = f"{size[1]}p" + ("" if clip_s == CLIP_S else f"_c{clip_s:g}")
    path = directory / f"bench_{tag}_{minutes:g}min.mp4"
    if path.exists():
        return path
    clip = directory / f"bench_{size[1]}p_clip{clip_s:g}.mp4"
    if not clip.exists():
        print(
            f"encoding a {clip_s:.0f} s {size[1]}p clip once (cached in {directory}) ...",
            flush=True,
        )
        start = time.perf_counter()
        scenes = [(a, a + 8.0, i + 1) for i, a in enumerate(np.arange(4.0, clip_s - 8.0, 12.0))]
        tmp = clip.with_suffix(".partial.mp4")
        write_video(tmp, clip_s, fps=FPS, size=size, scenes=scenes, gop=FPS, motion=0.3, noise=0.0)
        tmp.replace(clip)
        print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    tmp = path.with_suffix(".partial.mp4")
    _repeat_clip(clip, tmp, max(1, int(round(minutes * 60 / clip_s))))
    tmp.replace(path)
    return path


def _time_sampler(sampler: PyAVSampler, path: Path, ts: np.ndarray, size: int) -> float:
    """Wall seconds to sample `ts` in bounded-memory batches."""
    start = time.perf_counter()
    for _ in sampler.iter_batches(path, ts, size=size, batch_segments=64):
        pass
    return time.perf_counter() - start


def _time_opencv(path: Path) -> tuple[float, int]:
    """Wall seconds and frame count for OpenCV decoding every frame."""
    import cv2

    start = time.perf_counter()
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    return time.perf_counter() - start, count


def _row(name: str, wall: float, info: VideoInfo, baseline: float | None, note: str = "") -> str:
    """One table line: wall seconds, seconds of video per wall second, ratio to OpenCV."""
    ratio = f"{baseline / wall:9.1f}x" if baseline else f"{'-':>10s}"
    return f"  {name:<36s} {wall:8.2f} {info.duration_s / wall:12.1f}x {ratio}  {note}"


def main(argv: Sequence[str] | None = None) -> None:
    """Run the decoding benchmark and print one table."""
    parser = argparse.ArgumentParser(
        prog="python -m biovl_core.bench decode", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="2-minute video instead of 10")
    parser.add_argument(
        "--minutes", type=float, default=None, help="video length (overrides --quick)"
    )
    parser.add_argument("--size", type=int, default=224, help="crop size in pixels")
    parser.add_argument("--segment", type=float, default=5.0, help="segment length in seconds")
    parser.add_argument(
        "--frames", type=int, default=8, help="frames per segment for the multi-frame run"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="where the benchmark video is cached"
    )
    args = parser.parse_args(list(argv or []))
    minutes = args.minutes or (2.0 if args.quick else 10.0)
    path = bench_video(minutes, args.cache_dir)
    info = probe(path)
    print(
        f"decode: {info.duration_s / 60:.1f} min {info.width}x{info.height} {info.codec}, {info.avg_fps:g} fps, "
        f"{info.num_frames} frames; {args.size} px crops of {args.segment:g} s segments ({path})"
    )
    ours = {}
    sampler = PyAVSampler()
    for k in (1, args.frames):
        ts = segment_timestamps(info, args.segment, k)
        ours[k] = (_time_sampler(sampler, path, ts, args.size), sampler.last_stats.frames_decoded)
    try:
        cv_wall, cv_frames = _time_opencv(path)
    except ImportError:
        cv_wall, cv_frames = None, 0
    print(f"  {'method':<36s} {'wall s':>8s} {'video s/wall s':>13s} {'vs OpenCV':>10s}")
    if cv_wall is not None:
        print(
            _row(
                "OpenCV, every frame (baseline)",
                cv_wall,
                info,
                cv_wall,
                f"{cv_frames} frames decoded",
            )
        )
    else:
        print("  OpenCV baseline skipped: pip install opencv-python-headless")
    for k, (wall, decoded) in ours.items():
        name = f"PyAV sampler, {k} frame{'s' if k > 1 else ''}/segment"
        print(_row(name, wall, info, cv_wall, f"{decoded} of {info.num_frames} frames decoded"))


def _counters(frames: np.ndarray) -> np.ndarray:
    """Frame counters painted in sampled frames [N, k, S, S, 3]."""
    return np.array([[read_frame_counter(f) for f in row] for row in frames])


def same_frames_check(dali: Any, codec: str, seconds: float = 8.0, size: int = 224) -> None:
    """A DALI sampler against PyAV on generated videos of `codec` (constant and variable frame
    rate, rotated): the same frames by their counters, pixels within MAX_MEAN_ABS_DIFF."""
    cpu = PyAVSampler()
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in (
            ("cfr", {}),
            ("vfr", {"variable_frame_rate": True}),
            ("rot90", {"rotation": 90}),
        ):
            v = write_video(
                Path(tmp) / f"{name}.mp4", seconds, fps=FPS, size=(320, 240), codec=codec, **options
            )
            ts = segment_timestamps(probe(v.path), 0.5, 2)
            start = time.perf_counter()
            got = np.asarray(dali.sample(v.path, ts, size=size).cpu())
            t_dali = time.perf_counter() - start
            ref = cpu.sample(v.path, ts, size=size)
            expected = frame_index_at(v.frame_times, ts)
            assert np.array_equal(_counters(got), expected), (
                f"DALI ({dali.backend}) frames on {name}"
            )
            mad = float(np.abs(got.astype(np.int16) - ref.astype(np.int16)).mean())
            assert mad < MAX_MEAN_ABS_DIFF, (
                f"{name}: DALI and PyAV pixels differ by {mad:.2f} grey levels"
            )
            print(
                f"{name}: DALI ({dali.backend} backend) = PyAV frames on {ts.size} samples, mean "
                f"|diff| {mad:.2f} grey levels, {dali.last_bytes_read / v.path.stat().st_size:.0%} "
                f"of the file read, {t_dali:.2f} s"
            )


def dali_cpu_check(size: int = 224) -> None:
    """No GPU needed: the DALI sampler's pipeline on DALI's CPU backend against PyAV, on VP9.

    Raises ImportError (reported as SKIP) when DALI is not installed, AssertionError on a mismatch.
    """
    from biovl_core.video import DALISampler

    same_frames_check(DALISampler(backend="cpu"), "vp9", size=size)


def gpu_check(minutes: float = 2.0, size: int = 224) -> None:
    """On a GPU: DALI picks the same frames as PyAV (frame counters, pixels close) and its speed.

    Raises ImportError (reported as SKIP) when DALI is not installed, AssertionError on a mismatch.
    """
    import torch

    from biovl_core.video import DALISampler

    gpu, cpu = DALISampler(), PyAVSampler()
    same_frames_check(gpu, "h264", seconds=20.0, size=size)
    path = bench_video(minutes)
    info = probe(path)
    clip_frames = int(round(CLIP_S * FPS))
    times = frame_times(path)
    print(
        f"{info.duration_s / 60:.1f} min {info.width}x{info.height} {info.codec}; {size} px crops of 5 s segments"
    )
    for k in (1, 8):
        ts = segment_timestamps(info, 5.0, k)
        gpu.sample(path, ts[:2], size=size)  # builds the pipeline
        torch.cuda.synchronize()
        start = time.perf_counter()
        g = gpu.sample(path, ts, size=size)
        torch.cuda.synchronize()
        t_gpu = time.perf_counter() - start
        start = time.perf_counter()
        c = cpu.sample(path, ts, size=size)
        t_cpu = time.perf_counter() - start
        g_np = g.cpu().numpy()
        read = gpu.last_bytes_read / info.size_bytes
        expected = frame_index_at(times, ts) % clip_frames
        assert np.array_equal(_counters(c), expected), "PyAV picked unexpected frames"
        assert np.array_equal(_counters(g_np), expected), "DALI and PyAV picked different frames"
        mad = float(np.abs(g_np.astype(np.int16) - c.astype(np.int16)).mean())
        assert mad < MAX_MEAN_ABS_DIFF, (
            f"DALI and PyAV pixels differ by {mad:.2f} grey levels on average"
        )
        x_gpu, x_cpu = info.duration_s / t_gpu, info.duration_s / t_cpu
        verdict = "meets" if x_gpu >= GPU_TARGET_X else "BELOW"
        print(
            f"k={k}: same frames, mean |DALI - PyAV| = {mad:.2f}; DALI {x_gpu:,.0f}x real time "
            f"({verdict} the {GPU_TARGET_X:.0f}x target) vs PyAV {x_cpu:,.0f}x on this machine's CPU; "
            f"DALI read {read:.0%} of the file's bytes"
        )

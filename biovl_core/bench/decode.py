"""Decoding benchmark: what sampling costs, side by side in one run.

``python -m biovl_core.bench decode [--quick]``:

1. A camera-like 1080p recording (H.264 High, B-frames, 0.6 s GOP, 20 Mbps; 5 min, ``--quick``
   1 min from a 6 s clip) sampled at one frame per 5 s segment three ways: OpenCV decoding every frame (the
   naive baseline), the PyAV sampler on exact middle frames, and the default rule (the keyframe
   nearest each middle within 1 s, decoded alone). Per row: wall time, seconds of video per
   wall second, frames decoded per sample, bytes read per sample, and for the default rule how
   far the embedded frames lie from the middles.
2. Single-keyframe MPEG-TS files of two lengths (150 s and 600 s; ``--quick`` 30 s and 120 s),
   sampled like the pipeline does: frames decoded and wall time must grow linearly.

Inputs are built once and cached (`biovl_core.bench.videos`). ``gpu_check()`` compares DALI
with PyAV on the GPU machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biovl_core.bench.gpu_proof import NvdecMonitor, require_bytes_read, require_no_fallbacks
from biovl_core.bench.videos import (  # noqa: F401 - re-exported for scripts/gpu_e2e.py
    CAMERA_PROFILE,
    CLIP_S,
    FPS,
    SIZE,
    bench_video,
    cache_dir,
    camera_video,
    single_keyframe_ts,
)
from biovl_core.synthetic import read_frame_counter, write_video
from biovl_core.video import (
    PyAVSampler,
    container_index,
    frame_index_at,
    frame_times,
    probe,
    recording_plan,
    segment_timestamps,
)

GPU_TARGET_X = 500.0
MAX_MEAN_ABS_DIFF = 6.0
"""Grey levels DALI's frames may differ from PyAV's on average (both resize the same frame,
with different filters)."""
TARGET_SPEEDUP_X = 4.0
TARGET_FRAMES_PER_SAMPLE = 1.2


def _time_sampler(sampler: PyAVSampler, path: Path, ts: np.ndarray, size: int) -> float:
    """Wall seconds to sample `ts` in bounded-memory batches (as the pipeline does)."""
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


HEADER = (
    f"  {'method':<34s} {'wall s':>7s} {'video s/s':>10s} {'frames/sample':>14s} "
    f"{'bytes/sample':>13s}  note"
)


def _row(name: str, wall: float, duration: float, fps: float, bps: float, note: str) -> str:
    """One table line."""
    per = f"{fps:14.2f}" if fps else f"{'-':>14s}"
    b = f"{bps / 1e3:11.0f}kB" if bps else f"{'-':>13s}"
    return f"  {name:<34s} {wall:7.2f} {duration / wall:9.1f}x {per} {b}  {note}"


def camera_rows(path: Path, segment: float, size: int, opencv: bool = True) -> dict[str, Any]:
    """The camera-file table: OpenCV, exact, default; returns the figures it printed."""
    info = probe(path)
    index = container_index(path)
    print(
        f"decode: camera-like {info.width}x{info.height} {info.codec} High, B-frames, "
        f"{CAMERA_PROFILE.gop_s:g} s GOP, {info.size_bytes * 8 / info.duration_s / 1e6:.0f} Mbps, "
        f"{info.duration_s / 60:.1f} min, {info.num_frames} frames; {size} px crops of "
        f"{segment:g} s segments ({path})"
    )
    print(
        f"  index: {index.source}, {len(index.keyframe_times)} keyframes, {index.bytes_read} bytes "
        f"read ({index.bytes_read / info.size_bytes:.3%} of the file)"
    )
    print(HEADER)
    out: dict[str, Any] = {}
    if opencv:
        try:
            cv_wall, cv_frames = _time_opencv(path)
            print(
                _row(
                    "OpenCV, every frame (baseline)",
                    cv_wall,
                    info.duration_s,
                    0,
                    0,
                    f"{cv_frames} frames decoded",
                )
            )
            out["opencv_s"] = cv_wall
        except ImportError:
            print("  OpenCV baseline skipped: pip install opencv-python-headless")
    for rule in ("exact", "keyframe"):
        plan = recording_plan(path, info, segment, 1, rule=rule, tolerance_s=1.0)
        sampler = PyAVSampler()
        wall = _time_sampler(sampler, path, plan.timestamps, size)
        st = sampler.last_stats
        off = np.abs(plan.offsets)
        note = f"{st.frames_decoded} frames for {st.samples} samples"
        if rule == "keyframe":
            note += (
                f"; {plan.on_keyframe.mean():.0%} on keyframes, offset from the middle mean "
                f"{off.mean():.2f} s, max {off.max():.2f} s"
            )
        name = "PyAV, exact middle frame" if rule == "exact" else "PyAV, default (keyframe +-1 s)"
        print(_row(name, wall, info.duration_s, st.frames_per_sample, st.bytes_per_sample, note))
        out[rule] = {
            "wall_s": wall,
            "frames_per_sample": st.frames_per_sample,
            "bytes_per_sample": st.bytes_per_sample,
            "offset_mean_s": float(off.mean()),
            "offset_max_s": float(off.max()),
        }
        sampler.close()
    x = out["exact"]["wall_s"] / out["keyframe"]["wall_s"]
    fps = out["keyframe"]["frames_per_sample"]
    print(
        f"  default vs exact: {x:.1f}x faster ({'meets' if x >= TARGET_SPEEDUP_X else 'BELOW'} the "
        f">= {TARGET_SPEEDUP_X:g}x target), {fps:.2f} frames per sample "
        f"({'meets' if fps <= TARGET_FRAMES_PER_SAMPLE else 'ABOVE'} the <= "
        f"{TARGET_FRAMES_PER_SAMPLE:g} target)"
    )
    out["speedup_x"] = x
    return out


def single_keyframe_rows(lengths: Sequence[float], segment: float, size: int) -> list[dict]:
    """Single-keyframe MPEG-TS of each length, sampled as the pipeline samples (default rule)."""
    print(
        f"single-keyframe MPEG-TS (no index: one demux scan, then forward only), "
        f"{segment:g} s segments, default rule"
    )
    print(
        f"  {'length':>7s} {'frames':>7s} {'samples':>8s} {'decoded':>8s} {'per frame':>9s} "
        f"{'index s':>8s} {'decode s':>9s}"
    )
    rows = []
    for seconds in lengths:
        path = single_keyframe_ts(seconds)
        info = probe(path)
        start = time.perf_counter()
        index = container_index(path)
        t_index = time.perf_counter() - start
        plan = recording_plan(path, info, segment, 1)
        sampler = PyAVSampler()
        wall = _time_sampler(sampler, path, plan.timestamps, size)
        st = sampler.last_stats
        frames = index.num_frames or info.num_frames
        print(
            f"  {seconds:6.0f}s {frames:7d} {st.samples:8d} {st.frames_decoded:8d} "
            f"{st.frames_decoded / frames:9.2f} {t_index:8.2f} {wall:9.2f}"
        )
        rows.append({"seconds": seconds, "decoded": st.frames_decoded, "wall_s": wall + t_index})
        sampler.close()
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(
            f"  {b['seconds'] / a['seconds']:.0f}x the length: {b['decoded'] / a['decoded']:.1f}x "
            f"the frames decoded, {b['wall_s'] / a['wall_s']:.1f}x the time (linear: about "
            f"{b['seconds'] / a['seconds']:.0f}x)"
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Run the decoding benchmark and print its tables."""
    parser = argparse.ArgumentParser(
        prog="python -m biovl_core.bench decode", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="shorter files (1 min; 30/120 s)")
    parser.add_argument("--minutes", type=float, default=None, help="camera-like file length")
    parser.add_argument("--size", type=int, default=224, help="crop size in pixels")
    parser.add_argument("--segment", type=float, default=5.0, help="segment length in seconds")
    parser.add_argument("--no-opencv", action="store_true", help="skip the OpenCV baseline")
    args = parser.parse_args(list(argv or []))
    minutes = args.minutes or (1.0 if args.quick else 5.0)
    clip_s = 6.0 if args.quick else None  # a short clip to encode on a fresh machine
    path = camera_video(minutes, clip_s=clip_s) if clip_s else camera_video(minutes)
    camera_rows(path, args.segment, args.size, opencv=not args.no_opencv)
    lengths = (30.0, 120.0) if args.quick else (150.0, 600.0)
    single_keyframe_rows(lengths, args.segment, args.size)


def _counters(frames: np.ndarray) -> np.ndarray:
    """Frame counters painted in sampled frames [N, k, S, S, 3]."""
    return np.array([[read_frame_counter(f) for f in row] for row in frames])


def same_frames_check(dali: Any, codec: str, seconds: float = 8.0, size: int = 224) -> None:
    """A DALI sampler against PyAV on generated videos of `codec` (constant and variable frame
    rate, rotated): the same frames by their counters, pixels within MAX_MEAN_ABS_DIFF, and
    DALI decoded them itself: no fallback to PyAV, file bytes read (else GpuProofError)."""
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
            fallbacks = dali.fallbacks
            got = np.asarray(dali.sample(v.path, ts, size=size).cpu())
            t_dali = time.perf_counter() - start
            require_no_fallbacks(dali, fallbacks, f"{name} ({codec})")
            read = require_bytes_read(dali, f"{name} ({codec})")
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
                f"|diff| {mad:.2f} grey levels, {read / v.path.stat().st_size:.0%} "
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
        fallbacks = gpu.fallbacks
        start = time.perf_counter()
        g = gpu.sample(path, ts, size=size)
        torch.cuda.synchronize()
        t_gpu = time.perf_counter() - start
        require_no_fallbacks(gpu, fallbacks, f"k={k}")
        require_bytes_read(gpu, f"k={k}")
        with NvdecMonitor() as nvdec:  # NVML missing: GpuProofError, the stage fails
            nvdec.busy_for(lambda ts=ts: gpu.sample(path, ts, size=size))
            torch.cuda.synchronize()
        nvdec.require_busy(f"DALI decode, k={k}")
        print(f"k={k}: {nvdec.summary()}")
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

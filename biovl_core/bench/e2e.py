"""End to end: seconds of video aligned per wall second, our pipeline against a naive one.

Both pipelines get the same generated 720p recording, the same protocol and the same
already-loaded model (ViT-B-32 with random weights: speed depends on the architecture, not
on the weight values). Naive = decode every frame with OpenCV, keep the middle frame of each
segment, embed one image at a time, plain-Python Needleman-Wunsch. Ours = the production
pipeline (`biovl_core.pipeline.align_video`): the default sampling rule (the keyframe nearest
each segment's middle, decoded alone), batched embedding overlapped with decoding, compiled
aligner.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from biovl_core.bench.align import python_dp
from biovl_core.bench.embed import WEIGHTS_NOTE, random_embedder
from biovl_core.bench.videos import bench_video
from biovl_core.config import PipelineConfig
from biovl_core.embed import Embedder
from biovl_core.pipeline import align_video
from biovl_core.protocol import Protocol
from biovl_core.video import probe

PROTOCOL = Protocol(
    title="PCR",
    steps=[
        "Add sterile distilled water.",
        "Add primer1.",
        "Add primer2.",
        "Add template.",
        "Add PrimeSTAR.",
        "Set in DNA engine.",
    ],
)


def _center_crop_rgb(bgr: np.ndarray, size: int) -> np.ndarray:
    """OpenCV BGR frame -> RGB, shorter side resized to ``size``, centre-cropped square."""
    import cv2

    h, w = bgr.shape[:2]
    scale = size / min(h, w)
    resized = cv2.resize(bgr, (max(size, round(w * scale)), max(size, round(h * scale))))
    y = (resized.shape[0] - size) // 2
    x = (resized.shape[1] - size) // 2
    return cv2.cvtColor(resized[y : y + size, x : x + size], cv2.COLOR_BGR2RGB)


def naive_pipeline(
    path: Path, embedder: Embedder, segment_seconds: float
) -> tuple[list[int], dict[str, float]]:
    """Decode all frames, embed one middle frame at a time, Python DP; labels and stage times."""
    import cv2

    times: dict[str, float] = {}
    start = time.perf_counter()
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames: list[np.ndarray] = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(_center_crop_rgb(frame, embedder.input_size))
    cap.release()
    times["decode"] = time.perf_counter() - start
    n = max(1, int(np.ceil(len(frames) / fps / segment_seconds)))
    middles = [min(len(frames) - 1, int(((i + 0.5) * segment_seconds) * fps)) for i in range(n)]
    start = time.perf_counter()
    video = np.concatenate([embedder.embed_frames(frames[m][None, None]) for m in middles])
    text = embedder.embed_texts(PROTOCOL.steps)
    times["embed"] = time.perf_counter() - start
    start = time.perf_counter()
    similarity = (text @ video.T).astype(np.float32)
    labels, _ = python_dp(similarity, np.full(n, -np.inf, dtype=np.float32))
    times["align"] = time.perf_counter() - start
    return labels, times


def main(argv: Sequence[str] | None = None) -> None:
    """Run both pipelines on the same recording and print seconds of video per wall second."""
    parser = argparse.ArgumentParser(prog="python -m biovl_core.bench e2e", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 2-minute video instead of 10")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args(list(argv or []))
    minutes = args.minutes or (2.0 if args.quick else 10.0)
    path = bench_video(minutes)
    duration = probe(path).duration_s
    embedder = random_embedder(args.model, "cpu", batch_size=32)
    cfg = PipelineConfig(model=args.model, device="cpu", batch_size=32, decoder="pyav")
    print(f"\nend to end: {minutes:g} min 1280x720 H.264, {args.model} ({WEIGHTS_NOTE}), CPU")
    align_video(path, PROTOCOL, cfg, embedder=embedder)  # warm-up: numba compile, thread pools
    start = time.perf_counter()
    ours = align_video(path, PROTOCOL, cfg, embedder=embedder)
    ours_wall = time.perf_counter() - start
    start = time.perf_counter()
    _, naive_times = naive_pipeline(path, embedder, cfg.segment_seconds)
    naive_wall = time.perf_counter() - start
    stages = ", ".join(
        f"{k} {v:.1f}s" for k, v in ours.timings.items() if k in ("decode", "embed_video", "align")
    )
    print(f"  {'pipeline':<10} {'wall s':>8} {'video s / wall s':>17}  stages")
    dec = ours.decode
    stages += f"; {dec.get('frames_decoded', 0):.0f} frames decoded for {dec.get('samples', 0):.0f}"
    print(f"  {'ours':<10} {ours_wall:8.2f} {duration / ours_wall:16.1f}x  {stages}")
    naive_stages = ", ".join(f"{k} {v:.1f}s" for k, v in naive_times.items())
    print(f"  {'naive':<10} {naive_wall:8.2f} {duration / naive_wall:16.1f}x  {naive_stages}")
    print(f"  ours / naive: {naive_wall / ours_wall:.1f}x (target >= 5x on a 2-core CPU)")

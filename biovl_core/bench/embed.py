"""Embedding benchmark: images per second at batch 1 vs batched, and ``gpu_check()`` (fp16 CUDA vs fp32 CPU).

Models run with random weights: throughput depends on the architecture, not on the weight
values, so the figures hold for the pretrained models too (the tables say so).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from biovl_core.bench import best_seconds
from biovl_core.config import PipelineConfig
from biovl_core.embed import Embedder, load_embedder

GPU_TARGET_IMAGES_PER_S = 5000.0
WEIGHTS_NOTE = "random init (speed depends on the architecture, not the weight values)"


@dataclass
class Row:
    """One measurement: a model at one batch size."""

    model: str
    batch: int
    images: int
    seconds: float

    @property
    def rate(self) -> float:
        """Images per second."""
        return self.images / self.seconds


def structured_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, 1, size, size, 3] images of coloured blocks (smooth like video, not noise)."""
    rng = np.random.default_rng(seed)
    blocks = 8 if size % 8 == 0 else 1
    coarse = rng.integers(0, 256, (n, 1, blocks, blocks, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, size // blocks, axis=2), size // blocks, axis=3)


def random_embedder(model: str, device: str, batch_size: int, embedder: str = "clip") -> Embedder:
    """A random-init embedder for timing, without the loud random-weights banner."""
    cfg = PipelineConfig(
        embedder=embedder,
        model=model,
        pretrained=None,
        device=device,
        batch_size=batch_size,
        allow_random_weights=True,
    )
    logger = logging.getLogger("biovl_core.embed")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return load_embedder(cfg)
    finally:
        logger.setLevel(level)


def measure(model: str, images: int, batch_sizes: Sequence[int], repeats: int) -> list[Row]:
    """CPU images/s of ``model`` embedding ``images`` frames at each batch size."""
    rows = []
    emb = random_embedder(model, "cpu", batch_sizes[0])
    frames = structured_frames(images, emb.input_size)
    for batch in batch_sizes:
        emb.batch_size = batch
        rows.append(
            Row(model, batch, images, best_seconds(lambda: emb.embed_frames(frames), repeats))
        )
    return rows


def format_table(rows: list[Row]) -> str:
    """Aligned text table with each rate's ratio to batch 1 of the same model."""
    lines = [f"{'model':<18} {'batch':>5} {'images/s':>10} {'vs batch 1':>10}"]
    for row in rows:
        base = next((r.rate for r in rows if r.model == row.model and r.batch == 1), row.rate)
        lines.append(f"{row.model:<18} {row.batch:>5} {row.rate:>10.1f} {row.rate / base:>9.2f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CPU embedding throughput, batch 1 vs batched, for the tiny test model and ViT-B-32."""
    parser = argparse.ArgumentParser(prog="python -m biovl_core.bench embed", description=__doc__)
    parser.add_argument("--models", default="biovl-tiny-clip,ViT-B-32")
    parser.add_argument("--batch-sizes", default="1,32,64")
    parser.add_argument("--images", type=int, default=64, help="images per timed run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="32 images, one repeat")
    args = parser.parse_args(argv)
    import torch

    images, repeats = (32, 1) if args.quick else (args.images, args.repeats)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    for model in args.models.split(","):
        rows += measure(model.strip(), images, batch_sizes, repeats)
    print(
        f"embedding (CPU, fp32, {torch.get_num_threads()} torch threads, {images} images "
        f"of each model's input size; weights: {WEIGHTS_NOTE})"
    )
    print(format_table(rows))
    return 0


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def centred_cosines(gpu: np.ndarray, cpu: np.ndarray) -> np.ndarray:
    """Row cosines after removing the CPU mean row: random-init models map all inputs close to
    one direction, so plain cosines near 1 would not show that the per-input parts agree."""
    mean = cpu.mean(axis=0, keepdims=True)
    return _cosines(gpu - mean, cpu - mean)


def gpu_check(images: int = 8192, cpu_images: int = 64) -> None:
    """ViT-B-32 fp16 CUDA throughput beside fp32 CPU, and same embeddings (cosine > 0.99).

    Also checks S3D (fp16 autocast) against the CPU. Raises AssertionError on disagreement;
    throughput is reported against the 5,000 images/s target, not asserted.
    """
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("gpu_check needs a CUDA GPU; none is visible to torch")
    steps = ["add sterile distilled water", "invert 4 times to mix", "centrifuge the tube"]

    gpu = random_embedder("ViT-B-32", "cuda", 512)
    cpu = random_embedder("ViT-B-32", "cpu", 32)
    frames = structured_frames(cpu_images, gpu.input_size, seed=1)
    gpu_emb, cpu_emb = gpu.embed_frames(frames), cpu.embed_frames(frames)
    cos, centred = _cosines(gpu_emb, cpu_emb), centred_cosines(gpu_emb, cpu_emb)
    between = cpu_emb @ cpu_emb.T
    gpu_text, cpu_text = gpu.embed_texts(steps), cpu.embed_texts(steps)
    cos_text = np.minimum(_cosines(gpu_text, cpu_text), centred_cosines(gpu_text, cpu_text))
    print(
        f"ViT-B-32 fp16 CUDA vs fp32 CPU, same random-init weights, {cpu_images} images: cosine "
        f"min {cos.min():.6f}, centred cosine min {centred.min():.6f} (cosine between different "
        f"images: mean {between[~np.eye(len(between), dtype=bool)].mean():.4f}); text cosine "
        f"(plain and centred) min {cos_text.min():.6f}"
    )
    assert cos.min() > 0.99, f"GPU and CPU image embeddings disagree (min cosine {cos.min():.4f})"
    assert centred.min() > 0.99, f"GPU and CPU per-image parts disagree ({centred.min():.4f})"
    assert cos_text.min() > 0.99, f"GPU and CPU text embeddings disagree ({cos_text.min():.4f})"

    host = structured_frames(images, gpu.input_size, seed=2)
    device_frames = torch.from_numpy(host).cuda()
    cpu_rate = cpu_images / best_seconds(lambda: cpu.embed_frames(frames), 1)
    print(f"weights: {WEIGHTS_NOTE}; {images} images of 224x224; CPU twin: {cpu_rate:.1f} images/s")
    best = 0.0
    for batch in (256, 512, 1024):
        gpu.batch_size = batch
        t_dev = best_seconds(lambda: gpu.embed_frames(device_frames), 2)
        t_host = best_seconds(lambda: gpu.embed_frames(host), 1)
        best = max(best, images / t_dev)
        print(
            f"  batch {batch:>5}: {images / t_dev:9.0f} images/s from GPU-resident uint8 (DALI), "
            f"{images / t_host:9.0f} images/s from host numpy; "
            f"{images / t_dev / cpu_rate:7.0f}x the CPU"
        )
    verdict = "met" if best >= GPU_TARGET_IMAGES_PER_S else "NOT met"
    print(f"best {best:.0f} images/s; target >= {GPU_TARGET_IMAGES_PER_S:.0f} images/s: {verdict}")

    s3d_gpu = random_embedder("s3d", "cuda", 64, embedder="s3d")
    s3d_cpu = random_embedder("s3d", "cpu", 64, embedder="s3d")
    k = s3d_gpu.frames_per_segment
    clips = np.repeat(structured_frames(2, s3d_gpu.input_size, seed=3), k, axis=1)
    clips[:, 1::2] //= 2
    clips = np.concatenate([clips, clips[::-1, ::-1]])
    s3d_gpu_emb, s3d_cpu_emb = s3d_gpu.embed_frames(clips), s3d_cpu.embed_frames(clips)
    cos_s3d = np.minimum(
        _cosines(s3d_gpu_emb, s3d_cpu_emb), centred_cosines(s3d_gpu_emb, s3d_cpu_emb)
    )
    gpu_text, cpu_text = s3d_gpu.embed_texts(steps), s3d_cpu.embed_texts(steps)
    cos_s3d_text = np.minimum(_cosines(gpu_text, cpu_text), centred_cosines(gpu_text, cpu_text))
    print(
        f"S3D fp16 autocast CUDA vs fp32 CPU: video cosine (plain and centred) min "
        f"{cos_s3d.min():.6f}, "
        f"text cosine (plain and centred) min {cos_s3d_text.min():.6f}"
    )
    assert cos_s3d.min() > 0.99, f"S3D GPU and CPU disagree (min cosine {cos_s3d.min():.4f})"
    assert cos_s3d_text.min() > 0.99, f"S3D text GPU and CPU disagree ({cos_s3d_text.min():.4f})"

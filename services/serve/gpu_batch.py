"""Batched GPU decoding for the Serve deployments: the waiting requests of several jobs share
DALI runs, and, where the decoder and the embedder share a GPU, frames never leave it.

- `decode_batch`: a Decoder replica's batch of requests -> `DALISampler.sample_many` (their
  clips packed into shared runs, several NVDEC sessions at once) -> host frames per request.
- `decode_embed_batch`: an Embedder replica that also decodes (``fused_decode_embed``) ->
  frames stay CUDA tensors from NVDEC through the GPU resize into the model; only the
  embeddings (float32 [b, D]: 2 KB a segment at D=512, vs 150 KB of 224 px frames) cross
  to the host and through Ray.

Both take requests as dicts {"path", "timestamps" [b, k], "size"}. Each request's answer is
its own: a video DALI cannot decode is decoded by PyAV inside `sample_many` (counted in the
fallback metric) without failing the others. Runs here with DALI's CPU backend and the CPU
embedder (tests/test_gpu_batch.py); the GPU path (NVDEC, CUDA tensors) is unverified on GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services import metrics


def _sizes(requests: list[dict[str, Any]]) -> int:
    """The one crop size of a batch (requests of one deployment share the embedder's)."""
    sizes = {int(r["size"]) for r in requests}
    if len(sizes) != 1:
        raise ValueError(f"one crop size per batch, got {sorted(sizes)}")
    return sizes.pop()


def _sample(sampler: Any, requests: list[dict[str, Any]]) -> list[Any]:
    """Frames of every request from one `sample_many` call, with the decode metrics."""
    fallbacks = sampler.fallbacks
    frames = sampler.sample_many(
        [(r["path"], np.asarray(r["timestamps"], dtype=np.float64)) for r in requests],
        size=_sizes(requests),
    )
    if sampler.fallbacks > fallbacks:
        metrics.DECODER_FALLBACKS.inc(sampler.fallbacks - fallbacks)
    metrics.observe_decode(sampler.last_stats)
    return frames


def to_host(frames: Any) -> np.ndarray:
    """A torch tensor (CUDA or CPU) or array as a numpy array."""
    return frames.cpu().numpy() if hasattr(frames, "cpu") else np.asarray(frames)


def decode_batch(sampler: Any, requests: list[dict[str, Any]]) -> list[np.ndarray]:
    """uint8 frames [b, k, S, S, 3] per request, the batch's clips decoded in shared DALI runs."""
    return [to_host(f) for f in _sample(sampler, requests)]


def decode_embed_batch(
    sampler: Any, embedder: Any, requests: list[dict[str, Any]]
) -> list[np.ndarray]:
    """Segment embeddings float32 [b, D] per request: decoded and embedded on one device in one
    forward pass; the frames stay where the sampler put them (the GPU with DALI's "mixed")."""
    frames = _sample(sampler, requests)
    counts = [int(f.shape[0]) for f in frames]
    import torch

    stacked = torch.cat([torch.as_tensor(f) for f in frames]) if frames else None
    if stacked is None or not len(stacked):
        return [np.zeros((0, embedder.dim), dtype=np.float32) for _ in requests]
    out = np.asarray(embedder.embed_frames(stacked), dtype=np.float32)
    return list(np.split(out, np.cumsum(counts)[:-1], axis=0))


def gpu_sampler(settings: Any) -> Any:
    """The DALI sampler a replica decodes its batches with; DecoderUnavailable (naming the
    reason) where the start-up probe finds no working DALI on this replica's GPU."""
    from biovl_core.errors import DecoderUnavailable
    from biovl_core.video import choose_decoder
    from biovl_core.video.dali import DALISampler

    choice = choose_decoder(settings.pipeline_config().decoder)
    if choice.backend != "dali":
        raise DecoderUnavailable(
            f"fused_decode_embed needs DALI on the Embedder replica's GPU; the probe chose PyAV "
            f"({choice.reason}: {choice.detail}); turn fused_decode_embed off"
        )
    return DALISampler(clips_per_run=settings.decoder_clips_per_run)

"""Stand-ins that call the Serve deployments: the embedder, sampler and aligner the pipeline
sees inside the QueueWorker replica, and the worker runner that wires them into ``align_video``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from services.settings import ServiceSettings


class RemoteEmbedder:
    """Looks like a ``biovl_core.embed.Embedder`` to the pipeline; runs on the Embedder deployment."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        info = handle.info.remote().result()
        self.model_id: str = info["model_id"]
        self.weights: str = info["weights"]
        self.frames_per_segment: int = info["frames_per_segment"]
        self.input_size: int = info["input_size"]
        self.dim: int = info["dim"]
        self._cache_key: str = info["cache_key"]
        self.prompt_templates: tuple[str, ...] = tuple(info["prompt_templates"])

    def cache_key(self) -> str:
        """The remote embedder's cache key."""
        return self._cache_key

    def embed_frames(self, frames: np.ndarray) -> np.ndarray:
        """Segment frames -> embeddings, batched with other jobs' requests on the deployment."""
        return self._handle.embed_frames.remote(np.ascontiguousarray(frames)).result()

    def embed_texts(self, steps: list[str]) -> np.ndarray:
        """Step texts -> embeddings."""
        return self._handle.embed_texts.remote(list(steps)).result()


class RemoteSampler:
    """The pipeline's frame batches (``FrameSampler.iter_batches``), decoded on the Decoder deployment.

    One Decoder call per batch of segments (the archive is on a volume every replica reads); the
    next batch is requested before the current one is handed out, so decoding overlaps embedding
    while at most two batches are in flight.
    """

    name = "serve-decoder"

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def iter_batches(
        self, path: str | Path, timestamps: np.ndarray, size: int = 224, batch_segments: int = 64
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """(segment slice, uint8 frames [b, k, size, size, 3]) batches, decoded remotely."""
        ts = np.asarray(timestamps, dtype=np.float64)
        if ts.ndim != 2:
            raise ValueError(f"timestamps must be [segments, frames], got shape {ts.shape}")
        step = max(1, int(batch_segments))
        starts = list(range(0, ts.shape[0], step))

        def request(a: int) -> Any:
            return self._call(str(path), np.ascontiguousarray(ts[a : a + step]), int(size))

        pending = request(starts[0]) if starts else None
        try:
            for i, a in enumerate(starts):
                frames = pending.result()
                pending = request(starts[i + 1]) if i + 1 < len(starts) else None
                yield slice(a, min(a + step, ts.shape[0])), frames
        finally:
            if pending is not None:
                pending.cancel()

    def _call(self, path: str, batch: np.ndarray, size: int) -> Any:
        """One Decoder request: the frames of `batch` [b, k] (a Serve response)."""
        return self._handle.decode.remote(path, batch, size)


class FusedRemoteSampler(RemoteSampler):
    """Decodes *and embeds* on the Embedder deployment (``fused_decode_embed``): its batches are
    segment embeddings float32 [b, D], not frames, so the frames never leave the GPU; the
    pipeline sees ``yields_embeddings`` and skips its own embed call. Unverified on GPU."""

    name = "serve-decode-embed"
    yields_embeddings = True

    def __init__(self, embedder_handle: Any) -> None:
        super().__init__(embedder_handle)

    def _call(self, path: str, batch: np.ndarray, size: int) -> Any:
        request = {"path": path, "timestamps": batch, "size": size}
        return self._handle.decode_embed.remote(request)


class RemoteAligner:
    """An ``align_fn`` for the pipeline (signature of ``biovl_core.align.align``) on the Aligner."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __call__(
        self,
        similarity: Any,
        segment_seconds: float = 5.0,
        method: str | None = None,  # None: biovl_core.align.DEFAULT_METHOD
        backend: str = "auto",
        duration_s: float | None = None,
        **params: Any,
    ) -> Any:
        """Align one video; batched with other jobs' requests on the deployment."""
        request = {
            "similarity": np.ascontiguousarray(similarity),
            "segment_seconds": segment_seconds,
            "method": method,
            "backend": backend,
            "duration_s": duration_s,
            "params": params,
        }
        out = self._handle.align.remote(request).result()
        if isinstance(out, BaseException):  # the request's own error, without Ray's wrapping
            raise out
        return out


class ServeRunner:
    """Worker runner for Serve: ``align_video`` in the QueueWorker replica with every heavy stage
    remote: frames from the Decoder, embeddings from the Embedder, alignments from the Aligner."""

    # Stages the deployments record themselves (Worker leaves them out of observe_stages).
    remote_stages = ("decode", "align")

    def __init__(
        self,
        settings: ServiceSettings,
        embedder_handle: Any,
        decoder_handle: Any = None,
        aligner_handle: Any = None,
    ) -> None:
        self.settings = settings
        self.embedder = RemoteEmbedder(embedder_handle)
        self.sampler: RemoteSampler | None = None
        if settings.fused_decode_embed:  # decode + embed in the Embedder replica, on its GPU
            self.sampler = FusedRemoteSampler(embedder_handle)
        elif decoder_handle is not None:
            self.sampler = RemoteSampler(decoder_handle)
        self.align_fn = RemoteAligner(aligner_handle) if aligner_handle is not None else None
        self.remote_stages = tuple(
            stage
            for stage, remote in (("decode", self.sampler), ("align", self.align_fn))
            if remote is not None
        )

    def model_identity(self, cfg: Any) -> tuple[str, str, str]:
        """(model_id, weights, model_key) of the Embedder deployment."""
        return self.embedder.model_id, self.embedder.weights, self.embedder.cache_key()

    def run(
        self,
        video: Path,
        protocol_text: str,
        protocol_name: str,
        cfg: Any,
        progress: Any,
        group: Any = None,
        video_sha256: str | None = None,
    ) -> Any:
        """``align_video`` with the remote decoder, embedder and aligner; a group's co-alignment
        runs in this replica (``biovl_core.group.coalign``, numpy/numba)."""
        from biovl_core.pipeline import align_video
        from biovl_core.protocol import parse_protocol

        protocol = parse_protocol(protocol_text, filename=protocol_name)
        extra: dict[str, Any] = {"group": group, "video_sha256": video_sha256}
        if self.sampler is not None:
            extra["sampler"] = self.sampler
        if self.align_fn is not None:
            extra["align_fn"] = self.align_fn
        return align_video(video, protocol, cfg, embedder=self.embedder, progress=progress, **extra)

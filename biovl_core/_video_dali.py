"""GPU frame sampler: NVIDIA DALI decodes on NVDEC, resizes and crops on the GPU.

Unverified on GPU: written against DALI 2.x's documented API (``fn.decoders.video`` with
its ``frames`` argument, ``fn.resize``, ``fn.crop``, ``nvidia.dali.plugin.pytorch.feed_ndarray``)
and not yet run here; ``make gpu-check`` compares it with the PyAV sampler frame by frame.

Frame choice matches the CPU sampler exactly: the presentation times of all frames are
read on the CPU (`video.frame_times`, a packet scan without decoding) and each timestamp
becomes a frame index by the module's frame rule (`video.frame_index_at`); DALI then
decodes exactly those indices. Frames stay on the GPU: the result is a torch CUDA tensor.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from biovl_core.device import cuda_available, optional_import
from biovl_core.video import (
    DecodeStats,
    _as_timestamps,
    _check_file,
    frame_index_at,
    frame_times,
    probe,
)

DALI_HINT = "pip install 'biovl-aligner[gpu]' (nvidia-dali-cuda130)"


class DALISampler:
    """GPU sampler (unverified on GPU): uint8 RGB torch CUDA tensors [N, k, size, size, 3]."""

    name = "dali"

    def __init__(self, device_id: int = 0, chunk_frames: int = 128, num_threads: int = 4) -> None:
        if not cuda_available():
            raise RuntimeError(
                "the DALI decoder needs a CUDA GPU and none is visible; use decoder='pyav' "
                "(or 'auto', which falls back to PyAV)."
            )
        self.dali = optional_import("nvidia.dali", DALI_HINT)
        self.torch = optional_import("torch", "pip install torch")
        self.device_id = device_id
        self.chunk_frames = chunk_frames
        self.num_threads = num_threads
        self._pipes: dict[int, Any] = {}
        self.last_stats = DecodeStats()

    def _pipeline(self, size: int) -> Any:
        """A built pipeline (cached per output size): encoded bytes + frame indices in, S x S crops out."""
        if size in self._pipes:
            return self._pipes[size]
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(
            batch_size=1,
            num_threads=self.num_threads,
            device_id=self.device_id,
            prefetch_queue_depth=1,
        )
        def sample_pipe() -> Any:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, no_copy=True)
            indices = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            video = fn.decoders.video(encoded, device="mixed", frames=indices)
            video = fn.resize(video, resize_shorter=float(size), antialias=True)
            return fn.crop(video, crop=(size, size))

        pipe = sample_pipe()
        pipe.build()
        self._pipes[size] = pipe
        return pipe

    def _decode(self, pipe: Any, data: np.ndarray, indices: np.ndarray, out: Any) -> None:
        """Decode sorted frame `indices` into the CUDA tensor `out` [len(indices), S, S, 3]."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        pipe.feed_input("encoded", [data])
        pipe.feed_input("frames", [indices.astype(np.int32)])
        (video,) = pipe.run()
        tensor = video.as_tensor()  # [1, F, S, S, 3]
        feed_ndarray(tensor, out.view(1, *out.shape), cuda_stream=self.torch.cuda.current_stream())

    def _prepare(
        self, path: str | Path, timestamps: np.ndarray
    ) -> tuple[Path, Any, np.ndarray, np.ndarray]:
        """Probe, map timestamps to frame indices, and load the encoded file once."""
        p = _check_file(path)
        info = probe(p)
        ts = _as_timestamps(timestamps)
        indices = frame_index_at(frame_times(p), ts)
        data = np.fromfile(p, dtype=np.uint8)
        return p, info, indices, data

    def iter_batches(
        self,
        path: str | Path,
        timestamps: np.ndarray,
        size: int = 224,
        batch_segments: int = 64,
    ) -> Iterator[tuple[slice, Any]]:
        """Yield (segment slice, CUDA uint8 [b, k, size, size, 3]); GPU memory bounded by the batch."""
        torch = self.torch
        _, info, indices, data = self._prepare(path, timestamps)
        pipe = self._pipeline(size)
        stats = DecodeStats()
        self.last_stats = stats
        started = time.perf_counter()
        n, k = indices.shape
        turns = info.rotation // 90
        device = torch.device("cuda", self.device_id)
        for a in range(0, n, max(1, batch_segments)):
            b = min(n, a + batch_segments)
            unique, inverse = np.unique(indices[a:b].ravel(), return_inverse=True)
            decoded = torch.empty((len(unique), size, size, 3), dtype=torch.uint8, device=device)
            for c in range(0, len(unique), self.chunk_frames):
                self._decode(
                    pipe,
                    data,
                    unique[c : c + self.chunk_frames],
                    decoded[c : c + self.chunk_frames],
                )
            stats.frames_decoded += len(unique)
            stats.frames_converted += len(unique)
            frames = decoded[torch.as_tensor(inverse, device=device)].view(b - a, k, size, size, 3)
            if turns:
                frames = torch.rot90(frames, k=turns, dims=(2, 3)).contiguous()
            stats.wall_s = time.perf_counter() - started
            yield slice(a, b), frames

    def sample(self, path: str | Path, timestamps: np.ndarray, size: int = 224) -> Any:
        """CUDA uint8 RGB [N, k, size, size, 3] of the frames shown at `timestamps` [N, k] (s)."""
        ts = _as_timestamps(timestamps)
        parts = [
            frames
            for _, frames in self.iter_batches(path, ts, size, batch_segments=max(1, ts.shape[0]))
        ]
        if not parts:
            return self.torch.empty(
                (*ts.shape, size, size, 3), dtype=self.torch.uint8, device=f"cuda:{self.device_id}"
            )
        return parts[0] if len(parts) == 1 else self.torch.cat(parts)

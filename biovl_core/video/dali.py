"""GPU frame sampler: NVIDIA DALI decodes on NVDEC, resizes and crops on the GPU.

Written against DALI's API (``fn.decoders.video``, or ``fn.experimental.decoders.video`` on
older releases, decoding an in-memory stream with its ``frames`` argument; ``fn.resize``;
``fn.crop``; ``nvidia.dali.plugin.pytorch.feed_ndarray``). What has run where:

- DALI's CPU backend (``backend="cpu"``; the pip wheel's libavcodec decodes VP8/VP9/MJPEG, not
  H.264) runs this same pipeline in the tests on VP9 files: read plans, clip remuxing, DALI's
  ``frames`` indexing, VFR, rotation, resize and crop, frame by frame against PyAV.
- The ``"mixed"`` backend (NVDEC, GPU resize) is unverified (not run on a GPU);
  ``make gpu-check`` compares it with the PyAV sampler frame by frame, VFR and long files included.

What is read: the packet index of each video once (`video_plan.index_packets`, cached per
file), then per batch a read plan (`video_plan.plan_reads`): the wanted frames, the keyframe
runs that decode them and their byte ranges. Only those bytes are read and remuxed into a
short MP4 clip; DALI decodes the clip and returns exactly the wanted frames, resized on the
GPU (shorter side to ``size``, center crop) and turned upright. Frame choice matches the CPU
sampler (same frame rule, exact pts). Frames stay on the GPU: torch CUDA uint8 tensors.

A video DALI fails on (a codec or profile NVDEC lacks, corrupt data) is decoded by PyAV from
that batch on, after one warning; the broken pipeline is dropped (a DALI pipeline that raised
cannot run again) and the video is remembered, so its later batches go straight to PyAV.
"""

from __future__ import annotations

import collections
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from biovl_core.device import cuda_available, optional_import
from biovl_core.errors import DecoderUnavailable
from biovl_core.video.container import as_timestamps, check_file
from biovl_core.video.info import probe
from biovl_core.video.plan import PacketIndex, index_packets, plan_reads, write_clip
from biovl_core.video.pyav import PyAVSampler
from biovl_core.video.sampler import DALI_HINT, DecodeStats

log = logging.getLogger(__name__)


def _decoder_op(fn: Any) -> Any:
    """DALI's in-memory video decoder: ``fn.decoders.video`` (DALI 2.x) or the experimental one."""
    decoders = getattr(fn, "decoders", None)
    if decoders is not None and hasattr(decoders, "video"):
        return decoders.video
    return fn.experimental.decoders.video


class DALIDecodeError(RuntimeError):
    """DALI failed on a clip of one video (codec or profile it cannot decode, corrupt data)."""


def dali_reason(exc: BaseException) -> str:
    """The line of a DALI pipeline error that says what went wrong (it comes after "encountered:",
    behind the operator's traceback), else the error's first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if "encountered:" in lines and lines.index("encountered:") + 1 < len(lines):
        reason = lines[lines.index("encountered:") + 1]
        return reason.split(" failed: ", 1)[-1]
    return lines[0] if lines else type(exc).__name__


BACKENDS = ("mixed", "cpu")
"""DALI decoder backends: "mixed" decodes on NVDEC (the service's), "cpu" with libavcodec."""


class DALISampler:
    """DALI sampler: uint8 RGB torch tensors [N, k, size, size, 3], on the GPU with "mixed"."""

    name = "dali"

    def __init__(
        self,
        device_id: int = 0,
        max_clip_frames: int = 128,
        num_threads: int = 4,
        cached_videos: int = 16,
        backend: str = "mixed",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"DALI backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if backend == "mixed" and not cuda_available():
            raise DecoderUnavailable(
                "decoder 'dali': the DALI decoder needs a CUDA GPU and none is visible; use "
                "decoder 'pyav', or 'auto', which picks DALI only where it works"
            )
        self.dali = optional_import("nvidia.dali", DALI_HINT)
        self.torch = optional_import("torch", "pip install torch")
        self.backend = backend
        self.device_id = device_id
        self.max_clip_frames = max_clip_frames
        self.num_threads = num_threads
        self._pipes: dict[int, Any] = {}
        self._indexes: collections.OrderedDict[tuple, tuple[PacketIndex, int]] = (
            collections.OrderedDict()
        )
        self._cached_videos = cached_videos
        self._index_lock = threading.Lock()
        self._cpu = PyAVSampler()
        self._pyav_only: dict[str, str] = {}  # video path -> why DALI could not decode it
        self.fallbacks = 0  # videos handed to PyAV after DALI failed on them
        self.last_stats = DecodeStats()
        self.last_bytes_read = 0

    def _pipeline(self, size: int) -> Any:
        """A built pipeline (cached per output size): clip bytes + frame indices in, S x S crops out."""
        if size in self._pipes:
            return self._pipes[size]
        from nvidia.dali import fn, pipeline_def, types

        decode = _decoder_op(fn)

        @pipeline_def(
            batch_size=1,
            num_threads=self.num_threads,
            device_id=self.device_id if self.backend == "mixed" else None,
            prefetch_queue_depth=1,
        )
        def sample_pipe() -> Any:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            indices = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            # pad_mode "none": a frame index past the clip's end is an error, never a blank frame
            video = decode(encoded, device=self.backend, frames=indices, pad_mode="none")
            video = fn.resize(video, resize_shorter=float(size), antialias=True)
            return fn.crop(video, crop=(size, size))

        pipe = sample_pipe()
        pipe.build()
        self._pipes[size] = pipe
        return pipe

    def packet_index(self, path: str | Path) -> tuple[PacketIndex, int]:
        """(packet index, display rotation) of a video, read once and kept for later batches."""
        p = check_file(path)
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        with self._index_lock:
            if key in self._indexes:
                self._indexes.move_to_end(key)
                return self._indexes[key]
        entry = (index_packets(p), probe(p).rotation)
        with self._index_lock:
            self._indexes[key] = entry
            while len(self._indexes) > self._cached_videos:
                self._indexes.popitem(last=False)
        return entry

    def _decode_chunk(self, index: PacketIndex, ts: np.ndarray, size: int, out: Any) -> DecodeStats:
        """Decode the frames shown at ts [c, k] into the CUDA tensor out [c, k, S, S, 3]."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        torch = self.torch
        plan = plan_reads(index, ts)
        clip = np.frombuffer(write_clip(index, plan), dtype=np.uint8)
        pipe = self._pipeline(size)
        try:
            pipe.feed_input("encoded", [clip])
            pipe.feed_input("frames", [plan.clip_frames.astype(np.int32)])
            (video,) = pipe.run()
        except Exception as exc:  # DALI raises RuntimeError; the pipeline cannot run again
            self._pipes.pop(size, None)
            raise DALIDecodeError(
                f"{index.path}: DALI ({self.backend}) could not decode frames "
                f"{plan.frames[0]}-{plan.frames[-1]}: {dali_reason(exc)}"
            ) from exc
        device = out.device
        decoded = torch.empty((len(plan.frames), size, size, 3), dtype=torch.uint8, device=device)
        stream = torch.cuda.current_stream() if device.type == "cuda" else None
        feed_ndarray(video.as_tensor(), decoded.view(1, *decoded.shape), cuda_stream=stream)
        out.copy_(decoded[torch.as_tensor(plan.inverse, device=device)].view(out.shape))
        self.last_bytes_read += plan.bytes_read
        return DecodeStats(len(plan.packets), len(plan.frames), len(plan.runs))

    @property
    def device(self) -> Any:
        """Where the frames land: the GPU for "mixed", host memory for "cpu"."""
        if self.backend == "mixed":
            return self.torch.device("cuda", self.device_id)
        return self.torch.device("cpu")

    def iter_batches(
        self,
        path: str | Path,
        timestamps: np.ndarray,
        size: int = 224,
        batch_segments: int = 64,
    ) -> Iterator[tuple[slice, Any]]:
        """Yield (segment slice, uint8 [b, k, size, size, 3]); memory bounded by the batch."""
        torch = self.torch
        ts = as_timestamps(timestamps)
        if batch_segments < 1:
            raise ValueError(f"batch_segments must be >= 1, got {batch_segments}")
        index, rotation = self.packet_index(path)
        device = self.device
        reason = self._pyav_only.get(index.path)
        if reason is None and not index.raw_bytes:
            reason = "not an MP4/MOV packet layout"
        if reason is not None:
            log.info("%s: decoding with PyAV (%s)", index.path, reason)
            yield from self._with_pyav(path, ts, size, batch_segments, 0)
            return
        stats = DecodeStats()
        self.last_stats = stats
        self.last_bytes_read = 0
        started = time.perf_counter()
        n, k = ts.shape
        per_chunk = max(1, self.max_clip_frames // max(1, k))
        turns = rotation // 90
        for a in range(0, n, batch_segments):
            b = min(n, a + batch_segments)
            frames = torch.empty((b - a, k, size, size, 3), dtype=torch.uint8, device=device)
            try:
                for c in range(a, b, per_chunk):
                    d = min(b, c + per_chunk)
                    part = self._decode_chunk(index, ts[c:d], size, frames[c - a : d - a])
                    stats.frames_decoded += part.frames_decoded
                    stats.frames_converted += part.frames_converted
                    stats.seeks += part.seeks
            except DALIDecodeError as exc:
                self.fallbacks += 1
                self._pyav_only[index.path] = str(exc)
                log.warning("%s; decoding this video with PyAV instead", exc)
                yield from self._with_pyav(path, ts, size, batch_segments, a)
                return
            if turns:
                frames = torch.rot90(frames, k=turns, dims=(2, 3)).contiguous()
            stats.wall_s = time.perf_counter() - started
            yield slice(a, b), frames

    def _with_pyav(
        self, path: str | Path, ts: np.ndarray, size: int, batch_segments: int, first: int
    ) -> Iterator[tuple[slice, Any]]:
        """Segments ``first:`` decoded by PyAV, as tensors on this sampler's device."""
        for sl, frames in self._cpu.iter_batches(path, ts[first:], size, batch_segments):
            shifted = slice(sl.start + first, sl.stop + first)
            yield shifted, self.torch.from_numpy(frames).to(self.device)
        self.last_stats = self._cpu.last_stats

    def sample(self, path: str | Path, timestamps: np.ndarray, size: int = 224) -> Any:
        """uint8 RGB [N, k, size, size, 3] of the frames shown at `timestamps` [N, k] (s)."""
        ts = as_timestamps(timestamps)
        parts = [
            frames
            for _, frames in self.iter_batches(path, ts, size, batch_segments=max(1, ts.shape[0]))
        ]
        if not parts:
            return self.torch.empty(
                (*ts.shape, size, size, 3), dtype=self.torch.uint8, device=self.device
            )
        return parts[0] if len(parts) == 1 else self.torch.cat(parts)


def smoke_test(device_id: int = 0) -> None:
    """Decode one frame of a tiny generated H.264 clip with DALI on NVDEC; raise if it fails."""
    from biovl_core.synthetic import read_frame_counter, write_video

    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(Path(tmp) / "probe.mp4", 0.5, fps=10, size=(128, 96), gop=5)
        frames = DALISampler(device_id=device_id).sample(video.path, np.array([[0.25]]), size=96)
        got = read_frame_counter(frames[0, 0].cpu().numpy())
    if got != 2:
        raise RuntimeError(f"DALI decoded frame {got} of the probe clip where frame 2 is shown")

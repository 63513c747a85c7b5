"""GPU frame sampler: NVIDIA DALI decodes on NVDEC, resizes and crops on the GPU.

Written against DALI's API (``fn.decoders.video``, or ``fn.experimental.decoders.video`` on
older releases, decoding an in-memory stream with its ``frames`` argument; ``fn.resize``;
``fn.crop``; ``nvidia.dali.plugin.pytorch.feed_ndarray``). What has run where:

- DALI's CPU backend (``backend="cpu"``; the pip wheel's libavcodec decodes VP8/VP9/MJPEG, not
  H.264) runs this same pipeline in the tests on VP9 files: read plans, clip remuxing, DALI's
  ``frames`` indexing, VFR, rotation, resize and crop, frame by frame against PyAV.
- The ``"mixed"`` backend (NVDEC, GPU resize) is unverified (not run on a GPU);
  ``make gpu-check`` compares it with the PyAV sampler frame by frame, VFR and long files included.

Several NVDEC sessions at once: a DALI run carries up to ``clips_per_run`` clips (the samples
of one DALI batch), of one video or of several (`DALISampler.sample_many`); DALI's mixed
decoder decodes a batch's samples in parallel on its thread pool, one NVDEC decoder each
(``VideoDecoderBase::RunImpl`` in DALI's source). A run that fails is retried video by video, so
only the video DALI cannot decode goes to PyAV. Unverified on GPU: the CPU backend runs the
same batching in tests/test_video_dali_batch.py.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biovl_core.device import cuda_available, optional_import
from biovl_core.errors import DecoderUnavailable
from biovl_core.video.container import as_timestamps, check_file
from biovl_core.video.info import probe
from biovl_core.video.plan import PacketIndex, ReadPlan, index_packets, plan_reads, write_clip
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


@dataclass
class _Clip:
    """One DALI sample: a remuxed clip of one video and where its frames go."""

    request: int  # which request (video) of the call it belongs to
    index: PacketIndex
    plan: ReadPlan
    out: Any  # view [c, k, S, S, 3] of the request's frames, filled by the run


class DALISampler:
    """DALI sampler: uint8 RGB torch tensors [N, k, size, size, 3], on the GPU with "mixed".

    Each DALI run carries up to ``clips_per_run`` clips (samples of one DALI batch), from one
    video or several (`sample_many`); DALI's mixed video decoder decodes the samples of a batch
    in parallel, one NVDEC session each, on ``num_threads`` threads, so several of the GPU's
    NVDEC engines work at once. Unverified on GPU.
    """

    name = "dali"

    def __init__(
        self,
        device_id: int = 0,
        max_clip_frames: int = 128,
        num_threads: int = 4,
        cached_videos: int = 16,
        backend: str = "mixed",
        clips_per_run: int = 8,
        min_clip_segments: int = 8,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"DALI backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if clips_per_run < 1 or min_clip_segments < 1:
            raise ValueError("clips_per_run and min_clip_segments must be >= 1")
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
        self.clips_per_run = clips_per_run
        self.min_clip_segments = min_clip_segments
        self._pipes: dict[int, Any] = {}
        self._indexes: collections.OrderedDict[tuple, tuple[PacketIndex, int]] = (
            collections.OrderedDict()
        )
        self._cached_videos = cached_videos
        self._index_lock = threading.Lock()
        self._cpu = PyAVSampler()
        self._pyav_only: dict[str, str] = {}  # video path -> why DALI could not decode it
        self.fallbacks = 0  # videos handed to PyAV after DALI failed on them
        self.runs = 0  # DALI pipeline runs
        self.clips = 0  # clips (DALI samples) those runs decoded
        self.last_stats = DecodeStats()
        self.last_bytes_read = 0

    def _pipeline(self, size: int) -> Any:
        """A built pipeline (cached per output size): clips + frame indices in, S x S crops out."""
        if size in self._pipes:
            return self._pipes[size]
        from nvidia.dali import fn, pipeline_def, types

        decode = _decoder_op(fn)

        @pipeline_def(
            batch_size=self.clips_per_run,  # the most clips per run; a run may carry fewer
            num_threads=self.num_threads,
            device_id=self.device_id if self.backend == "mixed" else None,
            prefetch_queue_depth=1,
        )
        def sample_pipe() -> Any:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            indices = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            # pad_mode "none": a frame index past the clip's end is an error, never a blank frame
            video = decode(encoded, device=self.backend, frames=indices, pad_mode="none")
            # on the GPU with "mixed": the decoder's output is already in GPU memory
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

    def _run(self, clips: list[_Clip], size: int) -> None:
        """Decode `clips` in one DALI run (one sample each) into their ``out`` views."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        torch = self.torch
        pipe = self._pipeline(size)
        try:
            pipe.feed_input(
                "encoded", [np.frombuffer(write_clip(c.index, c.plan), np.uint8) for c in clips]
            )
            pipe.feed_input("frames", [c.plan.clip_frames.astype(np.int32) for c in clips])
            (video,) = pipe.run()
        except Exception as exc:  # DALI raises RuntimeError; the pipeline cannot run again
            self._pipes.pop(size, None)
            first = clips[0]
            raise DALIDecodeError(
                f"{first.index.path}: DALI ({self.backend}) could not decode frames "
                f"{first.plan.frames[0]}-{first.plan.frames[-1]}"
                f"{f' (one of {len(clips)} clips)' if len(clips) > 1 else ''}: {dali_reason(exc)}"
            ) from exc
        self.runs += 1
        self.clips += len(clips)
        for i, c in enumerate(clips):
            device = c.out.device
            decoded = torch.empty(
                (len(c.plan.frames), size, size, 3), dtype=torch.uint8, device=device
            )
            stream = torch.cuda.current_stream() if device.type == "cuda" else None
            feed_ndarray(video[i], decoded, cuda_stream=stream)
            c.out.copy_(decoded[torch.as_tensor(c.plan.inverse, device=device)].view(c.out.shape))

    def _run_or_each(self, clips: list[_Clip], size: int) -> dict[int, DALIDecodeError]:
        """Run the clips together; when that fails, video by video (one run per video's clips),
        so one bad video does not fail the others. {request: error} of the videos that failed."""
        try:
            self._run(clips, size)
            return {}
        except DALIDecodeError as exc:
            requests = list(dict.fromkeys(c.request for c in clips))
            if len(requests) == 1:
                return {requests[0]: exc}
        failed: dict[int, DALIDecodeError] = {}
        for request in requests:
            try:
                self._run([c for c in clips if c.request == request], size)
            except DALIDecodeError as exc:
                failed[request] = exc
        return failed

    def _chunks(self, n: int, k: int) -> int:
        """Segments per clip for a batch of `n` segments of `k` frames: enough clips to keep
        ``clips_per_run`` NVDEC sessions busy, none under ``min_clip_segments`` segments (each
        clip opens a decoder) nor over ``max_clip_frames`` frames."""
        most = max(1, self.max_clip_frames // max(1, k))
        spread = -(-n // self.clips_per_run)
        return max(1, min(most, max(spread, self.min_clip_segments)))

    def _clips_of(self, request: int, index: PacketIndex, ts: np.ndarray, out: Any) -> list[_Clip]:
        """The clips that decode ts [b, k] into out [b, k, S, S, 3]."""
        per = self._chunks(*ts.shape)
        return [
            _Clip(request, index, plan_reads(index, ts[c : c + per]), out[c : c + per])
            for c in range(0, len(ts), per)
        ]

    @staticmethod
    def _stats_of(clips: list[_Clip], samples: int) -> DecodeStats:
        """What the clips cost: packets decoded, frames, runs (seeks), bytes read."""
        return DecodeStats(
            frames_decoded=sum(len(c.plan.packets) for c in clips),
            frames_converted=sum(len(c.plan.frames) for c in clips),
            seeks=sum(len(c.plan.runs) for c in clips),
            bytes_read=sum(c.plan.bytes_read for c in clips),
            samples=samples,
        )

    def fallback_reasons(self) -> list[str]:
        """Why DALI could not decode each video it handed to PyAV (oldest first)."""
        return list(self._pyav_only.values())

    @property
    def device(self) -> Any:
        """Where the frames land: the GPU for "mixed", host memory for "cpu"."""
        if self.backend == "mixed":
            return self.torch.device("cuda", self.device_id)
        return self.torch.device("cpu")

    def _dali_reason(self, index: PacketIndex) -> str | None:
        """Why this video goes to PyAV without trying DALI, or None."""
        reason = self._pyav_only.get(index.path)
        if reason is None and not index.raw_bytes:
            reason = "not an MP4/MOV packet layout"
        return reason

    def _fall_back(self, index: PacketIndex, exc: DALIDecodeError) -> None:
        self.fallbacks += 1
        self._pyav_only[index.path] = str(exc)
        log.warning("%s; decoding this video with PyAV instead", exc)

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
        self.last_bytes_read = 0  # a PyAV fallback below reads nothing through DALI
        index, rotation = self.packet_index(path)
        reason = self._dali_reason(index)
        if reason is not None:
            log.info("%s: decoding with PyAV (%s)", index.path, reason)
            yield from self._with_pyav(path, ts, size, batch_segments, 0)
            return
        stats = DecodeStats()
        self.last_stats = stats
        started = time.perf_counter()
        for a in range(0, len(ts), batch_segments):
            b = min(len(ts), a + batch_segments)
            frames = torch.empty(
                (b - a, ts.shape[1], size, size, 3), dtype=torch.uint8, device=self.device
            )
            clips = self._clips_of(0, index, ts[a:b], frames)
            failed: dict[int, DALIDecodeError] = {}
            for r in range(0, len(clips), self.clips_per_run):
                failed = self._run_or_each(clips[r : r + self.clips_per_run], size)
                if failed:
                    break
            if failed:
                self._fall_back(index, failed[0])
                yield from self._with_pyav(path, ts, size, batch_segments, a)
                return
            part = self._stats_of(clips, (b - a) * ts.shape[1])
            for name in ("frames_decoded", "frames_converted", "seeks", "bytes_read", "samples"):
                setattr(stats, name, getattr(stats, name) + getattr(part, name))
            self.last_bytes_read = stats.bytes_read
            stats.wall_s = time.perf_counter() - started
            yield slice(a, b), _upright(torch, frames, rotation)

    def sample_many(
        self, requests: list[tuple[str | Path, np.ndarray]], size: int = 224
    ) -> list[Any]:
        """Frames of several videos, their clips packed together into DALI runs.

        `requests` holds (path, timestamps [n, k]); returns one uint8 [n, k, S, S, 3] tensor per
        request, on this sampler's device. A video DALI fails on is decoded by PyAV (counted
        in ``fallbacks``) without failing the others. ``last_stats`` sums the whole call.
        """
        torch = self.torch
        outs: list[Any] = []
        clips: list[_Clip] = []
        pyav: dict[int, str] = {}
        rotations: list[int] = []
        for i, (path, timestamps) in enumerate(requests):
            ts = as_timestamps(timestamps)
            index, rotation = self.packet_index(path)
            rotations.append(rotation)
            out = torch.empty((*ts.shape, size, size, 3), dtype=torch.uint8, device=self.device)
            outs.append(out)
            reason = self._dali_reason(index)
            if reason is not None:
                pyav[i] = reason
            elif len(ts):
                clips += self._clips_of(i, index, ts, out)
        failed: dict[int, DALIDecodeError] = {}
        for r in range(0, len(clips), self.clips_per_run):
            run = [c for c in clips[r : r + self.clips_per_run] if c.request not in failed]
            if run:
                failed.update(self._run_or_each(run, size))
        for i, exc in failed.items():
            self._fall_back(next(c.index for c in clips if c.request == i), exc)
            pyav[i] = str(exc)
        ok = [c for c in clips if c.request not in pyav]
        stats = self._stats_of(
            ok, sum(int(np.size(requests[c][1])) for c in {c.request for c in ok})
        )
        for i in pyav:
            path, timestamps = requests[i]
            outs[i] = torch.from_numpy(self._cpu.sample(path, as_timestamps(timestamps), size))
            outs[i] = outs[i].to(self.device)
        self.last_stats = stats
        self.last_bytes_read = stats.bytes_read
        return [
            out if i in pyav else _upright(torch, out, rotations[i]) for i, out in enumerate(outs)
        ]

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


def _upright(torch: Any, frames: Any, rotation: int) -> Any:
    """Frames [b, k, S, S, 3] turned by the display rotation (degrees)."""
    turns = rotation // 90
    return torch.rot90(frames, k=turns, dims=(2, 3)).contiguous() if turns else frames


def smoke_test(device_id: int = 0, backend: str = "mixed") -> None:
    """Decode one frame of a tiny generated H.264 clip with DALI (NVDEC for "mixed"); raise
    unless DALI itself decoded it (no fallback to PyAV, bytes read) and it is the right frame."""
    from biovl_core.synthetic import read_frame_counter, write_video

    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(Path(tmp) / "probe.mp4", 0.5, fps=10, size=(128, 96), gop=5)
        sampler = DALISampler(device_id=device_id, backend=backend)
        frames = sampler.sample(video.path, np.array([[0.25]]), size=96)
        got = read_frame_counter(frames[0, 0].cpu().numpy())
    if sampler.fallbacks or sampler.last_bytes_read <= 0:
        why = "; ".join(sampler.fallback_reasons()) or "no bytes read through DALI"
        raise RuntimeError(f"DALI ({backend}) did not decode the probe clip itself: {why}")
    if got != 2:
        raise RuntimeError(f"DALI decoded frame {got} of the probe clip where frame 2 is shown")

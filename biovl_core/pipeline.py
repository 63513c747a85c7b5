"""One recording end to end: probe -> sample frames -> embed -> similarity -> align.

Each stage is timed (``AlignmentResult.timings``) and reported through an optional
``progress`` callback so the CLI can draw bars and the service can export stage latencies.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from biovl_core import __version__
from biovl_core.align import (
    Alignment,
    GroupContext,
    align,
    deviation_report,
    step_ranges,
)
from biovl_core.align import resolve_method as method_spec
from biovl_core.config import PipelineConfig
from biovl_core.deadline import Deadline
from biovl_core.embed import Embedder, EmbeddingCache, load_embedder
from biovl_core.group_stage import align_in_group, refine_group_spans
from biovl_core.protocol import Protocol
from biovl_core.result import AlignmentResult, Span
from biovl_core.segment_fit import resolve_method
from biovl_core.video import (
    FrameSampler,
    SamplePlan,
    VideoInfo,
    get_sampler,
    probe,
    recording_plan,
)
from biovl_core.video import video_sha256 as hash_video

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
T = TypeVar("T")
AlignFn = Callable[..., Alignment]  # same signature as biovl_core.align.align


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall time of the block to ``timings[stage]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


PREFETCH_THREAD = "biovl-prefetch"


def _name_prefetch_thread() -> None:
    threading.current_thread().name = PREFETCH_THREAD


def prefetched(
    items: Iterator[T], depth: int = 1, meanwhile: Callable[[], object] | None = None
) -> Iterator[T]:
    """Yield ``items`` while one executor thread already produces the next ``depth`` of them.

    Decoding the next batch of segments overlaps embedding the current one (both release
    the GIL); memory stays bounded to ``depth + 1`` batches. Errors surface in the consumer.
    ``meanwhile`` runs in the consumer while the first item is produced (the step texts are
    embedded while the first batch decodes). Closing the generator (``contextlib.closing`` in
    the consumer) cancels what is queued and waits for the one ``next`` in progress, so no
    thread outlives its consumer.
    """
    done = object()
    executor = ThreadPoolExecutor(max_workers=1, initializer=_name_prefetch_thread)
    pending: deque[Future[Any]] = deque()
    try:
        for _ in range(max(1, depth)):
            pending.append(executor.submit(next, items, done))
        if meanwhile is not None:
            meanwhile()
        while True:
            item = pending.popleft().result()
            if item is done:
                return
            pending.append(executor.submit(next, items, done))
            yield item
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class RecordingSimilarity:
    """What the aligner needs from one recording: the step x segment similarity and the duration."""

    similarity: np.ndarray  # float32 [K, N]
    duration_s: float
    video_sha256: str
    timings: dict[str, float] = field(default_factory=dict)
    frames: np.ndarray | None = None  # float32 [N, D] segment embeddings (for group alignment)
    texts: np.ndarray | None = None  # float32 [K, D] step embeddings
    frame_times: np.ndarray | None = None  # float64 [N, k] time of every embedded frame (s)
    decode: dict[str, float] = field(default_factory=dict)  # what decoding cost (DecodeStats)


DECODE_STATS = ("frames_decoded", "samples", "bytes_read", "keyframes_alone", "seeks")


def sample_plan_for(
    video_path: str | Path, info: VideoInfo, cfg: PipelineConfig, frames_per_segment: int
) -> SamplePlan:
    """Which frame stands for each segment under the configured rule (SPEC.md "Frames")."""
    return recording_plan(
        video_path,
        info,
        cfg.segment_seconds,
        frames_per_segment,
        rule=cfg.sampling,
        tolerance_s=cfg.keyframe_tolerance_s,
    )


def embed_video(
    video_path: str | Path,
    embedder: Embedder,
    cfg: PipelineConfig,
    *,
    timings: dict[str, float] | None = None,
    progress: ProgressFn | None = None,
    sampler: FrameSampler | None = None,
    info: VideoInfo | None = None,
    plan: SamplePlan | None = None,
    deadline: Deadline | None = None,
    decode_stats: dict[str, float] | None = None,
    meanwhile: Callable[[], object] | None = None,
    timestamps: np.ndarray | None = None,
) -> np.ndarray:
    """Segment embeddings float32 [N, D], decoding in bounded-memory batches of segments.

    ``sampler`` replaces the configured decoder (the service passes one that calls its
    Decoder deployment); ``info`` and ``plan`` are the probe and sample plan the caller already
    made. ``deadline`` is checked after every batch; ``decode_stats`` receives what decoding
    cost, where the sampler counts it (``DECODE_STATS``); ``meanwhile`` runs while the first
    batch decodes. ``timestamps`` [N, k] s: decode these instead of the sample plan's.
    """
    timings = {} if timings is None else timings
    own_sampler = sampler is None
    with timed(timings, "probe"):
        if timestamps is None:
            info = info or probe(video_path)
            plan = plan or sample_plan_for(video_path, info, cfg, embedder.frames_per_segment)
        sampler = sampler or get_sampler(cfg.decoder)
    stamps = plan.timestamps if timestamps is None else np.asarray(timestamps, np.float64)
    chunks: list[np.ndarray] = []
    # a sampler that decodes and embeds in one GPU actor yields embeddings, not frames
    fused = bool(getattr(sampler, "yields_embeddings", False))
    decoded = sampler.iter_batches(
        video_path, stamps, size=embedder.input_size, batch_segments=cfg.batch_size
    )
    try:
        with closing(prefetched(decoded, meanwhile=meanwhile)) as batches:
            while True:
                with timed(timings, "decode"):
                    item = next(batches, None)
                if item is None:
                    break
                segments, frames = item
                with timed(timings, "embed_video"):
                    chunks.append(frames if fused else embedder.embed_frames(frames))
                if progress:
                    progress("embed_video", segments.stop, len(stamps))
                if deadline is not None:
                    deadline.check(f"{segments.stop} of {len(stamps)} segments embedded")
        stats = getattr(sampler, "last_stats", None)
        if decode_stats is not None and stats is not None:
            decode_stats.update({k: float(getattr(stats, k, 0)) for k in DECODE_STATS})
    finally:
        if own_sampler and hasattr(sampler, "close"):
            sampler.close()
    return np.concatenate(chunks, axis=0)


def frames_in_segments(
    video_path: str | Path,
    segments: np.ndarray,
    per_segment: int,
    embedder: Embedder,
    cfg: PipelineConfig,
    *,
    sampler: FrameSampler | None = None,
    deadline: Deadline | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``per_segment`` frames inside each of ``segments`` (indices), chosen by the configured
    frame rule for ``per_segment`` samples per segment (``sample_plan_for``: the keyframe nearest
    each part's centre within reach, else the exact time), decoded and embedded with the
    segments' sampler, size and embedder, each as a segment of ``frames_per_segment`` copies.
    Returns (the times the frames show [M] s, embeddings float32 [M, D])."""
    plan = sample_plan_for(video_path, probe(video_path), cfg, per_segment)
    segs = np.asarray(segments, dtype=np.int64)
    segs = segs[(segs >= 0) & (segs < plan.timestamps.shape[0])]
    stamps, shown = plan.timestamps[segs].ravel(), plan.frame_times[segs].ravel()
    copies = np.repeat(stamps[:, None], max(1, embedder.frames_per_segment), axis=1)
    if not len(copies):
        return shown, np.zeros((0, embedder.dim), dtype=np.float32)
    emb = embed_video(
        video_path, embedder, cfg, sampler=sampler, deadline=deadline, timestamps=copies
    )
    return shown, emb


def recording_similarity(
    video_path: str | Path,
    steps: list[str],
    cfg: PipelineConfig,
    embedder: Embedder,
    *,
    progress: ProgressFn | None = None,
    sampler: FrameSampler | None = None,
    video_sha256: str | None = None,
    deadline: Deadline | None = None,
) -> RecordingSimilarity:
    """Cosine similarity [K steps, N segments]; embeddings come from the cache when present.

    ``video_sha256``: the file's content hash where the caller knows it (the archive computes
    it while the upload streams), so the file is not read again for it.
    """
    timings: dict[str, float] = {}
    with timed(timings, "probe"):
        info = probe(video_path)
    if video_sha256 is None:
        with timed(timings, "hash"):
            video_sha256 = hash_video(video_path)
    sha = video_sha256
    cache = EmbeddingCache(cfg.cache_dir) if cfg.cache_dir else None
    fps, rule = embedder.frames_per_segment, cfg.sampling_key()
    cache_args = (sha, embedder.cache_key(), cfg.segment_seconds, fps, rule)
    video_emb = cache.get(*cache_args) if cache is not None else None
    frame_times = cache.get_frame_times(*cache_args) if video_emb is not None else None
    decode: dict[str, float] = {}
    texts: list[np.ndarray] = []

    def embed_texts() -> None:
        with timed(timings, "embed_text"):
            texts.append(
                cache.texts(embedder, steps) if cache is not None else embedder.embed_texts(steps)
            )

    if video_emb is None:
        with timed(timings, "probe"):
            plan = sample_plan_for(video_path, info, cfg, fps)
        video_emb = embed_video(
            video_path,
            embedder,
            cfg,
            timings=timings,
            progress=progress,
            sampler=sampler,
            info=info,
            plan=plan,
            deadline=deadline,
            decode_stats=decode,
            meanwhile=embed_texts,  # the step texts while the first batch decodes
        )
        frame_times = plan.frame_times
        if cache is not None:
            cache.put(*cache_args[:4], video_emb, rule, frame_times)
    elif frame_times is None:  # an entry made before frame times were kept: plan, no decoding
        frame_times = sample_plan_for(video_path, info, cfg, fps).frame_times
    if not texts:
        embed_texts()
    text_emb = texts[0]
    similarity = np.ascontiguousarray(text_emb @ video_emb.T, dtype=np.float32)
    return RecordingSimilarity(
        similarity, info.duration_s, sha, timings, video_emb, text_emb, frame_times, decode
    )


def aligner_params(
    method: str, configured: dict[str, Any], steps: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """The aligner parameters for one recording: the configured ones, plus the protocol's step
    texts for methods that use them (text-aware duration priors, docs/QUALITY.md).

    The CLI, the service worker, ``biovl eval`` and ``biovl realign`` all call this, so one
    recording gets the same alignment whichever path aligns it.
    """
    params = dict(configured)
    if "steps" in method_spec(method).defaults and "steps" not in params:
        params["steps"] = list(steps)
    return params


def align_video(
    video_path: str | Path,
    protocol: Protocol,
    cfg: PipelineConfig | None = None,
    *,
    embedder: Embedder | None = None,
    progress: ProgressFn | None = None,
    sampler: FrameSampler | None = None,
    align_fn: AlignFn = align,
    group: GroupContext | None = None,
    video_sha256: str | None = None,
) -> AlignmentResult:
    """Align every protocol step of ``protocol`` to its span in the video at ``video_path``.

    ``embedder``, ``sampler`` and ``align_fn`` replace the configured stages (the service
    passes stand-ins that call its Embedder, Decoder and Aligner deployments). ``group``: the
    other recordings of this protocol (``services/groups.py``); with the default method and
    members whose embeddings are cached, ``coalign`` replaces ``align_fn``, and with
    ``cfg.refine_boundaries`` the group alignment's change points move off the segment grid
    (``group_stage.refine_group_spans``; ``timings["refine"]``, ``group["refined"]``: how
    many change points moved). ``video_sha256``: the file's hash where known (never read
    again for it). ``cfg.job_deadline_s`` bounds the whole run, checked between batches
    (`biovl_core.deadline`).
    """
    cfg = cfg or PipelineConfig()
    deadline = Deadline(cfg.job_deadline_s, video_path)
    total_start = time.perf_counter()
    load_timings: dict[str, float] = {}
    with timed(load_timings, "load_model"):
        embedder = embedder or load_embedder(cfg)
    rec = recording_similarity(
        video_path,
        list(protocol.steps),
        cfg,
        embedder,
        progress=progress,
        sampler=sampler,
        video_sha256=video_sha256,
        deadline=deadline,
    )
    timings = {**load_timings, **rec.timings}
    method = resolve_method(cfg)
    params = aligner_params(method, cfg.method_params, protocol.steps)
    alignment, group_info, peers, spans = None, None, None, None
    if group is not None:  # co-alignment runs here, never on a remote aligner: its own stage
        with timed(timings, "group_align"):
            alignment, group_info, peers = align_in_group(rec, group, cfg, embedder, method)
    if alignment is not None and peers is not None and cfg.refine_boundaries:
        with timed(timings, "refine"):  # change points off the grid (group_stage)
            frames_in = partial(
                frames_in_segments,
                video_path,
                embedder=embedder,
                cfg=cfg,
                sampler=sampler,
                deadline=deadline,
            )
            spans, moved, hidden = refine_group_spans(
                peers, len(alignment.spans), frames_in, cfg.segment_seconds, rec.duration_s
            )
        if alignment.confidence is not None:  # a hidden step's: how strongly its frames show it
            alignment.confidence[list(hidden)] = list(hidden.values())
        group_info = {**(group_info or {}), "refined": moved, "hidden_steps": sorted(hidden)}
    with timed(timings, "align"):
        if alignment is None:
            alignment = align_fn(
                rec.similarity,
                segment_seconds=cfg.segment_seconds,
                method=method,
                backend=cfg.backend,
                duration_s=rec.duration_s,
                **params,
            )
        baseline = align(
            rec.similarity,
            segment_seconds=cfg.segment_seconds,
            method="uniform",
            duration_s=rec.duration_s,
        )
    timings["total"] = time.perf_counter() - total_start
    return alignment_result(
        list(protocol.steps),
        rec.similarity,
        alignment,
        baseline,
        segment_seconds=cfg.segment_seconds,
        duration_s=rec.duration_s,
        model_id=embedder.model_id,
        weights=embedder.weights,
        video_sha256=rec.video_sha256,
        title=protocol.title,
        config=cfg.to_dict(),
        timings=timings,
        notes=protocol.notes,
        step_lines=protocol.lines,
        group=group_info,
        frame_times=rec.frame_times,
        decode=rec.decode,
        spans=spans,
    )


def alignment_result(
    steps: list[str],
    similarity: np.ndarray,
    alignment: Alignment,
    baseline: Alignment,
    *,
    segment_seconds: float,
    duration_s: float,
    model_id: str,
    weights: str,
    video_sha256: str,
    title: str,
    config: dict[str, Any],
    timings: dict[str, float],
    notes: list[list[str]] | None = None,
    step_lines: list[int | None] | None = None,
    group: dict[str, Any] | None = None,
    frame_times: np.ndarray | list[list[float]] | None = None,
    decode: dict[str, float] | None = None,
    spans: list[Span] | None = None,
) -> AlignmentResult:
    """The ``AlignmentResult`` of one recording; ``align_video`` and ``biovl realign`` both
    build theirs here, so a re-aligned result has exactly the fields of a fresh one.
    ``notes`` / ``step_lines``: the protocol's notes and source line per step;
    ``frame_times``: the time of every embedded frame, [N, k] seconds; ``spans``: the spans
    reported instead of the alignment's grid spans (refined boundaries); the deviation report
    stays on the grid spans (docs/QUALITY.md "Boundaries finer than the grid")."""
    return AlignmentResult(
        steps=list(steps),
        spans=list(alignment.spans if spans is None else spans),
        step_scores=step_scores(similarity, alignment.labels),
        labels=np.asarray(alignment.labels),
        similarity=similarity,
        segment_seconds=segment_seconds,
        duration_s=duration_s,
        method=alignment.method,
        score=float(alignment.score),
        model_id=model_id,
        weights=weights,
        video_sha256=video_sha256,
        title=title,
        aligner_version=__version__,
        config=config,
        timings=dict(timings),
        baseline_spans=list(baseline.spans),
        notes=[list(n) for n in notes or []],
        step_lines=list(step_lines or []),
        confidence=None if alignment.confidence is None else list(map(float, alignment.confidence)),
        group=group,
        frame_times=None
        if frame_times is None
        else [[round(float(t), 6) for t in row] for row in frame_times],
        decode=dict(decode or {}),
        deviations=None
        if alignment.priors is None
        else deviation_report(
            alignment.spans,
            alignment.confidence,
            alignment.priors,
            segment_seconds,
            alignment.labels,
            alignment.segment_fit,
            seen=[s for s, span in enumerate(spans or []) if span is not None],
        ),
        lab_steps=step_ranges(alignment.priors),
    )


def step_scores(similarity: np.ndarray, labels: np.ndarray) -> list[float | None]:
    """Mean similarity of each step over the segments assigned to it (None when it has none)."""
    scores: list[float | None] = []
    for k in range(similarity.shape[0]):
        mask = labels == k
        scores.append(float(similarity[k, mask].mean()) if mask.any() else None)
    return scores

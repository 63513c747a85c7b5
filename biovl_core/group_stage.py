"""The pipeline's group stage (``align_video`` with a ``GroupContext``): a recording co-aligned
with its group's cached embeddings (``align_in_group``), then its change points moved off the
segment grid where frames inside the boundary segments say so (``refine_group_spans``; the
switch is ``PipelineConfig.refine_boundaries``, docs/QUALITY.md "Boundaries finer than the grid").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from biovl_core.align import TEXT_METHOD, Alignment, GroupContext, GroupMember, coalign
from biovl_core.align.refine import FramesIn, refine_in_group
from biovl_core.config import PipelineConfig
from biovl_core.embed import Embedder, EmbeddingCache
from biovl_core.result import Span


class Embedded(Protocol):
    """What the group stage reads of a recording (``pipeline.RecordingSimilarity``)."""

    frames: np.ndarray | None  # float32 [N, D] segment embeddings
    texts: np.ndarray | None  # float32 [K, D] step embeddings
    duration_s: float
    video_sha256: str


@dataclass(frozen=True)
class GroupPeers:
    """Every recording of a group alignment, the new one last: segment embeddings [N_j, D] and
    grid labels [N_j] (the other recordings' labels give each step its look)."""

    frames: list[np.ndarray]
    labels: list[np.ndarray]


def align_in_group(
    rec: Embedded,
    group: GroupContext | None,
    cfg: PipelineConfig,
    embedder: Embedder,
    method: str,
) -> tuple[Alignment | None, dict[str, Any] | None, GroupPeers | None]:
    """(alignment, group info, peers) of a recording with its group's cached embeddings; the
    alignment is None (align alone) without a group, with another method than the group's text
    method, or when no member's embeddings are in the cache. ``peers`` is None unless the group
    alignment was applied (the recording fits its group)."""
    if group is None:
        return None, None, None
    used: list[GroupMember] = []
    frames: list[np.ndarray] = []
    if method == TEXT_METHOD and cfg.cache_dir and rec.frames is not None:
        cache = EmbeddingCache(cfg.cache_dir)
        key, fps = embedder.cache_key(), embedder.frames_per_segment
        for member in group.members:
            if member.video_sha256 == rec.video_sha256:
                continue  # the same video cannot confirm itself
            emb = cache.get(member.video_sha256, key, cfg.segment_seconds, fps, cfg.sampling_key())
            if emb is not None and emb.shape[1] == rec.frames.shape[1]:
                used.append(member)
                frames.append(emb)
    if not used:
        return None, group.info(used, applied=False), None
    durations = [f.shape[0] * cfg.segment_seconds for f in frames] + [rec.duration_s]
    every = coalign(
        [*frames, rec.frames],
        rec.texts,
        [m.annotation for m in used] + [None],
        durations,
        cfg.segment_seconds,
    )
    alignment, applied = every[-1], every[-1].method != TEXT_METHOD
    peers = GroupPeers([*frames, rec.frames], [a.labels for a in every]) if applied else None
    return alignment, group.info(used, applied=applied), peers


def refine_group_spans(
    peers: GroupPeers,
    k: int,
    frames_in: FramesIn,
    segment_seconds: float,
    duration_s: float,
) -> tuple[list[Span], int, dict[int, float]]:
    """The new recording's K spans with its change points refined (``refine.refine_in_group``),
    how many moved and the skipped steps its frames show after all, with their confidence
    (``hidden_steps``);
    ``frames_in`` decodes and embeds its frames inside given segments."""
    last = len(peers.frames) - 1
    return refine_in_group(
        peers.frames, peers.labels, last, k, frames_in, segment_seconds, duration_s
    )

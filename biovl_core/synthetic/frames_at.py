"""Frames at any time inside a synthetic lab recording (``biovl_core.synthetic.lab``).

A lab recording's segment embeddings mix what each 5 s segment shows; sub-grid boundary
refinement (``biovl_core.align.refine``) needs single frames at chosen times. ``frames_at``
draws them from what the recording drew (its actions' looks, the scene, the camera offset, the
slow drift at that segment, the idle look in gaps), each showing what is active at its time,
plus fresh per-frame noise from its own random stream, so drawing them never changes the
recording's segment frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RecordingDraws:
    """What one synthetic recording drew, to show a frame at any time."""

    shown: np.ndarray  # [actions, D] the look of each action as done
    spans: tuple[tuple[float, float], ...]  # each action's (start, end) in seconds
    base: np.ndarray  # [N, D] scene + camera offset + drift per segment
    idle: np.ndarray  # [D] the background look (scaled)
    noise_sd: float  # per-coordinate sd of the frame noise
    segment_seconds: float


def frames_at(draws: RecordingDraws, times: np.ndarray, seed: int = 0) -> np.ndarray:
    """L2-normalised float32 frames [M, D] at ``times`` (seconds), noise from ``seed``."""
    t = np.asarray(times, dtype=np.float64)
    n, d = draws.base.shape
    seg_index = np.clip((t // draws.segment_seconds).astype(int), 0, n - 1)
    active = np.zeros((t.size, len(draws.spans)))
    for a, (start, end) in enumerate(draws.spans):
        active[:, a] = (t >= start) & (t < end)
    busy = np.clip(active.sum(axis=1), 0.0, 1.0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B6D]))
    out = (
        draws.base[seg_index]
        + active @ draws.shown
        + (1.0 - busy)[:, None] * draws.idle[None, :]
        + rng.normal(0.0, draws.noise_sd, (t.size, d))
    )
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norm, 1e-12)).astype(np.float32)


def noise_sd(noise: float, dim: int) -> float:
    """The per-coordinate sd of a frame noise whose norm is about ``noise``."""
    return noise / math.sqrt(dim)

"""The result of aligning one recording: what the CLI prints, the service stores and the viewer shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Span = tuple[float, float] | None


@dataclass
class AlignmentResult:
    """Step spans for one recording, with everything needed to reproduce and explain them."""

    steps: list[str]  # protocol steps, in protocol order
    spans: list[Span]  # one per step: (start_s, end_s) or None (step not found)
    step_scores: list[float | None]  # mean similarity over each step's segments (None if no span)
    labels: np.ndarray  # int [N]: step index per segment, -1 = background
    similarity: np.ndarray  # float32 [K, N] similarity the aligner saw
    segment_seconds: float
    duration_s: float
    method: str  # aligner method actually used ("nw", "drop_dtw", ...)
    score: float  # the aligner's objective at the optimum
    model_id: str = ""  # e.g. "open_clip:ViT-B-32"
    weights: str = ""  # "pretrained:<tag>" | "checkpoint:<path>" | "random-demo"
    video_sha256: str = ""
    title: str = ""
    aligner_version: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    baseline_spans: list[Span] | None = None  # the uniform baseline, for reports
    notes: list[list[str]] = field(default_factory=list)  # per step: its protocol notes
    step_lines: list[int | None] = field(default_factory=list)  # per step: protocol line
    confidence: list[float] | None = None  # per step in [0, 1], where the aligner gives one
    group: dict[str, Any] | None = None  # the recordings of its protocol that helped (groups)
    frame_times: list[list[float]] | None = None  # per segment: time (s) of each embedded frame
    decode: dict[str, float] = field(default_factory=dict)  # decoding cost (frames, bytes, samples)
    # What this recording did differently from its lab's usual (``align.deviations``), and per
    # step the lab's usual duration range and skip rate; None where no group alignment ran.
    deviations: list[dict[str, Any]] | None = None
    lab_steps: list[dict[str, Any]] | None = None

    def step_notes(self, k: int) -> list[str]:
        """The notes of step k ([] where the protocol gave none)."""
        return list(self.notes[k]) if k < len(self.notes) else []

    def step_line(self, k: int) -> int | None:
        """The protocol source line of step k (None where unknown)."""
        return self.step_lines[k] if k < len(self.step_lines) else None

    @property
    def num_segments(self) -> int:
        """N, the number of segments."""
        return int(self.similarity.shape[1])

"""Pipeline configuration: the one place where defaults live.

Every stage reads its settings from a ``PipelineConfig``; the CLI, the service and the
archive re-aligner build one from flags / YAML / environment and pass it down.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

RANDOM_WEIGHTS_ENV = "BIOVL_ALLOW_RANDOM_WEIGHTS"

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"


def env_flag(name: str) -> bool:
    """True when the environment variable is set to 1/true/yes/on."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class PipelineConfig:
    """Everything that decides how a recording is aligned (and so what a cache key holds)."""

    segment_seconds: float = 5.0
    # embedding
    embedder: str = "clip"  # "clip" (middle frame) | "clip_pooled" (k frames, mean) | "s3d"
    model: str = DEFAULT_MODEL  # open_clip model name, or a path to a model config JSON
    pretrained: str | None = DEFAULT_PRETRAINED  # open_clip tag, or None
    checkpoint: str | None = None  # local weights file; overrides `pretrained`
    frames_per_segment: int = 1  # 1 for "clip"; k evenly spaced frames for clip models
    prompt_templates: tuple[str, ...] = ("{}",)
    batch_size: int = 64
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    allow_random_weights: bool = field(default_factory=lambda: env_flag(RANDOM_WEIGHTS_ENV))
    # decoding (SPEC.md "Frames"; biovl_core/video/segments.py)
    decoder: str = "auto"  # "auto" | "pyav" | "dali"
    sampling: str = "keyframe"  # "keyframe": nearest keyframe within the tolerance | "exact"
    keyframe_tolerance_s: float = 1.0  # how far a keyframe may lie from a sample's exact time
    job_deadline_s: float | None = 3600.0  # wall seconds one recording may take; None: no limit
    # alignment
    method: str = "default"  # "default" | "uniform" | "nw" | "drop_dtw" | ...
    method_params: dict[str, Any] = field(default_factory=dict)
    backend: str = "auto"  # "auto" | "numpy" | "numba" | "cupy"
    # Group alignments only (``biovl_core.group_stage``): each change of step moves off the
    # segment grid where frames inside the two segments beside it say so (docs/QUALITY.md
    # "Boundaries finer than the grid"). Costs 4 more frames decoded and embedded in each
    # segment beside a change point (8 per change point, about 16 per step), picked by the
    # frame rule above, so each costs about what a segment's frame costs (k-frame embedders
    # embed k copies of each).
    refine_boundaries: bool = True
    cache_dir: str | None = None  # embedding cache folder; None disables caching

    def __post_init__(self) -> None:
        if not isinstance(self.refine_boundaries, bool):
            raise ValueError(
                f"refine_boundaries must be true or false, got {self.refine_boundaries!r}; "
                "set it in the pipeline configuration as a boolean"
            )

    def sampling_key(self) -> str:
        """The frame rule as cache keys record it: "exact", or "keyframe:<tolerance>"."""
        return "exact" if self.sampling == "exact" else f"keyframe:{self.keyframe_tolerance_s:g}"

    def replace(self, **changes: Any) -> PipelineConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for job records and result files)."""
        d = dataclasses.asdict(self)
        d["prompt_templates"] = list(self.prompt_templates)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        """Build from a dict, refusing unknown keys with a message listing the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown configuration key(s) {unknown}; known keys: {sorted(known)}")
        data = dict(data)
        if "prompt_templates" in data:
            data["prompt_templates"] = tuple(data["prompt_templates"])
        return cls(**data)

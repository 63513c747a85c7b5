"""How long a recording's segments are: shorter than configured when a short recording has more
steps than segments (the CLI, ``biovl eval`` and the service's upload check decide it here), and
which aligner method a configuration names. Light: no model or decoder is imported."""

from __future__ import annotations

import math

from biovl_core.align import DEFAULT_METHOD
from biovl_core.align import resolve_method as method_spec
from biovl_core.config import PipelineConfig
from biovl_core.errors import BioVLError
from biovl_core.video import segment_count

MIN_SEGMENT_SECONDS = 1.0  # the shortest segments the CLI falls back to for step-dense videos


def fit_segment_seconds(
    cfg: PipelineConfig, num_steps: int, duration_s: float, what: str
) -> tuple[PipelineConfig, str | None]:
    """Decide before decoding that every step can get a segment: shorter segments if needed.

    Methods that give each step at least one segment need K <= N. When the configured
    segments are too long, the longest segment length (0.1 s steps, at least
    ``MIN_SEGMENT_SECONDS``) that gives N >= K is used, with a note saying so; below that
    floor the recording is refused with a fix that names CLI flags.
    """
    if method_spec(resolve_method(cfg)).direct is not None:
        return cfg, None
    seg = cfg.segment_seconds
    have = segment_count(duration_s, seg)
    if num_steps <= have:
        return cfg, None
    shorter = math.floor(duration_s / num_steps * 10) / 10
    while shorter >= MIN_SEGMENT_SECONDS and segment_count(duration_s, shorter) < num_steps:
        shorter = round(shorter - 0.1, 1)
    if shorter < MIN_SEGMENT_SECONDS:
        most = segment_count(duration_s, MIN_SEGMENT_SECONDS)
        raise BioVLError(
            f"{what}: {num_steps} steps need at least {num_steps} segments, but {duration_s:.1f} s "
            f"of video gives only {most} even with {MIN_SEGMENT_SECONDS:g} s segments; merge "
            "steps in the protocol, or align with --method uniform"
        )
    note = (
        f"note: {num_steps} steps but only {have} segments of {seg:g} s in {duration_s:.1f} s "
        f"of video; using {shorter:g} s segments (choose with --segment-seconds)"
    )
    return cfg.replace(segment_seconds=shorter), note


def resolve_method(cfg: PipelineConfig) -> str:
    """The aligner method the configuration asks for ('default' -> the project's best)."""
    return DEFAULT_METHOD if cfg.method == "default" else cfg.method

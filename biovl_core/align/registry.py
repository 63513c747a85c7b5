"""What an alignment method is and where methods are found: the kernel's problem, the result, the registry."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from biovl_core.align.priors import GroupPriors
from biovl_core.errors import BioVLError
from biovl_core.result import Span


@dataclass
class Alignment:
    """One alignment: a span per step (seconds, or None), a step label per segment, the optimum."""

    spans: list[Span]
    labels: np.ndarray
    score: float
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    # Per-step confidence in [0, 1] (float array [K]); set by ``align_group``, None elsewhere.
    confidence: np.ndarray | None = None
    # Set by ``align_group``: what the other recordings say about each step (leave-one-out),
    # and per segment how well it fits any exemplar (robust z; low = fits no step, not idle).
    priors: GroupPriors | None = None
    segment_fit: np.ndarray | None = None


@dataclass
class SegmentationProblem:
    """Input of the generic kernel: match scores [K, N] and drop scores [N] (``-inf`` = no drop)."""

    match: np.ndarray
    drop: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: either ``prepare`` (builds a kernel problem) or ``direct`` (no DP)."""

    name: str
    description: str
    defaults: Mapping[str, Any]
    prepare: Callable[[np.ndarray, dict[str, Any]], SegmentationProblem] | None = None
    direct: (
        Callable[[np.ndarray, float, float, dict[str, Any]], tuple[list[Span], np.ndarray]] | None
    ) = None


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to ``METHODS`` (refusing a duplicate name) so ``align(method=name)`` finds it."""
    if (spec.prepare is None) == (spec.direct is None):
        raise ValueError(f"method {spec.name!r} must define exactly one of prepare / direct")
    if spec.name in METHODS or spec.name == "default":
        raise ValueError(f"method name {spec.name!r} is already taken; pick another name")
    METHODS[spec.name] = spec
    return spec


def float_param(name: str, value: Any, method: str) -> float:
    """A finite float parameter, or an error naming it."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise BioVLError(f"{method}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise BioVLError(f"{method}: {name} must be finite, got {value!r}")
    return out


# The project's best method (see docs/QUALITY.md); "nw" stays available as the paper's setting.
DEFAULT_METHOD = "biovl"


def resolve_method(method: str) -> MethodSpec:
    """The spec of ``method`` ('default' = DEFAULT_METHOD), or an error listing the known ones."""
    name = DEFAULT_METHOD if method == "default" else method
    if name not in METHODS:
        raise BioVLError(
            f"unknown alignment method {method!r}; choose one of {sorted(METHODS)} or 'default'"
        )
    return METHODS[name]


def method_params(spec: MethodSpec, given: Mapping[str, Any]) -> dict[str, Any]:
    """Method defaults overlaid with the given parameters; unknown names are refused."""
    unknown = sorted(set(given) - set(spec.defaults))
    if unknown:
        accepted = sorted(spec.defaults) or "none"
        raise BioVLError(
            f"method {spec.name!r} does not take parameter(s) {unknown}; accepted: {accepted}"
        )
    return {**spec.defaults, **given}


def validate_similarity(similarity: Any, what: str = "similarity") -> np.ndarray:
    """Check a [K steps, N segments] finite matrix and return it as contiguous float32."""
    try:
        arr = np.asarray(similarity)
        if arr.dtype != np.float32:
            arr = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise BioVLError(
            f"{what} must be a numeric 2-D array [K steps, N segments]; could not convert it ({exc})"
        ) from None
    if arr.ndim != 2:
        raise BioVLError(
            f"{what} must be 2-D [K steps, N segments]; got {arr.ndim}-D shape {arr.shape}. "
            "Pass one matrix per video (use align_batch for several)."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BioVLError(
            f"{what} is empty (shape {arr.shape}): the protocol needs at least one step and "
            "the video at least one segment"
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise BioVLError(
            f"{what} has {int(bad.sum())} NaN/inf value(s), first at step {i}, segment {j}; "
            "check the embeddings (zero vectors give NaN cosines) or clean with np.nan_to_num"
        )
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise BioVLError(f"{what} has values too large for float32; rescale the similarities")
    return out


def spans_from_labels(
    labels: np.ndarray, k: int, segment_seconds: float, duration_s: float
) -> list[Span]:
    """Span of each step from its first and last segment (None when it has none).

    ``labels`` must be monotonic (as every method's are): step indices never decrease
    over the non-background segments.
    """
    idx = np.flatnonzero(labels >= 0)
    steps = labels[idx]
    wanted = np.arange(k)
    first = np.searchsorted(steps, wanted, side="left")
    last = np.searchsorted(steps, wanted, side="right") - 1
    spans: list[Span] = []
    for a_pos, b_pos in zip(first.tolist(), last.tolist(), strict=True):
        if b_pos < a_pos:
            spans.append(None)
            continue
        a, b = int(idx[a_pos]), int(idx[b_pos])
        spans.append((a * segment_seconds, min((b + 1) * segment_seconds, duration_s)))
    return spans


def objective(match: np.ndarray, drop: np.ndarray, labels: np.ndarray) -> float:
    """The segmentation objective of ``labels`` in float64: matched scores plus drop scores."""
    matched = labels >= 0
    cols = np.flatnonzero(matched)
    total = float(match[labels[cols], cols].astype(np.float64).sum())
    return total + float(drop[~matched].astype(np.float64).sum())

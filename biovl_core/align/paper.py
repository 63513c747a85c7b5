"""The BioVL paper's methods: the uniform baseline, Needleman-Wunsch, and Drop-DTW (Algorithm 1)."""

from __future__ import annotations

from typing import Any

import numpy as np

from biovl_core.align.registry import MethodSpec, SegmentationProblem, float_param, register_method
from biovl_core.errors import BioVLError
from biovl_core.result import Span


def prepare_nw(sim: np.ndarray, params: dict[str, Any]) -> SegmentationProblem:
    """Needleman-Wunsch as in the BioVL paper: every segment belongs to a step."""
    drop = np.full(sim.shape[1], -np.inf, dtype=np.float32)
    return SegmentationProblem(sim, drop)


def prepare_drop_dtw(sim: np.ndarray, params: dict[str, Any]) -> SegmentationProblem:
    """Drop-DTW (exclusive, contiguous): background costs ``drop_cost`` per segment.

    Like Drop-DTW's Algorithm 1, steps are never dropped (each gets >= 1 segment). Without an
    explicit ``drop_cost`` it is set per video as in Drop-DTW, from a percentile of the match
    costs (``-sim``): ``drop_cost = -percentile(sim, drop_percentile)``, so dropping a segment
    pays off where its similarity is below that percentile.
    """
    n = sim.shape[1]
    cost = params.get("drop_cost")
    if cost is None:
        pct = float_param("drop_percentile", params["drop_percentile"], "drop_dtw")
        if not 0.0 <= pct <= 100.0:
            raise BioVLError(f"drop_dtw: drop_percentile must be in [0, 100], got {pct}")
        value = -float(np.percentile(sim, pct))
        return SegmentationProblem(
            sim, np.full(n, -value, dtype=np.float32), {"drop_cost": value, "drop_percentile": pct}
        )
    arr = np.asarray(cost, dtype=np.float64)
    if arr.ndim == 0:
        value = float_param("drop_cost", cost, "drop_dtw")
        return SegmentationProblem(sim, np.full(n, -value, dtype=np.float32), {"drop_cost": value})
    if arr.shape != (n,):
        raise BioVLError(
            f"drop_dtw: drop_cost must be a number or one value per segment (shape ({n},)); "
            f"got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise BioVLError("drop_dtw: drop_cost contains NaN or inf; give finite costs")
    return SegmentationProblem(sim, (-arr).astype(np.float32), {"drop_cost": "per-segment"})


def _uniform(
    sim: np.ndarray, segment_seconds: float, duration_s: float, params: dict[str, Any]
) -> tuple[list[Span], np.ndarray]:
    """The paper's baseline: the video cut into K equal parts, each segment labelled by its midpoint."""
    k, n = sim.shape
    edges = np.linspace(0.0, duration_s, k + 1)
    spans: list[Span] = [(float(edges[i]), float(edges[i + 1])) for i in range(k)]
    starts = np.arange(n) * segment_seconds
    mids = (starts + np.minimum(starts + segment_seconds, duration_s)) / 2.0
    labels = np.clip((mids * k / duration_s).astype(np.int64), 0, k - 1)
    return spans, labels


register_method(
    MethodSpec("uniform", "video cut into K equal parts (BioVL baseline)", {}, direct=_uniform)
)


register_method(
    MethodSpec(
        "nw", "monotonic, every segment assigned (BioVL paper's Needleman-Wunsch)", {}, prepare_nw
    )
)


register_method(
    MethodSpec(
        "drop_dtw",
        "monotonic with background segments at a drop cost (Drop-DTW, exclusive & contiguous)",
        {"drop_cost": None, "drop_percentile": 70.0},
        prepare_drop_dtw,
    )
)


def constant_drop(spec: MethodSpec, full: dict[str, Any]) -> tuple[float, float, dict] | None:
    """For the built-in methods with a per-video constant drop: (drop score, percentile, params).

    ``percentile >= 0`` asks the kernel to set each video's drop score to that percentile
    of its similarities; ``None`` means the method needs the generic per-video path.
    """
    if spec.prepare is prepare_nw:
        return float("-inf"), -1.0, {}
    if spec.prepare is not prepare_drop_dtw:
        return None
    cost = full.get("drop_cost")
    if cost is None:
        pct = float_param("drop_percentile", full["drop_percentile"], "drop_dtw")
        if not 0.0 <= pct <= 100.0:
            raise BioVLError(f"drop_dtw: drop_percentile must be in [0, 100], got {pct}")
        return 0.0, pct, {"drop_percentile": pct}
    if np.ndim(cost) != 0:
        return None
    value = float_param("drop_cost", cost, "drop_dtw")
    return -value, -1.0, {"drop_cost": value}

"""Boundaries finer than the 5 s grid, where frames inside the boundary segments support it.

```python
from biovl_core.align.refine import boundary_times, refine_spans
times = boundary_times(labels, segment_seconds=5.0, per_segment=4)      # what to decode
spans = refine_spans(labels, k, looks, background, times, frames_at_times, 5.0, duration_s)
# or, in a group (what the pipeline does): looks from the other recordings, decoding by callback
spans, moved, found = refine_in_group(frames, labels, i, k, frames_in, 5.0, duration_s)
```

An alignment on the grid puts every change of step (or step to background) on a segment edge
``i x seg``. The true change lies in one of the two segments beside that edge (a segment's
embedding mixes what it shows). ``boundary_times`` names ``per_segment`` evenly spaced times
inside each of those two segments for every change point; the caller decodes and embeds
frames there (the same image embedder as the segments). ``refine_spans`` then moves each
change point to the split of those frames that best separates the look before (the step or
the background look) from the look after: the score of a split is the summed cosine of the
frames before it to the look before plus of the frames after it to the look after. A change
point moves only when the best split beats the grid edge by more than ``min_gain`` (summed
cosine); with frames that show neither look it stays on the grid. Each change point moves at
most half way into the run of segments on either side, so spans keep their order and never
overlap, and the first and last runs keep half their grid length; steps not performed stay
None. In a group, ``refine_in_group`` takes the looks from the other recordings
(``looks_from_others``) and centres the new frames like the segments (``centred``); it also
samples between a skipped step's neighbours and gives the step a span where those frames show
it (``biovl_core.align.hidden_steps``: a step shorter than a segment).
docs/QUALITY.md "Boundaries finer than the grid" has what it buys on the lab generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from biovl_core.align.hidden_steps import (
    MIN_HIDDEN_GAIN,
    find_hidden,
    hidden_windows,
    insert_hidden,
    unit_rows,
)
from biovl_core.result import Span

PER_SEGMENT = 4  # frames sampled in each of the two segments beside a change point
MIN_GAIN = 0.1  # summed cosine a split must gain over the grid edge (dev seeds 0-9)
BACKGROUND = -1


@dataclass(frozen=True)
class ChangePoint:
    """Where the labels change from ``before`` to ``after`` (-1: background), at segment edge
    ``edge`` (seconds ``edge x seg``)."""

    edge: int
    before: int
    after: int


def change_points(labels: np.ndarray) -> list[ChangePoint]:
    """Every segment edge inside the recording where the label changes."""
    lab = np.asarray(labels)
    edges = np.flatnonzero(lab[1:] != lab[:-1]) + 1
    return [ChangePoint(int(i), int(lab[i - 1]), int(lab[i])) for i in edges]


def boundary_segments(labels: np.ndarray) -> np.ndarray:
    """Sorted, distinct indices of the segments beside a change point (both sides of each)."""
    return np.array(
        sorted({s for cp in change_points(labels) for s in (cp.edge - 1, cp.edge)}), dtype=np.int64
    )


def segment_times(
    segments: np.ndarray, segment_seconds: float, per_segment: int = PER_SEGMENT
) -> np.ndarray:
    """The centres of ``per_segment`` equal parts of each of ``segments`` (s), in order."""
    seg = float(segment_seconds)
    offsets = (np.arange(per_segment) + 0.5) * seg / per_segment
    return (np.asarray(segments, dtype=np.float64)[:, None] * seg + offsets).ravel()


def boundary_times(
    labels: np.ndarray, segment_seconds: float, per_segment: int = PER_SEGMENT
) -> np.ndarray:
    """Sorted, distinct times (s) to sample: ``per_segment`` per segment beside each change."""
    return segment_times(boundary_segments(labels), segment_seconds, per_segment)


def refine_change_points(
    points: list[ChangePoint],
    looks: np.ndarray,
    background: np.ndarray | None,
    times: np.ndarray,
    frames: np.ndarray,
    segment_seconds: float,
    min_gain: float = MIN_GAIN,
    n_segments: int | None = None,
) -> list[float]:
    """Per change point its refined time (s); see the module doc. A change point moves at most
    one segment, and at most half way into the run of segments beside it (the recording's
    ``n_segments`` bound the last run), so no change point passes its neighbour."""
    seg = float(segment_seconds)
    t = np.asarray(times, dtype=np.float64)
    f = unit_rows(np.asarray(frames, dtype=np.float64))
    unit_looks = unit_rows(np.asarray(looks, dtype=np.float64))
    idle = None if background is None else unit_rows(np.asarray(background, dtype=np.float64))
    out: list[float] = []
    for j, cp in enumerate(points):
        grid = cp.edge * seg
        first = points[j - 1].edge if j > 0 else 0
        last = points[j + 1].edge if j + 1 < len(points) else n_segments
        lo = max(grid - seg, (first + cp.edge) * seg / 2.0)
        hi = grid + seg if last is None else min(grid + seg, (cp.edge + last) * seg / 2.0)
        inside = (t > lo) & (t < hi)
        look_a = idle if cp.before == BACKGROUND else unit_looks[cp.before]
        look_b = idle if cp.after == BACKGROUND else unit_looks[cp.after]
        if look_a is None or look_b is None or inside.sum() < 2:
            out.append(grid)
            continue
        ts, fs = t[inside], f[inside]
        gain_a, gain_b = fs @ look_a, fs @ look_b
        # a split after the first m samples scores sum(a[:m]) + sum(b[m:])
        scores = np.concatenate([[0.0], np.cumsum(gain_a - gain_b)]) + gain_b.sum()
        cuts = np.concatenate([[lo], (ts[:-1] + ts[1:]) / 2.0, [hi]])
        at_grid = scores[int(np.searchsorted(ts, grid))]
        m = int(np.argmax(scores))
        out.append(float(cuts[m]) if scores[m] - at_grid > min_gain else grid)
    return out


def refine_spans(
    labels: np.ndarray,
    k: int,
    looks: np.ndarray,
    background: np.ndarray | None,
    times: np.ndarray,
    frames: np.ndarray,
    segment_seconds: float,
    duration_s: float,
    min_gain: float = MIN_GAIN,
) -> list[Span]:
    """K spans from grid ``labels`` [N] with their ends moved where the sampled frames say so
    (``times`` [M] s, ``frames`` [M, D] embedded like ``looks`` [K, D] and ``background`` [D])."""
    lab = np.asarray(labels)
    points = change_points(lab)
    moved = refine_change_points(
        points, looks, background, times, frames, segment_seconds, min_gain, lab.shape[0]
    )
    return _spans_at(lab, k, points, moved, segment_seconds, duration_s)


def _spans_at(
    labels: np.ndarray,
    k: int,
    points: list[ChangePoint],
    moved: list[float],
    segment_seconds: float,
    duration_s: float,
) -> list[Span]:
    """K spans from grid ``labels`` with each change point at its ``moved`` time (s), both
    ends clipped to ``duration_s``; steps without a segment are None."""
    at_edge = {cp.edge: x for cp, x in zip(points, moved, strict=True)}
    seg, dur = float(segment_seconds), float(duration_s)
    spans: list[Span] = []
    for s in range(k):
        cols = np.flatnonzero(labels == s)
        if cols.size == 0:
            spans.append(None)
            continue
        a, b = int(cols[0]), int(cols[-1]) + 1
        start = min(at_edge.get(a, a * seg), dur)
        end = min(at_edge.get(b, b * seg), dur)
        spans.append((float(start), float(max(end, start))))
    return spans


def centred(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows with ``mean`` (the recording's mean segment frame) removed, re-normalised: how
    ``biovl_core.align.group`` centres a recording's segments, applied to any frames of it."""
    return unit_rows(np.asarray(x, dtype=np.float64) - np.asarray(mean, dtype=np.float64))


def looks_from_others(
    frames: Sequence[np.ndarray], labels: Sequence[np.ndarray], i: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per step [K, D] (and the background [D]) the summed centred segment frames of every
    recording but ``i`` under its labels (``refine_spans`` only needs their directions)."""
    d = frames[0].shape[1]
    sums, bg = np.zeros((k, d)), np.zeros(d)
    for j, (f, lab) in enumerate(zip(frames, labels, strict=True)):
        if j == i:
            continue
        x = centred(f, f.mean(axis=0))
        lab = np.asarray(lab)
        for s in range(k):
            sums[s] += x[lab == s].sum(axis=0)
        bg += x[lab < 0].sum(axis=0)
    return sums, bg


FramesIn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""``frames_in(segments, per_segment)``: ``per_segment`` frames inside each of ``segments``
(indices), embedded like the segments: (the times they show [M] s, embeddings [M, D])."""


def refine_in_group(
    frames: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    i: int,
    k: int,
    frames_in: FramesIn,
    segment_seconds: float,
    duration_s: float,
    per_segment: int = PER_SEGMENT,
    min_gain: float = MIN_GAIN,
    min_hidden_gain: float = MIN_HIDDEN_GAIN,
) -> tuple[list[Span], int, dict[int, float]]:
    """Recording ``i``'s spans with its change points refined against the other recordings'
    looks, how many change points moved, and the skipped steps the frames show after all with
    their confidence (``biovl_core.align.hidden_steps``; they get their span; ``inf`` gain:
    never).

    ``frames[j]`` [N_j, D] and ``labels[j]`` [N_j] are every group member's segment embeddings
    and grid labels; ``frames_in`` gives recording ``i``'s frames inside the segments beside
    its change points and between a skipped step's neighbours (``FramesIn``; the pipeline
    decodes them by its frame rule).
    """
    lab = np.asarray(labels[i])
    points = change_points(lab)
    grid = [cp.edge * float(segment_seconds) for cp in points]
    moved, found = grid, {}
    windows = hidden_windows(lab, k) if min_hidden_gain < np.inf else {}
    wanted = sorted(
        {*boundary_segments(lab).tolist(), *(int(j) for w in windows.values() for j in w)}
    )
    if wanted:
        times, sub = frames_in(np.array(wanted, dtype=np.int64), per_segment)
        order = np.argsort(np.asarray(times, dtype=np.float64), kind="stable")
        times, sub = np.asarray(times, dtype=np.float64)[order], np.asarray(sub)[order]
        looks, bg = looks_from_others(frames, labels, i, k)
        sub = centred(sub, np.asarray(frames[i]).mean(axis=0))
        moved = refine_change_points(
            points, looks, bg, times, sub, segment_seconds, min_gain, lab.shape[0]
        )
        if windows:
            found = find_hidden(lab, k, looks, bg, times, sub, segment_seconds, min_hidden_gain)
    n_moved = sum(m != g for m, g in zip(moved, grid, strict=True))
    spans = _spans_at(lab, k, points, moved, segment_seconds, duration_s)
    clipped = {s: (min(a, duration_s), min(b, duration_s)) for s, (a, b, _) in found.items()}
    return insert_hidden(spans, clipped), n_moved, {s: c for s, (_, _, c) in found.items()}

"""Steps the grid skipped that frames inside its segments show: shorter than a segment.

A step shorter than one segment, done across a segment edge, holds half or less of each
segment beside it; on the 5 s grid its neighbours (or the background) claim both, and the
alignment says the step was not performed (issue 22: a third of the false "not performed" on
the lab generator). ``hidden_windows`` names, for each skipped step, the segments between its
performed neighbours (the last segment of the step before it through the first of the step
after it); the caller samples frames there, as for boundary refinement
(``biovl_core.align.refine``). ``find_hidden`` then looks for a run of those frames that looks
more like the step (its look from the other recordings) than like any of its rivals there: the
steps before and after it, and the background. The best run's summed cosine advantage must
pass ``MIN_HIDDEN_GAIN``; the step's span is that run's time, and ``insert_hidden`` trims its
neighbours' spans so that none overlap.
"""

from __future__ import annotations

import numpy as np

from biovl_core.align.order_search import best_run
from biovl_core.result import Span

MIN_HIDDEN_GAIN = 0.5  # summed cosine advantage of the run (dev seeds 0-9; docs/QUALITY.md)
# A longer stretch between the neighbours is not searched: a step there had room on the grid,
# and the frames to decode would grow with the recording (a stray early run, say).
MAX_WINDOW_SEGMENTS = 8  # dev seeds 0-9: 4 lost most of what it finds; 8 and 16 kept it


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero); ``refine`` scales its frames here too."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _neighbours(labels: np.ndarray, s: int, k: int) -> tuple[int, int]:
    """The performed steps just before and after ``s`` in protocol order (-1: none)."""
    before = [t for t in range(s) if (labels == t).any()]
    after = [t for t in range(s + 1, k) if (labels == t).any()]
    return (before[-1] if before else -1), (after[0] if after else -1)


def hidden_windows(labels: np.ndarray, k: int) -> dict[int, np.ndarray]:
    """Per skipped step, the segments (indices) from its previous performed step's last
    segment through its next one's first (the recording's ends where there is none)."""
    lab = np.asarray(labels)
    n = lab.shape[0]
    out: dict[int, np.ndarray] = {}
    if not (lab >= 0).any():
        return out
    for s in range(k):
        if (lab == s).any():
            continue
        before, after = _neighbours(lab, s, k)
        lo = int(np.flatnonzero(lab == before)[-1]) if before >= 0 else 0
        hi = int(np.flatnonzero(lab == after)[0]) if after >= 0 else n - 1
        if lo <= hi and hi - lo + 1 <= MAX_WINDOW_SEGMENTS:
            out[s] = np.arange(lo, hi + 1)
    return out


def find_hidden(
    labels: np.ndarray,
    k: int,
    looks: np.ndarray,
    background: np.ndarray,
    times: np.ndarray,
    frames: np.ndarray,
    segment_seconds: float,
    min_gain: float = MIN_HIDDEN_GAIN,
) -> dict[int, tuple[float, float, float]]:
    """Per skipped step the frames show, its span (s) and a confidence: the best run of frames
    in its window looking more like it than its neighbours and the background (module doc),
    and ``gain / (gain + min_gain)`` of its summed advantage (above 0.5, towards 1). ``times``
    [M] and ``frames`` [M, D] (centred like the segments) must include the windows' frames."""
    lab = np.asarray(labels)
    t = np.asarray(times, dtype=np.float64)
    f = unit_rows(np.asarray(frames, dtype=np.float64))
    unit_looks, idle = (
        unit_rows(np.asarray(looks, dtype=np.float64)),
        unit_rows(np.asarray(background)),
    )
    seg = float(segment_seconds)
    found: dict[int, tuple[float, float, float]] = {}
    for s, window in hidden_windows(lab, k).items():
        inside = (t >= window[0] * seg) & (t < (window[-1] + 1) * seg)
        if not inside.any() or not np.linalg.norm(looks[s]) > 0:
            continue
        ts, fs = t[inside], f[inside]
        rivals = [idle] + [unit_looks[r] for r in _neighbours(lab, s, k) if r >= 0]
        advantage = fs @ unit_looks[s] - np.max(np.stack([fs @ v for v in rivals]), axis=0)
        gain, first, last = best_run(advantage)
        if gain > min_gain:
            half = (ts[1] - ts[0]) / 2.0 if ts.size > 1 else seg / 2.0
            start, end = float(max(ts[first] - half, 0.0)), float(ts[last] + half)
            found[s] = (start, end, gain / (gain + min_gain))
    return found


def insert_hidden(spans: list[Span], found: dict[int, tuple[float, float]]) -> list[Span]:
    """``spans`` with each found step's span set and the spans it overlaps trimmed off it (a
    span starting before it ends where it starts; one ending after it starts where it ends)."""
    out = list(spans)
    for s, (a, b) in sorted(found.items()):
        out[s] = (a, b)
        for t, span in enumerate(out):
            if span is None or t == s or span[1] <= a or span[0] >= b:
                continue
            lo, hi = span
            out[t] = (lo, a) if lo < a else (b, max(hi, b))
    return out

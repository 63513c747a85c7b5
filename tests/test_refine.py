"""Boundaries finer than the grid (biovl_core.align.refine) and the generator's frames at any
time (biovl_core.synthetic.frames_at)."""

from __future__ import annotations

import numpy as np
import pytest

from biovl_core.align import align_group
from biovl_core.align.refine import (
    boundary_times,
    change_points,
    refine_in_group,
    refine_spans,
)
from biovl_core.metrics import miou
from biovl_core.synthetic import make_lab_group
from biovl_core.synthetic.frames_at import frames_at

SEG = 5.0
D = 64


def _looks(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    looks = rng.normal(size=(k + 1, D))
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    return looks[:k], looks[k]


def _frames(times: np.ndarray, truth: list, looks: np.ndarray, bg: np.ndarray, noise: float):
    """A frame per time: the look of the step active then (or the background), plus noise."""
    rng = np.random.default_rng(1)
    out = np.empty((times.size, D))
    for j, t in enumerate(times):
        active = [s for s, (a, b) in enumerate(truth) if a <= t < b]
        out[j] = looks[active[0]] if active else bg
    return out + rng.normal(0.0, noise / np.sqrt(D), out.shape)


def test_change_points_and_sample_times() -> None:
    labels = np.array([-1, 0, 0, 1, 1, 1, -1, -1])
    points = change_points(labels)
    assert [(p.edge, p.before, p.after) for p in points] == [(1, -1, 0), (3, 0, 1), (6, 1, -1)]
    times = boundary_times(labels, SEG, per_segment=2)
    # segments 0-3 and 5-6 beside the edges, two frames each, no duplicate
    assert times.tolist() == [
        1.25,
        3.75,
        6.25,
        8.75,
        11.25,
        13.75,
        16.25,
        18.75,
        26.25,
        28.75,
        31.25,
        33.75,
    ]


def test_boundaries_move_to_the_truth_inside_their_segments() -> None:
    looks, bg = _looks(np.random.default_rng(0), 2)
    truth = [(7.0, 13.5), (13.5, 28.2)]  # on the grid: segments 1-2 and 3-5
    labels = np.array([-1, 0, 0, 1, 1, 1, -1, -1])
    times = boundary_times(labels, SEG, per_segment=8)
    frames = _frames(times, truth, looks, bg, noise=0.3)
    spans = refine_spans(labels, 2, looks, bg, times, frames, SEG, 40.0)
    for got, want in zip(spans, truth, strict=True):
        assert got is not None
        assert abs(got[0] - want[0]) <= 0.7 and abs(got[1] - want[1]) <= 0.7, (spans, truth)


def test_without_evidence_the_grid_stays_and_skipped_steps_stay_none() -> None:
    looks, bg = _looks(np.random.default_rng(0), 3)
    labels = np.array([-1, 0, 0, 2, 2, 2, -1, -1])  # step 1 not performed
    times = boundary_times(labels, SEG)
    other = np.random.default_rng(5).normal(size=(times.size, D))
    q, _ = np.linalg.qr(np.vstack([looks, bg]).T)
    other -= (other @ q) @ q.T  # frames like none of the looks: no evidence either way
    spans = refine_spans(labels, 3, looks, bg, times, other, SEG, 40.0)
    assert spans == [(5.0, 15.0), None, (15.0, 30.0)]


def test_spans_keep_their_order_when_the_frames_pull_across_a_neighbour() -> None:
    # a one-segment step between two others: both its ends may move, never past each other
    looks, bg = _looks(np.random.default_rng(2), 3)
    labels = np.array([0, 0, 1, 2, 2])
    truth = [(0.0, 12.0), (12.0, 13.0), (13.0, 25.0)]
    times = boundary_times(labels, SEG, per_segment=8)
    frames = _frames(times, truth, looks, bg, noise=0.3)
    spans = refine_spans(labels, 3, looks, bg, times, frames, SEG, 25.0)
    ends = [x for span in spans for x in span]  # type: ignore[union-attr]
    assert ends == sorted(ends) and all(b >= a for a, b in spans)  # type: ignore[misc]


@pytest.mark.parametrize("seed", range(6))
def test_change_points_stop_half_way_into_a_one_segment_step(seed: int) -> None:
    # step 1 is barely seen: both its change points are pulled into its one segment; each
    # moves at most half way into it, so neither passes the other
    looks, bg = _looks(np.random.default_rng(seed), 3)
    labels = np.array([0, 0, 1, 2, 2])
    truth = [(0.0, 14.4), (14.4, 14.5), (14.5, 25.0)]
    times = boundary_times(labels, SEG, per_segment=8)
    frames = _frames(times, truth, looks, bg, noise=0.3)
    spans = refine_spans(labels, 3, looks, bg, times, frames, SEG, 25.0)
    ends = [x for span in spans for x in span]  # type: ignore[union-attr]
    assert ends == sorted(ends), spans
    assert spans[0][1] == 12.5 and spans[1][1] >= 12.5, spans  # type: ignore[index]


def test_refine_in_group_asks_for_the_segments_beside_each_change_and_uses_shown_times() -> None:
    looks, bg = _looks(np.random.default_rng(3), 2)
    asked: list[tuple[list[int], int]] = []

    def frames_in(segments: np.ndarray, per: int) -> tuple[np.ndarray, np.ndarray]:
        asked.append((segments.tolist(), per))
        # what a keyframe rule shows: times off the parts' centres, handed back in any order
        times = np.array([30.4, 31.6, 33.1, 34.0, 35.2, 35.9, 36.6, 37.4])[::-1]
        return times, _frames(times, [(0.0, 36.0), (36.0, 38.0)], looks, bg, noise=0.1)

    own = np.array([0] * 7 + [1])  # 38 s: the last segment (35-40 s) is short
    others = [np.vstack([looks[0]] * 4 + [looks[1]] * 4), np.vstack([looks[0]] * 3 + [looks[1]])]
    frames = [f + np.random.default_rng(9).normal(0, 0.05, f.shape) for f in others]
    frames.append(np.vstack([looks[0]] * 7 + [looks[1]]))
    labels = [np.array([0] * 4 + [1] * 4), np.array([0, 0, 0, 1]), own]
    spans, moved, hidden = refine_in_group(frames, labels, 2, 2, frames_in, SEG, 38.0)
    assert asked == [([6, 7], 4)]
    assert moved == 1 and hidden == {}
    assert spans == [(0.0, (35.9 + 36.6) / 2), ((35.9 + 36.6) / 2, 38.0)], spans


def test_refined_group_spans_beat_the_grid_on_a_generated_lab() -> None:
    lab = make_lab_group("pcr", 6, seed=3)
    res = align_group(lab.frames, lab.texts, None, lab.segment_seconds)
    r, a = lab.recordings[-1], res[-1]
    k = len(lab.steps)
    x = [f - f.mean(axis=0) for f in lab.frames]
    looks = np.stack([sum(x[j][res[j].labels == s].sum(0) for j in range(5)) for s in range(k)])
    bg = sum(x[j][res[j].labels < 0].sum(0) for j in range(5))
    times = boundary_times(a.labels, SEG)
    sub = frames_at(r.draws, times, seed=7) - r.frames.mean(axis=0)
    spans = refine_spans(a.labels, k, looks, bg, times, sub, SEG, r.duration_s)
    assert miou(spans, r.gt_spans) > miou(a.spans, r.gt_spans)


def test_frames_at_show_what_is_active_and_leave_the_segment_frames_alone() -> None:
    before = make_lab_group("pcr", 2, seed=1)
    again = make_lab_group("pcr", 2, seed=1)
    r = again.recordings[0]
    (start, end) = r.draws.spans[0]
    inside = frames_at(r.draws, np.array([(start + end) / 2]), seed=0)
    outside = frames_at(r.draws, np.array([max(start - 0.5, 0.0)]), seed=0)
    look = r.draws.shown[0] / np.linalg.norm(r.draws.shown[0])
    assert float(inside[0] @ look) > float(outside[0] @ look) + 0.2
    assert np.array_equal(before.recordings[0].frames, r.frames)  # drawing them changes nothing
    assert np.allclose(np.linalg.norm(inside, axis=1), 1.0, atol=1e-5)
    with pytest.raises(AttributeError):
        r.draws.spans = ()  # type: ignore[misc]

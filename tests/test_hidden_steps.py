"""Steps shorter than a segment that the grid skipped (biovl_core.align.hidden_steps), found
by the frames inside the segments, in ``refine_in_group`` and the deviation report."""

from __future__ import annotations

import math

import numpy as np

from biovl_core.align.deviations import deviation_report
from biovl_core.align.hidden_steps import (
    MAX_WINDOW_SEGMENTS,
    find_hidden,
    hidden_windows,
    insert_hidden,
)
from biovl_core.align.refine import refine_in_group, segment_times

SEG = 5.0
D = 64


def _looks(k: int, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(k + 1, D))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:k], x[k]


def _shown(times: np.ndarray, truth: list, looks: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """A frame per time: the look of the step active then (or the background), plus noise."""
    out = np.array([next((looks[s] for s, (a, b) in truth if a <= t < b), bg) for t in times])
    return out + np.random.default_rng(2).normal(0.0, 0.2 / math.sqrt(D), out.shape)


def test_a_skipped_steps_window_runs_between_its_performed_neighbours() -> None:
    labels = np.array([0, 0, -1, -1, 2, 2, -1])
    assert {s: w.tolist() for s, w in hidden_windows(labels, 4).items()} == {
        1: [1, 2, 3, 4],
        3: [5, 6],
    }
    assert hidden_windows(np.full(4, -1), 2) == {}  # nothing performed: nothing to look between
    long_gap = np.array([0] + [-1] * MAX_WINDOW_SEGMENTS + [2])  # the step had room on the grid
    assert hidden_windows(long_gap, 3) == {}


def test_frames_that_show_the_step_give_it_a_span_and_frames_that_do_not_leave_it_skipped() -> None:
    looks, bg = _looks(3)
    labels = np.array([0, 0, 2, 2])  # step 1 (3 s, 8.5-11.5 s) straddles segments 1 and 2
    times = segment_times(np.array([1, 2]), SEG, 4)
    truth = [(0, (0.0, 8.5)), (1, (8.5, 11.5)), (2, (11.5, 20.0))]
    found = find_hidden(labels, 3, looks, bg, times, _shown(times, truth, looks, bg), SEG)
    assert list(found) == [1]
    a, b, confidence = found[1]
    assert 7.5 <= a <= 9.0 and 11.0 <= b <= 12.5, found
    assert 0.5 < confidence < 1.0
    skipped = [(0, (0.0, 10.0)), (2, (10.0, 20.0))]  # really skipped: the frames show 0 then 2
    assert find_hidden(labels, 3, looks, bg, times, _shown(times, skipped, looks, bg), SEG) == {}


def test_a_found_step_trims_the_spans_it_overlaps() -> None:
    spans = [(0.0, 10.0), None, (10.0, 20.0)]
    assert insert_hidden(spans, {1: (8.75, 11.25)}) == [(0.0, 8.75), (8.75, 11.25), (11.25, 20.0)]


def test_refine_in_group_samples_the_window_and_the_report_no_longer_says_not_performed() -> None:
    looks, bg = _looks(3, seed=5)
    truth = [(0, (0.0, 8.5)), (1, (8.5, 11.5)), (2, (11.5, 30.0))]
    asked: list[list[int]] = []

    def frames_in(segments: np.ndarray, per: int) -> tuple[np.ndarray, np.ndarray]:
        asked.append(segments.tolist())
        times = segment_times(segments, SEG, per)
        return times, _shown(times, truth, looks, bg)

    own = np.array([0, 0, 2, 2, 2, 2])
    peers = [np.vstack([looks[s]] * 2) for s in (0, 1, 2)]  # the others did every step
    frames = [
        np.vstack(peers) + 0.01,
        np.vstack(peers) - 0.01,
        _shown((np.arange(6) + 0.5) * SEG, truth, looks, bg),
    ]
    labels = [np.repeat([0, 1, 2], 2), np.repeat([0, 1, 2], 2), own]
    spans, _, hidden = refine_in_group(frames, labels, 2, 3, frames_in, SEG, 30.0)
    assert asked == [[1, 2]] and list(hidden) == [1] and 0.5 < hidden[1] < 1.0
    ends = [x for span in spans for x in span]  # type: ignore[union-attr]
    assert ends == sorted(ends) and spans[1][0] < 11.5 and spans[1][1] > 8.5, spans  # type: ignore[index]
    grid = [(0.0, 10.0), None, (10.0, 30.0)]
    said = deviation_report(grid, None, None, SEG)
    assert [e["kind"] for e in said] == ["not_performed"]
    assert deviation_report(grid, None, None, SEG, seen=hidden) == []
    never = refine_in_group(frames, labels, 2, 3, frames_in, SEG, 30.0, min_hidden_gain=math.inf)
    assert never[2] == {} and never[0][1] is None  # switched off: step 1 stays skipped

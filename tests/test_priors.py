"""A lab's history as priors: the fit, the explicit-duration kernel, and their use in groups."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from biovl_core.align import align_group, kernel_duration, kernel_skip
from biovl_core.align.priors import (
    HALF_STRENGTH,
    MIN_LOG_SD,
    HistoryRecord,
    duration_scores,
    group_priors,
    no_priors,
    skip_scores,
)
from biovl_core.synthetic import make_lab_group

SEG = 5.0


def _labelings(k: int, n: int):
    """Every labeling with skips: each step at most one run, runs in step order."""
    for labels in itertools.product(range(-1, k), repeat=n):
        runs = [s for j, s in enumerate(labels) if s >= 0 and (j == 0 or labels[j - 1] != s)]
        if runs == sorted(set(runs)) and len(runs) == len(set(runs)):
            yield np.array(labels)


def _score(m, d, s, length, labels) -> float:
    """Matched cells, drops, skips and one length score per run."""
    total = sum(m[lab, j] if lab >= 0 else d[j] for j, lab in enumerate(labels))
    for step in range(m.shape[0]):
        run = int((labels == step).sum())
        total += length[step, run] if run else s[step]
    return total


def test_duration_kernel_matches_brute_force_numpy_and_the_skip_kernel() -> None:
    rng = np.random.default_rng(7)
    for _ in range(30):
        k, n = int(rng.integers(1, 4)), int(rng.integers(1, 6))
        m, d, s = rng.normal(size=(k, n)), rng.normal(size=n), rng.normal(size=k) - 1.0
        length = rng.normal(size=(k, n + 1)) * 2.0
        labels, best = kernel_duration.solve_duration(m, d, s, length)
        want = max(_score(m, d, s, length, lab) for lab in _labelings(k, n))
        assert best == pytest.approx(want)
        assert _score(m, d, s, length, labels) == pytest.approx(best)
        labels_np, best_np = kernel_duration.solve_duration_numpy(m, d, s, length)
        assert best_np == pytest.approx(best)
        np.testing.assert_array_equal(labels_np, labels)
        _, plain = kernel_skip.solve_skip(m, d, s)
        assert kernel_duration.solve_duration(m, d, s, np.zeros((k, n + 1)))[1] == pytest.approx(
            plain
        )


def test_priors_weigh_annotations_and_grow_with_evidence() -> None:
    machine = HistoryRecord([(0.0, 10.0), None, (30.0, 40.0)])
    corrected = HistoryRecord([(0.0, 40.0), (50.0, 60.0), (70.0, 80.0)], weight=3.0)
    p = group_priors([machine, corrected], 3)
    s0 = p.steps[0]
    assert s0.evidence == 4.0 and s0.strength == pytest.approx(4.0 / (4.0 + HALF_STRENGTH))
    assert math.exp(s0.log_mean) > math.sqrt(10 * 40)  # pulled towards the corrected 40 s
    assert s0.range_s is not None and 10.0 <= s0.range_s[0] < s0.range_s[1] <= 40.0
    assert p.steps[1].skip_rate > p.steps[0].skip_rate  # step 1 was skipped once
    assert p.steps[1].evidence == 3.0
    assert p.before[0, 2] == 1.0 and p.before[2, 0] == 0.0
    assert all(st.log_sd >= MIN_LOG_SD for st in p.steps)
    more = group_priors([machine, corrected, corrected, corrected], 3)
    assert more.steps[0].strength > s0.strength
    empty = no_priors(3)
    assert empty.empty and np.isnan(empty.before).all()
    assert not duration_scores(empty, 6, SEG, 3.0).any()


def test_duration_scores_peak_at_the_usual_length() -> None:
    hist = [HistoryRecord([(0.0, 30.0 + i)]) for i in range(5)]
    scores = duration_scores(group_priors(hist, 1), 20, SEG, 3.0)
    assert scores.shape == (1, 21)
    assert int(np.argmax(scores[0, 1:])) + 1 == 6  # 6 segments of 5 s ≈ 32 s
    assert scores[0, 1] < scores[0, 12] < 0.0 == pytest.approx(scores[0, 6], abs=0.5)


def test_a_group_of_one_does_not_use_priors() -> None:
    lab = make_lab_group("pcr", 1, seed=3, step_pace_sd=0.7)
    a = align_group(lab.frames, lab.texts, segment_seconds=SEG)[0]
    b = align_group(lab.frames, lab.texts, segment_seconds=SEG, duration_weight=0.0)[0]
    assert a.spans == b.spans and a.score == b.score
    np.testing.assert_array_equal(a.labels, b.labels)


def test_priors_from_the_others_reach_the_decoding() -> None:
    changed = 0
    for seed in range(3):
        lab = make_lab_group("agarose_gel", 5, seed=seed, step_pace_sd=0.7)
        ann = [lab.recordings[0].gt_spans, None, None, None, None]
        on = align_group(lab.frames, lab.texts, ann, SEG)
        off = align_group(lab.frames, lab.texts, ann, SEG, duration_weight=0.0)
        assert on[0].spans == off[0].spans  # the annotated recording is kept either way
        changed += sum(a.spans != b.spans for a, b in zip(on[1:], off[1:], strict=True))
    assert changed > 0


def test_planted_deviations_are_in_the_ground_truth() -> None:
    plain = make_lab_group("pcr", 3, seed=2)
    same = make_lab_group("pcr", 3, seed=2, p_long=0.0, p_insert=0.0, step_pace_sd=0.0)
    for x, y in zip(plain.recordings, same.recordings, strict=True):
        np.testing.assert_array_equal(x.frames, y.frames)
        assert not x.long_steps and not x.inserted
    lab = make_lab_group("pcr", 6, seed=2, p_long=0.2, p_insert=1.0, p_swap=0.0, p_repeat=0.0)
    assert any(r.long_steps for r in lab.recordings)
    for r in lab.recordings:
        assert len(r.inserted) == 1
        a, b = r.inserted[0]
        for span in r.gt_spans:  # the inserted action overlaps no protocol step
            assert span is None or span[1] <= a or span[0] >= b


def test_a_planted_long_step_lasts_three_times_the_lab_usual() -> None:
    knobs = {"p_long": 0.3, "p_insert": 0.0, "step_pace_sd": 0.7, "duration_sd": 0.5}
    usual = make_lab_group("agarose_gel", 6, seed=3, **knobs)
    drawn = make_lab_group("agarose_gel", 6, seed=3, long_of="draw", **knobs)
    assert usual.usual_s is not None and usual.usual_s.min() >= 2.0
    planted = 0
    for x in usual.recordings:
        for s in x.long_steps:
            a, b = x.gt_spans[s]  # type: ignore[misc]
            assert b - a == pytest.approx(3.0 * usual.usual_s[s], abs=0.11)
            planted += 1
    ratios = [
        (y.gt_spans[s][1] - y.gt_spans[s][0]) / usual.usual_s[s]  # type: ignore[index]
        for y in drawn.recordings
        for s in y.long_steps
    ]
    assert planted and ratios
    assert max(abs(math.log(r / 3.0)) for r in ratios) > 0.2  # 3x a draw is not 3x the usual
    with pytest.raises(ValueError, match="long_of"):
        make_lab_group("pcr", 2, long_of="mean")


def test_skip_scores_follow_the_lab_skip_rate() -> None:
    optional = [HistoryRecord([(0.0, 10.0), None]) for _ in range(4)]
    scores = skip_scores(group_priors(optional, 2), 1.0)
    assert scores[1] > 0.0 > scores[0]  # step 1 is usually skipped, step 0 never
    assert not skip_scores(no_priors(2), 1.0).any()
    assert not skip_scores(group_priors(optional, 2), 0.0).any()


def test_a_step_the_others_do_not_recognise_is_vetoed() -> None:
    lab = make_lab_group("pcr", 4, seed=2)
    ann = [lab.recordings[0].gt_spans, None, None, None]
    off = {"min_step_fit": -math.inf, "max_step_fit": -math.inf}  # every bar -inf
    never = align_group(lab.frames, lab.texts, ann, SEG, **off)
    no_move = {"relocate_fit": math.inf}  # step_check: veto only, never relocate
    always = align_group(lab.frames, lab.texts, ann, SEG, min_step_fit=1e9, **no_move)
    assert always[0].spans == never[0].spans  # an annotation is never vetoed
    for a, b in zip(always[1:], never[1:], strict=True):
        assert all(s is None for s in a.spans) and any(s is not None for s in b.spans)
        assert (a.labels == -1).all()
    with pytest.raises(Exception, match="min_step_fit must be a number"):
        align_group(lab.frames, lab.texts, ann, SEG, min_step_fit=math.inf)

"""Synthetic alignment problems: determinism, structure, and calibration to the paper."""

from __future__ import annotations

import numpy as np
import pytest

from biovl_core.align import align
from biovl_core.metrics import aggregate, miou
from biovl_core.protocol import step_duration_hint, step_verb
from biovl_core.synthetic import EXPERIMENTS, knobs_for, make_benchmark, make_problem

PAPER_UNIFORM = 28.6
PAPER_NW = 33.2


def benchmark_miou(seeds: range, difficulty: float, method: str) -> float:
    """Mean over seeds of the data-set figure (mean over videos of per-video mIoU, %)."""
    figures = []
    for seed in seeds:
        rows = []
        for p in make_benchmark(seed, difficulty):
            a = align(
                p.similarity,
                segment_seconds=p.segment_seconds,
                method=method,
                duration_s=p.duration_s,
                backend="numpy",
            )
            rows.append({"experiment": p.experiment, "miou": miou(a.spans, p.gt_spans)})
        figures.append(aggregate(rows).overall.mean)
    return float(np.mean(figures))


def test_same_seed_same_problem_other_seed_differs() -> None:
    a, b = make_problem("pcr", seed=7), make_problem("pcr", seed=7)
    np.testing.assert_array_equal(a.similarity, b.similarity)
    assert a.gt_spans == b.gt_spans and a.steps == b.steps
    c = make_problem("pcr", seed=8)
    assert c.gt_spans != a.gt_spans


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_shapes_and_spans(experiment: str) -> None:
    p = make_problem(experiment, seed=3)
    k, n = p.similarity.shape
    assert p.similarity.dtype == np.float32
    assert k == len(p.steps) == len(p.gt_spans)
    assert n == int(np.ceil(p.duration_s / p.segment_seconds))
    assert (n - 1) * p.segment_seconds < p.duration_s <= n * p.segment_seconds
    assert p.gt_spans[0][0] > 0.0 and p.gt_spans[-1][1] < p.duration_s
    for (s0, e0), (s1, _) in zip(p.gt_spans, p.gt_spans[1:], strict=False):
        assert s0 < e0 < s1
    assert all(step_verb(s) for s in p.steps)
    assert set(p.gt_labels.tolist()) <= set(range(-1, k))


def test_step_counts_follow_the_spec() -> None:
    counts = {name: [] for name in EXPERIMENTS}
    for seed in range(5):
        for p in make_benchmark(seed):
            counts[p.experiment].append(len(p.steps))
    for name, ks in counts.items():
        assert np.mean(ks) == pytest.approx(EXPERIMENTS[name].steps_mean, abs=1.0), name


def test_benchmark_mirrors_biovl() -> None:
    problems = make_benchmark(0)
    assert len(problems) == 16
    by_exp = {}
    for p in problems:
        by_exp.setdefault(p.experiment, []).append(p)
    assert {k: len(v) for k, v in by_exp.items()} == {
        "phenol_chloroform": 2,
        "ethanol_precipitation": 2,
        "pcr": 4,
        "agarose_gel": 4,
        "miniprep": 4,
    }
    assert len({p.name for p in problems}) == 16
    hours = sum(p.duration_s for p in problems) / 3600
    assert 1.0 < hours < 2.5
    mean_len = {k: np.mean([p.duration_s for p in v]) for k, v in by_exp.items()}
    assert max(mean_len, key=mean_len.get) == "miniprep"


def test_num_steps_override_and_look_alike_rows() -> None:
    p = make_problem("miniprep", num_steps=40, seed=1)
    assert len(p.steps) == 40
    same = [i for i, s in enumerate(p.steps) if s == "centrifuge the column for 60 s"]
    assert len(same) >= 2
    np.testing.assert_array_equal(p.similarity[same[0]], p.similarity[same[1]])


def test_zero_difficulty_gives_a_clean_signal() -> None:
    p = make_problem("agarose_gel", seed=2, difficulty=0.0)
    labels = p.gt_labels
    for k in range(len(p.steps)):
        inside = p.similarity[k, labels == k]
        outside = p.similarity[k, labels != k]
        if inside.size:
            assert inside.mean() > outside.mean()


def test_knobs_are_validated() -> None:
    with pytest.raises(TypeError, match="unknown synthetic knob"):
        make_problem("pcr", noize=0.1)
    with pytest.raises(ValueError, match="difficulty"):
        knobs_for(-1.0)
    with pytest.raises(ValueError, match="unknown experiment"):
        make_problem("western_blot")
    assert make_problem("pcr", seed=0, noise=0.0).similarity.shape[0] == 6


def test_calibrated_to_the_papers_figures() -> None:
    uniform = benchmark_miou(range(3), 1.0, "uniform")
    nw = benchmark_miou(range(3), 1.0, "nw")
    assert uniform == pytest.approx(PAPER_UNIFORM, abs=4.0)
    assert nw == pytest.approx(PAPER_NW, abs=4.0)
    assert nw > uniform


def test_higher_difficulty_makes_every_method_worse() -> None:
    for method in ("uniform", "nw"):
        scores = [benchmark_miou(range(3), d, method) for d in (0.5, 1.0, 2.0)]
        assert scores[0] > scores[1] > scores[2], (method, scores)


def test_text_durations_are_opt_in_and_follow_the_text() -> None:
    off = make_problem("miniprep", seed=4)
    same = make_problem("miniprep", seed=4, text_durations=0.0)
    np.testing.assert_array_equal(off.similarity, same.similarity)
    assert off.gt_spans == same.gt_spans
    a = make_problem("miniprep", seed=4, text_durations=1.0)
    b = make_problem("miniprep", seed=4, text_durations=1.0)
    np.testing.assert_array_equal(a.similarity, b.similarity)
    assert a.steps == off.steps  # the texts are the same; only their spans change
    ratios = []
    for text, (start, end) in zip(a.steps, a.gt_spans, strict=True):
        hint = step_duration_hint(text)
        if hint is not None:
            ratios.append((end - start) / hint)
    assert len(ratios) >= 5
    # lognormal sd 0.3 around the stated time (rounding to 0.1 s aside)
    assert all(0.3 < r < 3.0 for r in ratios), ratios
    assert 0.6 < float(np.exp(np.mean(np.log(ratios)))) < 1.5

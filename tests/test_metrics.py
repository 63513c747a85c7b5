"""Temporal IoU, per-video mIoU and data-set aggregation."""

from __future__ import annotations

import math

import pytest

from biovl_core.metrics import DatasetScore, aggregate, iou, miou, step_ious

PCR_GT = [(30, 45), (64, 99), (106, 130), (149, 173), (190, 238), (260, 266)]


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        ((30.0, 45.0), (30.0, 45.0), 1.0),
        ((0.0, 10.0), (5.0, 15.0), 5.0 / 15.0),
        ((0.0, 10.0), (10.0, 20.0), 0.0),
        ((0.0, 100.0), (40.0, 50.0), 0.1),
        (None, (0.0, 1.0), 0.0),
        ((0.0, 1.0), None, 0.0),
        ((3.0, 3.0), (3.0, 3.0), 1.0),
        ((3.0, 3.0), (0.0, 6.0), 0.0),
    ],
)
def test_iou(pred, gt, expected: float) -> None:
    assert iou(pred, gt) == pytest.approx(expected)
    assert iou(gt, pred) == pytest.approx(expected)


def test_iou_rejects_reversed_span() -> None:
    with pytest.raises(ValueError, match="start <= end"):
        iou((5.0, 1.0), (0.0, 10.0))


def test_uniform_on_the_papers_pcr_example() -> None:
    edges = [280 * i / 6 for i in range(7)]
    pred = list(zip(edges[:-1], edges[1:], strict=True))
    per_step = step_ious(pred, PCR_GT)
    assert per_step[0] == pytest.approx(15 / (280 / 6))
    assert miou(pred, PCR_GT) == pytest.approx(sum(per_step) / 6)
    assert 0.0 < miou(pred, PCR_GT) < 1.0


def test_miou_none_prediction_scores_zero_and_unannotated_steps_are_skipped() -> None:
    gt = [(0.0, 10.0), (20.0, 30.0), None]
    assert miou([(0.0, 10.0), None, (40.0, 50.0)], gt) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no annotated step"):
        miou([(0.0, 1.0)], [None])


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 predicted spans for 3"):
        miou([(0, 1), (1, 2)], [(0, 1), (1, 2), (2, 3)])


def test_aggregate_mean_over_videos_per_experiment() -> None:
    rows = [
        {"name": "pcr_01", "experiment": "pcr", "miou": 0.2},
        {"name": "pcr_02", "experiment": "pcr", "miou": 0.4},
        {"name": "mini_01", "experiment": "miniprep", "miou": 0.6},
        {"name": "x", "miou": 0.0},
    ]
    score = aggregate(rows)
    assert isinstance(score, DatasetScore)
    assert score.overall.mean == pytest.approx(30.0)
    assert score.overall.n == 4
    assert score.overall.std == pytest.approx(math.sqrt((100 + 100 + 900 + 900) / 3))
    assert (score.overall.min, score.overall.max) == (0.0, 60.0)
    assert score.by_experiment["pcr"].mean == pytest.approx(30.0)
    assert score.by_experiment["pcr"].std == pytest.approx(math.sqrt(200.0))
    assert score.by_experiment["miniprep"].std == 0.0
    assert score.by_experiment["unspecified"].n == 1
    assert score.to_dict()["by_experiment"]["pcr"]["n"] == 2
    assert "miniprep" in score.table() and "30.0" in score.table()


def test_aggregate_other_key_and_bad_rows() -> None:
    rows = [{"experiment": "pcr", "miou": 0.3, "uniform": 0.1}]
    assert aggregate(rows, key="uniform").overall.mean == pytest.approx(10.0)
    with pytest.raises(ValueError, match="fractions, not percent"):
        aggregate([{"name": "v", "miou": 33.2}])
    with pytest.raises(ValueError, match="no 'miou' score"):
        aggregate([{"name": "v"}])
    with pytest.raises(ValueError, match="no videos"):
        aggregate([])


def test_deviation_kinds_counted_are_the_reports_kinds() -> None:
    """services.metrics keeps its own copy (importing biovl_core.align costs the ingress numba)."""
    from biovl_core.align.deviations import KINDS
    from services import metrics

    assert metrics.DEVIATION_KINDS == KINDS

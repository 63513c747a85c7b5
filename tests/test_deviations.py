"""The deviation report: each kind on a hand-made history, and on a generated lab."""

from __future__ import annotations

import numpy as np

from biovl_core.align import align_group
from biovl_core.align.deviations import deviation_report, segment_fit, step_ranges
from biovl_core.align.priors import HistoryRecord, group_priors, no_priors
from biovl_core.synthetic import make_lab_group

SEG = 5.0
USUAL = [(0.0, 20.0), (30.0, 40.0), (50.0, 80.0), (90.0, 100.0)]


def _lab(n: int = 5):
    """A history of n recordings doing the four steps in order, with small jitter."""
    rng = np.random.default_rng(0)
    recs = []
    for _ in range(n):
        f = np.exp(rng.normal(0.0, 0.1, 4))
        recs.append(
            HistoryRecord([(a, a + (b - a) * x) for (a, b), x in zip(USUAL, f, strict=True)])
        )
    return group_priors(recs, 4)


def test_nothing_to_say_about_a_usual_recording() -> None:
    assert deviation_report(USUAL, np.ones(4), _lab(), SEG) == []


def test_each_kind_is_found_with_the_lab_range() -> None:
    spans = [(0.0, 20.0), None, (100.0, 190.0), (60.0, 70.0)]  # skip, 3x, step 3 before 2
    labels = np.full(40, -1)
    fit = np.zeros(40)
    fit[25:30] = -5.0  # 125-150 s fits nothing, and is labelled background
    report = deviation_report(spans, np.full(4, 0.9), _lab(), SEG, labels, fit)
    kinds = {(e["kind"], e.get("step")) for e in report}
    assert ("not_performed", 1) in kinds
    assert ("out_of_order", 3) in kinds or ("out_of_order", 2) in kinds
    longer = [e for e in report if e["kind"] == "longer"]
    assert [e["step"] for e in longer] == [2]
    lo, hi = longer[0]["lab_range_s"]
    assert lo <= longer[0]["lab_median_s"] <= hi < 90.0
    unmatched = [e for e in report if e["kind"] == "unmatched"]
    assert [(e["start"], e["end"]) for e in unmatched] == [(125.0, 150.0)]
    assert all(0.0 <= e["confidence"] <= 1.0 for e in report)


def test_three_times_the_usual_is_longer_even_in_a_lab_that_varies_widely() -> None:
    spread = [-0.9, -0.45, 0.0, 0.45, 0.9, 0.0]  # log factors: a log sd of about 0.6
    history = [HistoryRecord([(a, a + (b - a) * np.exp(x)) for a, b in USUAL]) for x in spread]
    priors = group_priors(history, 4)
    assert priors.steps[2].log_sd > 0.5
    for factor, said in ((3.0, True), (1.8, False)):
        spans = list(USUAL)
        spans[2] = (50.0, 50.0 + 30.0 * factor)
        longer = [
            e for e in deviation_report(spans, np.ones(4), priors, SEG) if e["kind"] == "longer"
        ]
        assert [e["step"] for e in longer] == ([2] if said else [])


def test_a_lab_that_usually_swaps_two_steps_is_not_told_so() -> None:
    swapped = [(0.0, 20.0), (30.0, 40.0), (90.0, 100.0), (50.0, 80.0)]
    history = [HistoryRecord(swapped) for _ in range(4)]
    report = deviation_report(swapped, np.ones(4), group_priors(history, 4), SEG)
    assert not [e for e in report if e["kind"] == "out_of_order"]
    assert [e["kind"] for e in deviation_report(swapped, np.ones(4), None, SEG)] == ["out_of_order"]


def test_without_history_only_skips_are_said() -> None:
    spans = [(0.0, 200.0), None, (210.0, 215.0), (220.0, 230.0)]
    report = deviation_report(spans, np.ones(4), no_priors(4), SEG)
    assert [e["kind"] for e in report] == ["not_performed"]
    assert step_ranges(no_priors(4)) is None and step_ranges(None) is None
    assert len(step_ranges(_lab())) == 4


def test_a_planted_long_step_is_reported_in_a_regular_lab() -> None:
    lab = make_lab_group(
        "agarose_gel", 6, seed=4, step_pace_sd=0.7, duration_sd=0.2, p_long=0.1, p_skip=0.0
    )
    out = align_group(lab.frames, lab.texts, segment_seconds=SEG)
    hits = planted = 0
    for r, a in zip(lab.recordings, out, strict=True):
        rep = deviation_report(a.spans, a.confidence, a.priors, SEG, a.labels, a.segment_fit)
        longer = {e["step"] for e in rep if e["kind"] == "longer"}
        hits += len(longer & set(r.long_steps))
        planted += len(r.long_steps)
    assert planted > 0 and hits >= planted / 2


def test_the_report_travels_in_the_result_json() -> None:
    from biovl_core.io.exports import alignment_from_dict, alignment_to_dict
    from biovl_core.result import AlignmentResult

    priors = _lab()
    spans = [(0.0, 20.0), None, (50.0, 140.0), (150.0, 160.0)]
    report = deviation_report(spans, np.full(4, 0.8), priors, SEG)
    result = AlignmentResult(
        steps=["a", "b", "c", "d"],
        spans=spans,
        step_scores=[0.1, None, 0.2, 0.3],
        labels=np.full(32, -1),
        similarity=np.zeros((4, 32), dtype=np.float32),
        segment_seconds=SEG,
        duration_s=160.0,
        method="group",
        score=1.0,
        deviations=report,
        lab_steps=step_ranges(priors),
    )
    d = alignment_to_dict(result)
    assert d["deviations"] == report and {e["kind"] for e in report} >= {"not_performed", "longer"}
    assert d["steps"][2]["lab"]["range_s"] == step_ranges(priors)[2]["range_s"]
    back = alignment_from_dict(d)
    assert back.deviations == report and back.lab_steps == step_ranges(priors)
    result.deviations, result.lab_steps = None, None
    plain = alignment_to_dict(result)
    assert "deviations" not in plain and all("lab" not in s for s in plain["steps"])


def test_an_unseen_action_stands_out_by_looking_alike_for_its_whole_length() -> None:
    # frames: the exemplars' looks plus noise (norm 0.6 in 256 dimensions); segments 20-23 also
    # show one new look (0.55, as the generator's actions), segments 40-41 a burst of unrelated
    # noise as large: only the coherent stretch is an off-protocol action
    rng = np.random.default_rng(3)
    d, n = 256, 60
    protos = rng.normal(size=(5, d))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    x = protos[rng.integers(0, 5, n)] + rng.normal(0, 0.6 / np.sqrt(d), (n, d))
    new = rng.normal(size=d)
    x[20:24] += 0.55 * new / np.linalg.norm(new)
    x[40:42] += rng.normal(0, 0.55 / np.sqrt(d), (2, d))
    fit = segment_fit(protos, x)
    labels = np.full(n, -1)  # all background, so only the fit decides
    found = deviation_report([None], None, None, SEG, labels, fit)
    unmatched = [(e["start"], e["end"]) for e in found if e["kind"] == "unmatched"]
    assert len(unmatched) == 1, (unmatched, fit[18:26].round(1), fit[40:42].round(1))
    start, end = unmatched[0]
    assert 20 * SEG <= start and end <= 24 * SEG and end - start >= 2 * SEG


def test_a_long_step_stays_long_when_other_recordings_did_it_long_too() -> None:
    # five earlier recordings; two did step 2 long as well (75 s, 85 s against a usual 20-40 s),
    # which widens the step's own spread: the lab's low quantile and the spread pooled over the
    # steps still call 90 s long (the median and the step's own sd alone did not: z 1.0)
    def spans(d2: float, jitter: float) -> list:
        return [(0.0, 20.0 * jitter), (30.0, 40.0), (50.0, 50.0 + d2), (60.0 + d2, 70.0 + d2)]

    hist = [
        HistoryRecord(spans(d, j))
        for d, j in zip((20, 75, 20, 40, 85), (1, 1.1, 0.9, 1, 1.05), strict=True)
    ]
    priors = group_priors(hist, 4)
    p = priors.steps[2]
    assert p.low_s is not None and p.low_s < p.median_s == 40.0
    assert priors.pooled_log_sd < p.log_sd
    report = deviation_report(spans(90.0, 1.0), None, priors, SEG)
    assert [(e["kind"], e["step"]) for e in report] == [("longer", 2)]
    assert deviation_report(spans(40.0, 1.0), None, priors, SEG) == []

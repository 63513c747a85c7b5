"""Annotations in (CSV / JSON) and alignments out (JSON / CSV / WebVTT)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from biovl_core.errors import AnnotationError
from biovl_core.io import (
    Annotation,
    alignment_from_dict,
    alignment_to_dict,
    annotations_to_eaf,
    annotations_to_spans,
    parse_annotations,
    read_annotations,
    to_csv,
    to_eaf,
    to_json,
    to_webvtt,
)
from biovl_core.result import AlignmentResult

PCR_CSV = """step,start,end
add sterile distilled water,30,45
add primer1,64,99
add primer2,106,130
add template,149,173
add primeSTAR,190,238
set in DNA engine,260,266
"""


def make_result() -> AlignmentResult:
    """A three-step alignment over 8 segments of 5 s, one step not found."""
    rng = np.random.default_rng(0)
    return AlignmentResult(
        steps=["Add <water> & mix.", "Spin --> down.", "Incubate 5 min."],
        spans=[(0.0, 15.0), None, (25.0, 38.5)],
        step_scores=[0.31234, None, 0.27],
        labels=np.array([0, 0, 0, -1, -1, 2, 2, 2]),
        similarity=rng.normal(0.25, 0.02, (3, 8)).astype(np.float32),
        segment_seconds=5.0,
        duration_s=38.5,
        method="drop_dtw",
        score=1.2345,
        model_id="open_clip:ViT-B-32",
        weights="random-demo",
        video_sha256="ab" * 32,
        title="Test protocol",
        aligner_version="0.1.0",
        config={"segment_seconds": 5.0, "method": "drop_dtw"},
        timings={"embed": 1.5},
        baseline_spans=[(0.0, 12.8), (12.8, 25.7), (25.7, 38.5)],
    )


def test_read_csv_annotations(tmp_path) -> None:
    path = tmp_path / "annotations.csv"
    path.write_text(PCR_CSV, encoding="utf-8")
    anns = read_annotations(path)
    assert anns[1] == Annotation("add primer1", 64.0, 99.0)
    assert [a.span for a in anns][-1] == (260.0, 266.0)


def test_csv_header_variants_extra_columns_and_clock_times() -> None:
    text = "Step,Start (s),End (s),note\nadd water,0:30,00:00:45.5,x\n"
    assert parse_annotations(text, "a.csv") == [Annotation("add water", 30.0, 45.5)]


def test_json_annotations_and_format_guess() -> None:
    text = json.dumps([{"step": "add primer1", "start": 64, "end": 99.5}])
    assert parse_annotations(text) == [Annotation("add primer1", 64.0, 99.5)]
    assert parse_annotations(text.encode("utf-8-sig"), "ann.json") == parse_annotations(text)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("step,begin,end\nx,1,2\n", "lacks column(s) ['start']"),
        ("step,start,end\nx,one,2\n", "line 2: start 'one' is not a number"),
        ("step,start,end\nx,1,2\ny,9,3\n", "line 3: start 9.0 is after end 3.0"),
        ("step,start,end\nx,-1,2\n", "line 2: negative time"),
        ("step,start,end\nx,1,\n", "end is empty"),
        ("step,start,end\nx,nan,3\n", "not a finite number"),
        ("", "empty"),
        ('[{"step": "x", "start": 1}]', "item 1 lacks key(s) ['end']"),
        ('{"foo": 1}', 'no "annotations" list'),
        ("[1, 2]", "item 1 is int"),
    ],
)
def test_annotation_errors_name_file_and_row(text: str, needle: str) -> None:
    fmt = "json" if text.startswith(("[", "{")) else None
    with pytest.raises(AnnotationError, match="ann.txt") as info:
        parse_annotations(text, "ann.txt", fmt=fmt)
    assert needle in str(info.value)


def test_annotations_to_spans_by_order_and_by_text() -> None:
    anns = parse_annotations(PCR_CSV, "a.csv")
    steps = [a.step.capitalize() + "." for a in anns]
    assert annotations_to_spans(anns, steps) == [a.span for a in anns]
    partial = [anns[0], anns[2], anns[5]]
    spans = annotations_to_spans(partial, steps)
    assert spans == [(30.0, 45.0), None, (106.0, 130.0), None, None, (260.0, 266.0)]
    with pytest.raises(AnnotationError, match="match no step"):
        annotations_to_spans([Annotation("weigh agarose", 0, 1)], steps)


def test_json_round_trip_with_similarity() -> None:
    result = make_result()
    d = json.loads(to_json(result, include_similarity=True))
    assert d["schema_version"] == 1
    assert d["steps"][1] == {
        "index": 1,
        "number": 2,
        "text": "Spin --> down.",
        "start": None,
        "end": None,
        "score": None,
    }
    assert d["weights"] == "random-demo"
    assert len(d["similarity"]) == 3 and len(d["similarity"][0]) == 8
    back = alignment_from_dict(d)
    assert back.spans == result.spans
    assert back.step_scores == result.step_scores
    assert back.baseline_spans == result.baseline_spans
    np.testing.assert_array_equal(back.labels, result.labels)
    np.testing.assert_allclose(back.similarity, result.similarity, atol=5e-5)
    for name in (
        "steps",
        "segment_seconds",
        "duration_s",
        "method",
        "score",
        "model_id",
        "weights",
        "video_sha256",
        "title",
        "aligner_version",
        "config",
        "timings",
    ):
        assert getattr(back, name) == getattr(result, name), name


def test_dict_without_similarity_marks_it_unknown() -> None:
    back = alignment_from_dict(alignment_to_dict(make_result()))
    assert back.similarity.shape == (3, 8)
    assert np.isnan(back.similarity).all()


def test_newer_schema_is_refused() -> None:
    d = alignment_to_dict(make_result())
    d["schema_version"] = 99
    with pytest.raises(ValueError, match="upgrade"):
        alignment_from_dict(d)


def test_csv_reads_back_as_annotations() -> None:
    result = make_result()
    text = to_csv(result)
    assert text.splitlines()[0] == "step,start,end,score"
    assert text.splitlines()[2] == "Spin --> down.,,,"
    anns = parse_annotations(text, "alignment.csv")
    assert annotations_to_spans(anns, result.steps) == result.spans


def test_webvtt_cues() -> None:
    vtt = to_webvtt(make_result())
    assert vtt.startswith("WEBVTT\n")
    blocks = vtt.strip().split("\n\n")
    cues = [b for b in blocks if re.match(r"step-\d+\n", b)]
    assert cues == [
        "step-1\n00:00:00.000 --> 00:00:15.000\nStep 1: Add &lt;water&gt; &amp; mix.",
        "step-3\n00:00:25.000 --> 00:00:38.500\nStep 3: Incubate 5 min.",
    ]
    assert "random-demo" in blocks[1]
    assert all(b.count("-->") <= 1 for b in blocks)


def test_webvtt_escapes_arrow_in_text_and_handles_hours() -> None:
    result = make_result()
    result.spans = [(3725.5, 3730.0), (3730.0, 3730.0), None]
    vtt = to_webvtt(result)
    assert "01:02:05.500 --> 01:02:10.000" in vtt
    assert "01:02:10.000 --> 01:02:10.001" in vtt
    assert "Step 2: Spin --&gt; down." in vtt


def test_elan_round_trip_is_lossless(tmp_path) -> None:
    extra = Annotation("チューブを遠心する & <mix>", 270.125, 281.5)
    anns = [*parse_annotations(PCR_CSV, "a.csv"), extra]
    path = tmp_path / "steps.eaf"
    path.write_text(annotations_to_eaf(anns, media_url="file:///video.mp4"), encoding="utf-8")
    assert read_annotations(path) == anns
    assert parse_annotations(path.read_text(encoding="utf-8")) == anns  # found by content too


def test_elan_tier_choice_and_errors() -> None:
    doc = annotations_to_eaf([Annotation("add water", 1.0, 2.0)])
    speech = doc.replace('TIER_ID="steps"', 'TIER_ID="speech"')
    assert parse_annotations(speech, "x.eaf") == [Annotation("add water", 1.0, 2.0)]
    tier = re.search(r"<TIER .*?</TIER>", speech, re.S).group(0)
    two_tiers = speech.replace(tier, tier + "\n" + tier.replace('"speech"', '"gaze"'))
    with pytest.raises(AnnotationError, match="rename the tier"):
        parse_annotations(two_tiers, "x.eaf")
    with pytest.raises(AnnotationError, match="unaligned time slot"):
        parse_annotations(doc.replace(' TIME_VALUE="2000"', ""), "x.eaf")
    with pytest.raises(AnnotationError, match="well-formed"):
        parse_annotations("<ANNOTATION_DOCUMENT>", "x.eaf")


def test_alignment_as_elan() -> None:
    result = make_result()
    rows = parse_annotations(to_eaf(result), "alignment.eaf")
    assert [(r.start, r.end) for r in rows] == [s for s in result.spans if s is not None]


def test_a_dataset_folder_may_hold_elan_annotations(tmp_path: Path) -> None:
    from biovl_core.io import load_recording, write_eaf

    folder = tmp_path / "pcr-1"
    folder.mkdir()
    (folder / "video.mp4").write_bytes(b"not decoded here")
    (folder / "protocol.txt").write_text("1. Add water.\n2. Add primer.\n")
    (folder / "annotations.eaf").write_text(
        write_eaf([("Add water.", 1.0, 4.0), ("Add primer.", 6.0, 9.5)])
    )
    rec = load_recording(folder)
    assert rec.annotations == folder / "annotations.eaf"
    spans = [a.span for a in read_annotations(rec.annotations)]
    assert spans == [(1.0, 4.0), (6.0, 9.5)]

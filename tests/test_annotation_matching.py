"""Annotations are matched to the protocol's steps once, at upload, in about linear time: exact
normalised text first, a fuzzy pass capped in rows x steps, files with far more rows than steps
refused; the spans are stored and served, and no request or job matches them again (issue 20:
a 6,000-row CSV against 600 steps took 111 s of ingress CPU per GET before)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from biovl_core.errors import AnnotationError
from biovl_core.io import Annotation, MatchTooLarge, annotations_to_spans, match_rows
from tests import service_fixtures as sf
from tests.service_fixtures import AUTH_A

checkpoint, recording, runner, make_env = sf.checkpoint, sf.recording, sf.runner, sf.make_env

STEPS = [f"Add reagent number {i} to tube {i % 7}." for i in range(600)]


def test_exact_rows_match_in_linear_time_and_the_fuzzy_pass_fills_the_gaps() -> None:
    rows = [s.upper() for s in STEPS]  # equal once normalised
    rows[10] = "Add reagent numbr 10 to tube 3"  # reworded: found by the fuzzy pass
    del rows[300]  # one step without a row
    matched = match_rows(rows, STEPS)
    assert len(matched) == len(rows)
    assert matched[10] == 10 and matched[299] == 299 and matched[300] == 301
    in_row_order = [matched[i] for i in sorted(matched)]
    assert in_row_order == sorted(in_row_order), "order is kept"


def test_the_fuzzy_pass_is_capped() -> None:
    rows = [f"unrelated text {i}" for i in range(1200)]
    with pytest.raises(MatchTooLarge, match="1200 rows match no step text exactly"):
        match_rows(rows, STEPS)


def test_far_more_rows_than_steps_are_refused() -> None:
    rows = [Annotation(f"row {i}", 0.0, 1.0) for i in range(6000)]
    with pytest.raises(AnnotationError, match="6000 annotation rows for 600 protocol steps"):
        annotations_to_spans(rows, STEPS)


def _csv(rows: list[tuple[str, float, float]]) -> bytes:
    return ("step,start,end\n" + "".join(f'"{s}",{a},{b}\n' for s, a, b in rows)).encode()


def test_a_6000_row_file_against_600_steps_is_refused_at_upload(
    make_env: Any, recording: Path
) -> None:
    env = make_env()
    protocol = "".join(f"{i + 1}. {s}\n" for i, s in enumerate(STEPS)).encode()
    files = {
        "video": ("video.mp4", (recording / "video.mp4").read_bytes(), "video/mp4"),
        "protocol": ("protocol.txt", protocol, "text/plain"),
        "annotations": ("a.csv", _csv([(f"x{i}", 1.0, 2.0) for i in range(6000)]), "text/csv"),
    }
    r = env.client.post("/v1/jobs", files=files, headers=AUTH_A)
    assert r.status_code == 422, r.text
    assert "6000 annotation rows for 600 protocol steps (at most 2416 are read)" in r.text
    assert env.queue.depth() == 0


def test_spans_matched_at_upload_are_served_without_reading_the_file_again(
    make_env: Any, recording: Path
) -> None:
    """Rows out of the protocol's wording and with an extra row: matched once at upload. The
    archived annotations file is then removed: GET and the worker still have the spans."""
    env = make_env()
    steps = (recording / "protocol.txt").read_text().splitlines()
    texts = [line.split(". ", 1)[1] for line in steps]
    rows = [(t.upper(), 2.0 * i, 2.0 * i + 1) for i, t in enumerate(texts)]
    rows.insert(3, ("Pause to label the tubes.", 7.0, 7.5))  # matches no step: an error...
    files = {
        "video": ("video.mp4", (recording / "video.mp4").read_bytes(), "video/mp4"),
        "protocol": ("protocol.txt", (recording / "protocol.txt").read_bytes(), "text/plain"),
        "annotations": ("a.csv", _csv(rows), "text/csv"),
    }
    r = env.client.post("/v1/jobs", files=files, headers=AUTH_A)
    assert r.status_code == 422 and "match no step by text" in r.text
    del rows[3]
    rows[1] = ("add primer 1", 2.0, 3.0)  # ...a reworded row is found by the fuzzy pass
    files["annotations"] = ("a.csv", _csv(rows[:-1]), "text/csv")  # 5 rows for 6 steps
    r = env.client.post("/v1/jobs", files=files, headers=AUTH_A)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    jf = env.service.archive.job("lab-a", job_id)
    want = [[2.0 * i, 2.0 * i + 1] for i in range(5)] + [None]
    want[1] = [2.0, 3.0]
    assert jf.record()["annotation_spans"] == want
    annotations = jf.annotations_path()
    assert annotations is not None
    annotations.unlink()  # nothing below may read it again
    got = env.client.get(f"/v1/jobs/{job_id}/annotations", headers=AUTH_A).json()
    assert got["spans"] == want and got["source"] == "upload"
    assert env.worker().run_forever(max_jobs=1) == 1
    alignment = env.client.get(f"/v1/jobs/{job_id}/alignment.json", headers=AUTH_A).json()
    assert alignment["annotation_spans"] == want and "annotations_error" not in alignment

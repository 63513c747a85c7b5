"""The hostile-client findings of issue 20 that are not about uploads' size or pace: each answer a
4xx with the fix (never a 500), security headers on every answer (a 500 too), exported CSV cells
that cannot run as formulas, the ELAN reader on defusedxml, ids matched in full, tokens that
follow their file, and a short recording aligned as ``biovl align`` aligns it.

Every test here failed on the code before its fix (checked by hand on the parent commit).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from biovl_core.errors import AnnotationError
from biovl_core.io import parse_annotations
from services.api import JobService, create_app
from services.api.hardening import SECURITY_HEADERS
from services.archive import ArchiveError, check_job_id, check_lab
from services.groups import check_protocol_id
from tests import service_fixtures as sf
from tests.media_fixtures import encode_video
from tests.service_fixtures import AUTH_A, TOKENS

checkpoint, recording, runner, make_env = sf.checkpoint, sf.recording, sf.runner, sf.make_env

DEEP = 10_000  # far past CPython's recursion limit (1000): json.loads raises RecursionError


def _deep_json() -> bytes:
    return b"[" * DEEP + b"]" * DEEP


def _submit(env: Any, recording: Path, **files: tuple[str | None, bytes]) -> Any:
    parts: dict[str, Any] = {
        "video": ("video.mp4", (recording / "video.mp4").read_bytes(), "video/mp4"),
        "protocol": ("protocol.txt", (recording / "protocol.txt").read_bytes(), "text/plain"),
    }
    data: dict[str, str] = {}
    for name, (filename, body) in files.items():
        if filename is None:
            data[name] = body.decode()
        else:
            parts[name] = (filename, body, "application/octet-stream")
    return env.client.post("/v1/jobs", files=parts, data=data, headers=AUTH_A)


@pytest.mark.parametrize(
    "where",
    ["options", "annotations", "protocol", "preview", "correction"],
)
def test_deeply_nested_json_is_a_4xx_with_the_fix(
    where: str, make_env: Any, recording: Path
) -> None:
    env = make_env()
    deep = _deep_json()
    if where == "options":
        r = _submit(env, recording, options=(None, deep))
    elif where == "annotations":
        r = _submit(env, recording, annotations=("a.json", deep))
    elif where == "protocol":
        r = _submit(env, recording, protocol=("protocol.json", deep))
    elif where == "preview":
        r = env.client.post(
            "/v1/protocol/preview", files={"protocol": ("p.json", deep)}, headers=AUTH_A
        )
    else:
        job_id = env.post(recording).json()["job_id"]
        r = env.client.put(f"/v1/jobs/{job_id}/annotations", content=deep, headers=AUTH_A)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert "nested too deeply" in r.json()["error"], r.text[:300]
    assert env.queue.depth() == (1 if where == "correction" else 0)


def test_a_non_ascii_signature_is_a_403_not_a_500(make_env: Any, recording: Path) -> None:
    env = make_env()
    job_id = env.post(recording).json()["job_id"]
    links = env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["links"]
    url = links["video"].split("sig=")[0] + "sig=%C3%A9"
    r = env.client.get(url)
    assert r.status_code == 403, r.text
    assert "invalid link signature" in r.json()["error"]


def test_a_500_carries_the_security_headers_and_no_traceback(
    make_env: Any, recording: Path
) -> None:
    """A job record broken on disk makes GET fail unexpectedly: the 500 still has the headers."""
    env = make_env()
    job_id = env.post(recording).json()["job_id"]
    jf = env.service.archive.job("lab-a", job_id)
    jf.record_path.write_text("{not json", encoding="utf-8")
    client = TestClient(create_app(env.service), raise_server_exceptions=False)
    r = client.get(f"/v1/jobs/{job_id}", headers=AUTH_A)
    assert r.status_code == 500
    for header, value in SECURITY_HEADERS.items():
        assert r.headers.get(header) == value, (header, r.headers)
    assert r.headers["cache-control"] == "private, no-store"
    assert r.json() == {
        "error": "internal error; the operator's log has the details",
        "status": 500,
    }
    assert "Traceback" not in r.text and str(jf.dir) not in r.text


def test_exported_csv_cells_cannot_run_as_formulas() -> None:
    from biovl_core.io import to_csv
    from biovl_core.result import AlignmentResult

    steps = ['=HYPERLINK("http://x","y")', "+1+1", "-cmd", "@SUM(A1)", "Add water."]
    result = AlignmentResult(
        steps=steps,
        spans=[(0.0, 1.0)] * 5,
        step_scores=[-0.25, 0.5, 0.1, 0.2, 0.3],
        labels=np.zeros(2, dtype=int),
        similarity=np.zeros((5, 2), dtype=np.float32),
        segment_seconds=5.0,
        duration_s=10.0,
        method="nw",
        score=0.0,
    )
    rows = to_csv(result).splitlines()[1:]
    cells = [row.split(",")[0] for row in rows]
    for cell in cells[:4]:
        assert cell.lstrip('"').startswith("'"), cell
    assert cells[4] == "Add water."
    assert rows[0].endswith(",-0.2500"), "a negative score stays a number"
    # and the file still reads back as annotations of the same steps
    back = parse_annotations(to_csv(result), filename="a.csv")
    assert [a.step.lstrip("'") for a in back] == steps


def test_the_elan_reader_refuses_entities() -> None:
    eaf = (
        '<?xml version="1.0"?>\n<!DOCTYPE ANNOTATION_DOCUMENT [<!ENTITY s "Add water">]>\n'
        "<ANNOTATION_DOCUMENT><TIME_ORDER>"
        '<TIME_SLOT TIME_SLOT_ID="ts1" TIME_VALUE="0"/><TIME_SLOT TIME_SLOT_ID="ts2" '
        'TIME_VALUE="1000"/></TIME_ORDER><TIER TIER_ID="steps"><ANNOTATION>'
        '<ALIGNABLE_ANNOTATION ANNOTATION_ID="a1" TIME_SLOT_REF1="ts1" TIME_SLOT_REF2="ts2">'
        "<ANNOTATION_VALUE>&s;</ANNOTATION_VALUE></ALIGNABLE_ANNOTATION></ANNOTATION>"
        "</TIER></ANNOTATION_DOCUMENT>"
    )
    with pytest.raises(AnnotationError, match="declares XML entities"):
        parse_annotations(eaf, filename="a.eaf")


@pytest.mark.parametrize(
    "check,value",
    [
        (check_job_id, "0" * 40 + "\n"),
        (check_lab, "lab-a\n"),
        (check_protocol_id, "pcr-v1\n"),
    ],
)
def test_ids_are_matched_in_full(check: Any, value: str) -> None:
    with pytest.raises((ArchiveError, ValueError)):
        check(value)


def test_tokens_follow_their_file(make_env: Any, tmp_path: Path) -> None:
    """A revoked token stops working on the next request, a new one works, no restart."""
    tokens = tmp_path / "lab-tokens.json"

    def write(labs: dict[str, str]) -> None:
        digests = {lab: hashlib.sha256(tok.encode()).hexdigest() for lab, tok in labs.items()}
        new = tokens.with_suffix(".new")
        new.write_text(json.dumps(digests), encoding="utf-8")
        new.replace(tokens)  # as a k8s Secret update swaps the file

    write({"lab-a": TOKENS["lab-a"]})
    env = make_env(lab_tokens=None, tokens_file=str(tokens))
    assert env.client.get("/v1/jobs", headers=AUTH_A).status_code == 200
    write({"lab-c": "token-c-0123456789"})
    assert env.client.get("/v1/jobs", headers=AUTH_A).status_code == 401
    r = env.client.get("/v1/jobs", headers={"Authorization": "Bearer token-c-0123456789"})
    assert r.status_code == 200 and r.json()["lab"] == "lab-c"
    tokens.write_text("{broken", encoding="utf-8")  # a bad edit keeps the tokens in force
    r = env.client.get("/v1/jobs", headers={"Authorization": "Bearer token-c-0123456789"})
    assert r.status_code == 200
    with pytest.raises(ValueError):  # while a replica starting on it refuses it loudly
        JobService(env.settings)


def test_a_short_recording_is_aligned_with_shorter_segments_as_the_cli_does(
    make_env: Any, tmp_path: Path
) -> None:
    """10 s of video and 3 steps: 2 segments of 5 s are too few, so 3.3 s segments are used
    (fit_segment_seconds), noted on the job; the worker runs that job to a result."""
    env = make_env()
    video = encode_video(tmp_path / "short.mp4", seconds=10)
    files = {
        "video": ("short.mp4", video.read_bytes(), "video/mp4"),
        "protocol": ("p.txt", b"1. Add water.\n2. Add primer.\n3. Mix.\n", "text/plain"),
    }
    r = env.client.post("/v1/jobs", files=files, headers=AUTH_A)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["options"]["segment_seconds"] == pytest.approx(3.3)
    assert "aligned with 3.3 s segments" in body["notes"][0]
    assert env.worker().run_forever(max_jobs=1) == 1
    done = env.client.get(f"/v1/jobs/{body['job_id']}", headers=AUTH_A).json()
    assert done["status"] == "succeeded", done
    spans = [s for s in done["result"]["steps"] if s["start"] is not None]
    assert len(spans) == 3

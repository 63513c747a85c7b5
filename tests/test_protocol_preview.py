"""The upload form's protocol preview route: the steps, lines and notes the worker will align."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biovl_core.protocol import read_protocol
from tests import service_fixtures as sf
from tests.service_fixtures import AUTH_A

checkpoint, runner, make_env, recording = sf.checkpoint, sf.runner, sf.make_env, sf.recording
CORPUS = Path(__file__).parent / "protocol_corpus"


def test_preview_returns_steps_lines_and_notes(make_env: Any) -> None:
    env = make_env()
    path = CORPUS / "nature_protocols_marks.txt"
    files = {"protocol": (path.name, path.read_bytes(), "text/plain")}
    response = env.client.post("/v1/protocol/preview", files=files, headers=AUTH_A)
    assert response.status_code == 200
    body = response.json()
    assert body == {"filename": path.name, **read_protocol(path).to_dict()}
    assert body["steps"][0]["line"] == 1 and body["steps"][0]["notes"]
    assert env.queue.depth() == 0  # a preview submits nothing


def test_preview_needs_a_token_and_names_protocol_errors(make_env: Any) -> None:
    env = make_env()
    files = {"protocol": ("p.txt", b"1. Add water.\n", "text/plain")}
    assert env.client.post("/v1/protocol/preview", files=files).status_code == 401
    empty = env.client.post(
        "/v1/protocol/preview", files={"protocol": ("p.txt", b"  \n")}, headers=AUTH_A
    )
    assert empty.status_code == 422 and "p.txt" in empty.json()["error"]
    missing = env.client.post("/v1/protocol/preview", data={"x": "1"}, headers=AUTH_A)
    assert missing.status_code == 422 and '"protocol"' in missing.json()["error"]


def _edited(recording: Path) -> dict[str, Any]:
    """The recording's protocol as the preview gives it, then edited as a lab would: the first
    two steps merged, the last one split in two, a note kept."""
    steps = read_protocol(recording / "protocol.txt").steps
    edited = [
        {"text": f"{steps[0]} {steps[1]}", "notes": ["Note: on ice."]},
        *({"text": s} for s in steps[2:-1]),
        {"text": f"{steps[-1]} (part 1)"},
        {"text": f"{steps[-1]} (part 2)", "details": ["95 °C 3 min"]},
    ]
    return {"title": "PCR, edited", "steps": edited}


def test_job_aligns_the_edited_steps_and_keeps_the_original(make_env: Any, recording: Path) -> None:
    env = make_env()
    files, data = sf.upload(recording, annotations=False)
    steps = _edited(recording)
    data["steps"] = json.dumps(steps)
    r = env.client.post("/v1/jobs", files=files, data=data, headers=AUTH_A)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    jf = env.service.archive.job("lab-a", job_id)
    original = (recording / "protocol.txt").read_text()
    assert jf.protocol_original_path.read_text() == original
    archived = json.loads(jf.protocol_path.read_text())
    assert [s["text"] for s in archived["steps"]] == [s["text"] for s in steps["steps"]]
    assert archived["title"] == "PCR, edited" and archived["steps"][0]["notes"] == ["Note: on ice."]
    body = env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()
    assert body["protocol_edited"] is True and body["num_steps"] == len(steps["steps"])
    assert env.worker().run_forever(max_jobs=1) == 1
    alignment = env.client.get(f"/v1/jobs/{job_id}/alignment.json", headers=AUTH_A).json()
    assert [s["text"] for s in alignment["steps"]] == [s["text"] for s in steps["steps"]]
    assert alignment["steps"][0]["notes"] == ["Note: on ice."]
    # the same video and protocol without edits is another job
    plain = env.client.post("/v1/jobs", files=files, data={}, headers=AUTH_A)
    assert plain.status_code == 202 and plain.json()["job_id"] != job_id


def test_edited_steps_errors_name_the_field(make_env: Any, recording: Path) -> None:
    env = make_env()
    files, _ = sf.upload(recording, annotations=False)
    for steps, needle in [
        ("1. Add water.", "steps is not valid JSON"),
        ('{"steps": []}', "no steps"),
        ('{"steps": [{"text": "  "}]}', "step 1 is empty"),
        ('{"steps": [{"txt": "Add water."}]}', 'without a "text"'),
        ('"Add water."', "must be a JSON object or list"),
    ]:
        r = env.client.post("/v1/jobs", files=files, data={"steps": steps}, headers=AUTH_A)
        assert r.status_code == 422 and needle in r.json()["error"], (steps, r.text)
    only_steps = {"video": files["video"]}
    r = env.client.post(
        "/v1/jobs", files=only_steps, data={"steps": '["Add water.", "Mix."]'}, headers=AUTH_A
    )
    assert r.status_code == 202, r.text
    jf = env.service.archive.job("lab-a", r.json()["job_id"])
    assert not jf.protocol_original_path.exists()
    assert env.queue.depth() == 1

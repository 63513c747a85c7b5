"""Groups in the service: protocol identity, corrections (PUT /v1/jobs/{id}/annotations) and the
worker aligning a new recording with its group, on real Redis and the tiny model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from biovl_core.pipeline import align_video
from biovl_core.protocol import parse_protocol
from biovl_core.synthetic import make_recording
from services.groups import map_spans, protocol_key
from tests.service_fixtures import (  # noqa: F401  (fixtures)
    AUTH_A,
    AUTH_B,
    checkpoint,
    make_env,
    recording,
    runner,
)


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another PCR recording of the same protocol (other timings, other noise)."""
    return make_recording(tmp_path_factory.mktemp("rec2"), "pcr", seed=1, duration_s=30)


def _steps(rec: Path) -> list[str]:
    return list(parse_protocol((rec / "protocol.txt").read_text(), "protocol.txt").steps)


def _process(env: Any, job_id: str) -> dict[str, Any]:
    """Run the worker until the job has a result; its alignment JSON."""
    worker = env.worker()
    worker.run_forever(max_jobs=1)
    r = env.client.get(f"/v1/jobs/{job_id}/alignment.json", headers=AUTH_A)
    assert r.status_code == 200, r.text
    return r.json()


def test_protocol_key_normalises_and_protocol_id_wins():
    steps = ["Add 10 µl of water.", "Spin  down"]
    assert protocol_key(steps) == protocol_key(["add 10 µl of WATER", "spin down!"])
    assert protocol_key(steps) != protocol_key(steps[::-1])
    assert protocol_key(steps).startswith("steps:")
    assert protocol_key(steps, {"protocol_id": "pcr-weekly"}) == "pcr-weekly"


def test_spans_follow_steps_across_versions():
    old = ["add sterile distilled water", "add primer 1", "add template"]
    new = ["Add sterile distilled water.", "Add primer 1 (10 µM).", "Add the template DNA."]
    spans = [(1.0, 2.0), None, (5.0, 6.0)]
    assert map_spans(spans, old, new) == spans
    with pytest.raises(ValueError, match="match no step"):
        map_spans(spans, old, [*new, "run the gel"])


def test_corrections_are_versions_lab_scoped_and_checked(make_env, recording):  # noqa: F811
    env = make_env()
    job_id = env.post(recording, annotations=False).json()["job_id"]
    url = f"/v1/jobs/{job_id}/annotations"
    k = len(_steps(recording))
    assert env.client.get(url, headers=AUTH_A).json()["source"] is None
    body = [[i * 4.0, i * 4.0 + 3.0] for i in range(k)]
    body[2] = None
    # Another lab cannot read or write it, exactly as if it did not exist.
    assert env.client.put(url, json=body, headers=AUTH_B).status_code == 404
    assert env.client.get(url, headers=AUTH_B).status_code == 404
    assert env.client.put(url, json=body).status_code == 401
    for bad in (body[:-1], {"spans": body}, [[3.0, 1.0]] + body[1:], [[0, 999.0]] + body[1:]):
        r = env.client.put(url, json=bad, headers=AUTH_A)
        assert r.status_code == 422 and "step" in r.json()["error"], r.text
    assert env.client.put(url, content=b"{nope", headers=AUTH_A).status_code == 422
    huge = b"[" + b"null," * 60_000 + b"null]"
    assert env.client.put(url, content=huge, headers=AUTH_A).status_code == 413
    first = env.client.put(url, json=body, headers=AUTH_A).json()
    assert first["version"] == 1 and first["source"] == "correction" and first["lab"] == "lab-a"
    assert first["spans"][2] is None and first["spans"][0] == [0.0, 3.0]
    body[0] = [1.0, 3.5]
    again = env.client.put(url, json=body, headers=AUTH_A).json()
    assert again["version"] == 2 and again["versions"] == [1, 2]
    got = env.client.get(url, headers=AUTH_A).json()
    assert got["spans"][0] == [1.0, 3.5] and got["saved_at"] >= first["saved_at"]
    stored = json.loads(
        (env.service.archive.job("lab-a", job_id).dir / "corrections" / "v0001.json").read_text()
    )
    assert stored["lab"] == "lab-a" and stored["spans"][0] == [0.0, 3.0]


def _deviations_counted() -> dict[str, float]:
    """biovl_deviations_total per kind in this process (the worker runs in the test)."""
    from prometheus_client import REGISTRY

    from services.metrics import DEVIATION_KINDS

    return {
        k: REGISTRY.get_sample_value("biovl_deviations_total", {"kind": k}) or 0.0
        for k in DEVIATION_KINDS
    }


def test_bad_protocol_id_is_refused(make_env, recording):  # noqa: F811
    env = make_env()
    r = env.post(recording, options=json.dumps({"protocol_id": "../x"}))
    assert r.status_code == 422 and "protocol_id" in r.json()["error"]


def test_next_recording_learns_from_a_correction(make_env, recording, second):  # noqa: F811
    env = make_env()
    first = env.post(recording, annotations=False).json()["job_id"]
    alone = _process(env, first)
    steps = _steps(recording)
    assert alone["group"] == {
        "protocol_key": protocol_key(steps),
        "recordings": 0,
        "annotated": 0,
        "corrections": 0,
        "used": False,
    }
    assert all("confidence" not in s for s in alone["steps"])
    assert "deviations" not in alone and all("lab" not in s for s in alone["steps"])
    # The researcher corrects the first recording to its true spans.
    truth = [[float(a), float(b)] for a, b in _annotated(recording)]
    put = env.client.put(f"/v1/jobs/{first}/annotations", json=truth, headers=AUTH_A)
    assert put.status_code == 200, put.text
    # A reworded protocol joins the group through its protocol_id.
    reworded = "".join(f"{i + 1}. {s.upper()} now.\n" for i, s in enumerate(steps))
    options = json.dumps({"protocol_id": alone["group"]["protocol_key"]})
    job = env.post(second, annotations=False, protocol=reworded, options=options).json()["job_id"]
    counted_before = _deviations_counted()
    grouped = _process(env, job)
    assert grouped["group"]["recordings"] == 1
    assert grouped["group"]["annotated"] == 1 and grouped["group"]["corrections"] == 1
    assert grouped["group"]["protocol_key"] == alone["group"]["protocol_key"]
    assert all(0.0 <= s["confidence"] <= 1.0 for s in grouped["steps"])
    # Its deviation report, and per step the lab's usual range learned from the correction.
    assert isinstance(grouped["deviations"], list)
    assert all(0.0 <= e["confidence"] <= 1.0 for e in grouped["deviations"])
    found = Counter(e["kind"] for e in grouped["deviations"])
    counted = _deviations_counted()
    assert {k: counted[k] - counted_before[k] for k in counted} == {
        k: float(found[k]) for k in counted
    }, "biovl_deviations_total counts each finding of the report once"
    for s, (a, b) in zip(grouped["steps"], truth, strict=True):
        assert s["lab"]["median_s"] == pytest.approx(b - a, abs=0.01)
        assert s["lab"]["evidence"] == 3.0  # one correction counts as three alignments
    summary = env.client.get(f"/v1/jobs/{job}", headers=AUTH_A).json()
    assert summary["result"]["deviations"] == grouped["deviations"]
    # The lab's page: this protocol, its two recordings, steps sorted by how much they vary.
    report = env.client.get("/v1/protocols", headers=AUTH_A).json()
    (proto,) = report["protocols"]
    assert proto["protocol_key"] == alone["group"]["protocol_key"]
    assert proto["recordings"] == 2 and proto["annotated"] == 1
    shares = [r["deviation_share"] for r in proto["steps"]]
    assert shares == sorted(shares, reverse=True) and len(shares) == len(steps)
    assert env.client.get("/v1/protocols", headers=AUTH_B).json()["protocols"] == []
    assert env.client.get("/v1/protocols").status_code == 401
    # Text alone, on the same embeddings, gives another alignment.
    cfg = env.settings.pipeline_config().replace(
        cache_dir=str(env.service.archive.root / "embeddings")
    )
    text_only = align_video(
        second / "video.mp4",
        parse_protocol(reworded, "protocol.txt"),
        cfg,
        embedder=env.runner.embedder(cfg),
    )
    assert grouped["method"] == "group" and grouped["group"]["used"] is True
    assert grouped["labels"] != text_only.labels.tolist()
    # Another lab's recordings of the same protocol are no part of lab-a's group.
    other = env.post(second, annotations=False, headers=AUTH_B).json()["job_id"]
    env.worker().run_forever(max_jobs=1)
    theirs = env.client.get(f"/v1/jobs/{other}/alignment.json", headers=AUTH_B).json()
    assert theirs["group"]["recordings"] == 0


def _annotated(rec: Path) -> list[tuple[float, float]]:
    from biovl_core.io import annotations_to_spans, read_annotations

    spans = annotations_to_spans(read_annotations(rec / "annotations.csv"), _steps(rec))
    return [s for s in spans if s is not None]

"""Groups under Ray Serve: a correction PUT through the Serve ingress teaches the next recording of
the protocol, aligned by the QueueWorker replica with the group's cached embeddings (real Ray,
real Redis, tiny model)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from biovl_core.io import annotations_to_spans, read_annotations
from biovl_core.protocol import parse_protocol
from biovl_core.synthetic import make_recording
from services.redis_conn import connect
from tests import service_fixtures as sf
from tests.conftest import free_port
from tests.service_fixtures import AUTH_A, make_settings, poll, upload

checkpoint, recording = sf.checkpoint, sf.recording

pytestmark = pytest.mark.slow


def _done(client: httpx.Client, recording: Path) -> dict[str, Any]:
    files, data = upload(recording, annotations=False)
    r = client.post("/v1/jobs", files=files, data=data)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    body = poll(
        lambda: client.get(f"/v1/jobs/{job_id}"),
        lambda b: b["status"] in ("succeeded", "dead"),
        timeout_s=180,
    )
    assert body["status"] == "succeeded", body.get("error")
    return {"job_id": job_id, **client.get(f"/v1/jobs/{job_id}/alignment.json").json()}


def stage_counts(page: str) -> dict[str, float]:
    """{stage: observations} of biovl_stage_seconds on a Prometheus text page."""
    found = re.findall(
        r'^biovl_stage_seconds_count\{[^}]*stage="([^"]+)"[^}]*\} (\S+)$', page, re.M
    )
    return {stage: float(value) for stage, value in found}


def test_serve_worker_aligns_with_the_corrected_group(
    ray_cluster: dict[str, Any], redis_url: str, checkpoint: Path, recording: Path, tmp_path: Path
) -> None:
    from ray import serve

    from services.serve.app import build_app

    settings = make_settings(
        tmp_path,
        redis_url,
        checkpoint,
        worker_replicas=1,
        # A folder of its own: the session's is counted by test_service_serve.
        metrics_dir=str(tmp_path / "prom"),
        http_port=int(ray_cluster["port"]),  # type: ignore[arg-type]
        worker_metrics_port=free_port(),
    )
    other = make_recording(tmp_path / "other", "pcr", seed=1, duration_s=30)
    metrics_url = f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"
    serve.run(build_app(settings), name="biovl-groups", route_prefix="/")
    base = f"http://127.0.0.1:{ray_cluster['port']}"
    try:
        with httpx.Client(base_url=base, headers=AUTH_A, timeout=60) as client:
            first = _done(client, recording)
            assert first["group"]["recordings"] == 0
            steps = parse_protocol((recording / "protocol.txt").read_text(), "protocol.txt").steps
            truth = annotations_to_spans(read_annotations(recording / "annotations.csv"), steps)
            url = f"/v1/jobs/{first['job_id']}/annotations"
            put = client.put(url, json=[list(s) for s in truth])
            assert put.status_code == 200 and put.json()["version"] == 1, put.text
            second = _done(client, other)
            info = dict(second["group"])
            assert isinstance(info.pop("refined"), int)  # change points moved off the grid
            hidden = info.pop("hidden_steps")  # skipped steps the frames inside showed after all
            assert isinstance(hidden, list) and all(0 <= s < len(steps) for s in hidden)
            assert info == {
                "protocol_key": first["group"]["protocol_key"],
                "recordings": 1,
                "annotated": 1,
                "corrections": 1,
                "used": True,
            }
            assert second["method"] == "group"
            assert all(0.0 <= s["confidence"] <= 1.0 for s in second["steps"])
            # Both jobs had a group; only the first (no member yet) went to the Aligner. The
            # co-alignment ran in the QueueWorker and is timed there, as a stage of its own.
            counts = stage_counts(httpx.get(metrics_url, timeout=10).text)
            assert counts.get("group_align") == 2 and counts.get("align") == 1, counts
    finally:
        serve.delete("biovl-groups")
        r = connect(redis_url)
        keys = list(r.scan_iter(f"{settings.redis_prefix}:*"))
        if keys:
            r.delete(*keys)

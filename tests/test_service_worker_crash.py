"""At-least-once for real: SIGKILL a worker process mid-job; the job still completes exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import service_fixtures as sf
from tests.service_fixtures import AUTH_A

checkpoint, recording, runner, make_env = sf.checkpoint, sf.recording, sf.runner, sf.make_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def start_worker(config: Path, consumer: str, *extra: str) -> subprocess.Popen[bytes]:
    """``python -m services worker --config <config>`` as a child process."""
    env = dict(os.environ, BIOVL_DEVICE="cpu", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services",
            "worker",
            "--config",
            str(config),
            "--consumer",
            consumer,
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_killed_worker_job_is_reclaimed_and_completes_once(
    make_env: Any, recording: Path, tmp_path: Path
) -> None:
    env = make_env(visibility_timeout_s=3.0, max_attempts=3)
    config = tmp_path / "service.yaml"
    config.write_text(yaml.safe_dump({"service": env.settings.to_dict()}))
    job_id = env.post(recording).json()["job_id"]

    first = start_worker(config, "worker-a")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = env.queue.status(job_id) or {}
            if st.get("status") == "running":
                break
            assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
            time.sleep(0.02)
        else:
            raise AssertionError(f"worker-a never claimed the job: {env.queue.status(job_id)}")
        assert st["worker"] == "worker-a"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    jf = env.service.archive.job("lab-a", job_id)
    assert jf.versions() == [], "worker-a finished before it was killed; the test proves nothing"
    assert env.queue.status(job_id)["status"] == "running"  # orphaned: nobody acks it

    second = start_worker(config, "worker-b", "--max-jobs", "1")
    try:
        out, _ = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, out.decode()

    body = env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()
    assert body["status"] == "succeeded" and body["attempts"] == 2
    assert jf.versions() == [1]
    stored = json.loads(jf.alignment_path(1).read_text())
    assert stored["service"]["worker"] == "worker-b" and stored["service"]["attempts"] == 2
    assert env.queue.depth() == 0
    assert env.queue.r.xpending(env.queue.stream, "workers")["pending"] == 0
    assert env.queue.dead_depth() == 0

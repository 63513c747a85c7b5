"""Helpers for the service tests: settings on a private Redis prefix, a tiny model, uploads."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from biovl_core.synthetic import make_recording
from services.api import JobService, create_app
from services.queue import JobQueue
from services.runner import LocalRunner
from services.settings import ServiceSettings
from services.worker import Worker
from tests.fixtures_embed import make_tiny_clip_checkpoint, tiny_cfg

TOKENS = {"lab-a": "token-a-0123456789", "lab-b": "token-b-0123456789"}
AUTH_A = {"Authorization": f"Bearer {TOKENS['lab-a']}"}
AUTH_B = {"Authorization": f"Bearer {TOKENS['lab-b']}"}


def make_settings(root: Path, redis_url: str, checkpoint: Path, **changes: Any) -> ServiceSettings:
    """Settings on a fresh archive and Redis key prefix, with the tiny CPU model."""
    cfg = tiny_cfg(checkpoint).to_dict()
    base = ServiceSettings(
        archive_dir=str(root / "archive"),
        redis_url=redis_url,
        redis_prefix=f"test-{uuid.uuid4().hex[:12]}",
        lab_tokens=",".join(f"{lab}:{tok}" for lab, tok in TOKENS.items()),
        pipeline=cfg,
        max_attempts=2,
        visibility_timeout_s=3.0,
        claim_block_ms=200,
        worker_metrics_port=0,
    )
    return base.replace(**changes)


def upload(
    recording: Path,
    *,
    protocol: str | None = None,
    options: str | None = None,
    annotations: bool | None = None,
    video_bytes: bytes | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(files, data) for a multipart POST /v1/jobs of a generated recording; its annotations go
    along by default with its own protocol only (they are matched to the steps at upload)."""
    if annotations is None:
        annotations = protocol is None
    video = video_bytes if video_bytes is not None else (recording / "video.mp4").read_bytes()
    files: dict[str, Any] = {"video": ("video.mp4", video, "video/mp4")}
    text = protocol if protocol is not None else (recording / "protocol.txt").read_text()
    files["protocol"] = ("protocol.txt", text.encode("utf-8"), "text/plain")
    if annotations:
        files["annotations"] = (
            "annotations.csv",
            (recording / "annotations.csv").read_bytes(),
            "text/csv",
        )
    data = {"options": options} if options is not None else {}
    return files, data


def poll(
    get: Callable[[], httpx.Response], done: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """Call ``get`` until ``done(json)``; fail with the last body after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = get()
        body = r.json()
        if done(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s; last response {body}")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated tiny CLIP checkpoint."""
    return make_tiny_clip_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=0)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 30 s PCR recording (video.mp4, protocol.txt, annotations.csv)."""
    return make_recording(tmp_path_factory.mktemp("rec"), "pcr", seed=0, duration_s=30)


@pytest.fixture(scope="module")
def runner() -> LocalRunner:
    """One in-process pipeline runner (keeps the loaded model between tests)."""
    return LocalRunner()


class Env:
    """A service instance: settings, HTTP client, queue and a worker factory."""

    def __init__(self, settings: ServiceSettings, runner: LocalRunner) -> None:
        self.settings = settings
        self.service = JobService(settings)
        self.client = TestClient(create_app(self.service))
        self.queue: JobQueue = self.service.queue
        self.runner = runner

    def worker(self) -> Worker:
        """A worker on the same archive and queue."""
        return Worker(self.settings, self.runner, queue=self.queue, archive=self.service.archive)

    def post(self, recording: Path, headers: dict[str, str] = AUTH_A, **kw: Any) -> Any:
        """POST /v1/jobs with a generated recording."""
        files, data = upload(recording, **kw)
        return self.client.post("/v1/jobs", files=files, data=data, headers=headers)

    def cleanup(self) -> None:
        """Drop this test's Redis keys."""
        keys = list(self.service.redis.scan_iter(f"{self.settings.redis_prefix}:*"))
        if keys:
            self.service.redis.delete(*keys)


@pytest.fixture
def make_env(
    tmp_path: Path, redis_url: str, checkpoint: Path, runner: LocalRunner
) -> Iterator[Any]:
    """Factory of service instances on private archive folders and Redis prefixes."""
    envs: list[Env] = []

    def factory(**changes: Any) -> Env:
        env = Env(
            make_settings(tmp_path / f"s{len(envs)}", redis_url, checkpoint, **changes), runner
        )
        envs.append(env)
        return env

    yield factory
    for env in envs:
        env.cleanup()

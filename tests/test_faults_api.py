"""Faults reach a lab as a named 503 (Redis down, paused or refusing writes) or 507 (the archive
disk is full) with Retry-After, never a bare 500; /v1/healthz names them. Real faults only: a
private redis-server killed, paused and made to refuse writes, and a real small tmpfs filled."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from tests import service_fixtures as sf
from tests.fault_fixtures import OwnRedis, fill, mount_tmpfs, own_redis, small_tmpfs, umount
from tests.service_fixtures import AUTH_A

checkpoint, recording, runner = sf.checkpoint, sf.recording, sf.runner
own_redis, small_tmpfs = own_redis, small_tmpfs


def _env(root: Path, server: OwnRedis, checkpoint: Path, runner: Any, **changes: Any) -> sf.Env:
    changes.setdefault("min_free_archive_bytes", 1024 * 1024)
    return sf.Env(sf.make_settings(root, server.url, checkpoint, **changes), runner)


def _request_faults(kind: str) -> float:
    return REGISTRY.get_sample_value("biovl_request_faults_total", {"kind": kind}) or 0.0


def _assert_fault(response: Any, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and words in body["error"], body
    assert int(response.headers["Retry-After"]) > 0


def test_redis_down_answers_503_naming_it(
    tmp_path: Path, own_redis: OwnRedis, checkpoint: Path, runner: Any, recording: Path
) -> None:
    env = _env(tmp_path, own_redis, checkpoint, runner)
    job_id = env.post(recording).json()["job_id"]
    assert env.client.get("/v1/healthz").status_code == 200
    own_redis.kill()
    before = _request_faults("redis"), _request_faults("disk_full")
    _assert_fault(env.post(recording, protocol="1. Mix.\n2. Spin.\n"), 503, "unreachable")
    # counted as a request fault (a job's run is not involved), not as a job fault
    assert (_request_faults("redis"), _request_faults("disk_full")) == (before[0] + 1, before[1])
    _assert_fault(env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A), 503, "Redis")
    _assert_fault(env.client.get("/v1/healthz"), 503, "unreachable")
    own_redis.start()  # AOF: the queue is back as it was
    assert env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["status"] == "queued"
    assert env.client.get("/v1/healthz").status_code == 200


def test_paused_redis_answers_503_after_the_socket_timeout(
    tmp_path: Path, own_redis: OwnRedis, checkpoint: Path, runner: Any, recording: Path
) -> None:
    env = _env(tmp_path, own_redis, checkpoint, runner)
    job_id = env.post(recording).json()["job_id"]
    own_redis.pause()
    try:
        _assert_fault(env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A), 503, "Timeout")
    finally:
        own_redis.resume()
    assert env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).status_code == 200


def test_redis_refusing_writes_misconf_is_503_and_unhealthy(
    tmp_path: Path, checkpoint: Path, runner: Any, recording: Path
) -> None:
    disk = tmp_path / "redis-disk"
    mount_tmpfs(disk, 512 * 1024)  # a real tmpfs too small for the server's snapshot
    server = OwnRedis(
        disk, "--appendonly", "no", "--save", "3600 1", "--stop-writes-on-bgsave-error", "yes"
    )
    server.start()
    try:
        env = _env(tmp_path, server, checkpoint, runner)
        admin = server.client()
        admin.set("ballast", os.urandom(2 * 1024 * 1024))  # incompressible
        admin.bgsave()
        deadline = time.monotonic() + 10
        while admin.info("persistence")["rdb_last_bgsave_status"] != "err":
            assert time.monotonic() < deadline, admin.info("persistence")
            time.sleep(0.05)
        _assert_fault(env.post(recording), 503, "refuses writes")
        _assert_fault(env.client.get("/v1/healthz"), 503, "cannot save")
        admin.config_set("stop-writes-on-bgsave-error", "no")  # the operator's way out
        admin.delete("ballast")
        assert env.client.get("/v1/healthz").status_code == 503  # the failed save still shows
        admin.bgsave()
        deadline = time.monotonic() + 10
        while admin.info("persistence")["rdb_last_bgsave_status"] != "ok":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert env.client.get("/v1/healthz").status_code == 200
        assert env.post(recording).status_code == 202
    finally:
        server.kill()
        umount(disk)


def test_full_archive_disk_answers_507_and_healthz_says_so(
    small_tmpfs: Path, own_redis: OwnRedis, checkpoint: Path, runner: Any, recording: Path
) -> None:
    # the upload itself hits ENOSPC (the early free-space check is set below what is left)
    env = _env(small_tmpfs, own_redis, checkpoint, runner, min_free_archive_bytes=0)
    env.service.archive.tmp_dir.mkdir(parents=True, exist_ok=True)
    filler = fill(small_tmpfs, leave_bytes=64 * 1024)
    before = _request_faults("disk_full")
    _assert_fault(env.post(recording), 507, "disk is full")
    assert _request_faults("disk_full") == before + 1
    assert list(env.service.archive.tmp_dir.iterdir()) == []  # the partial upload is removed
    # with the operator's minimum, the API refuses before reading the upload, and health says so
    env.settings.min_free_archive_bytes = 1024 * 1024
    _assert_fault(env.post(recording), 507, "disk is full")
    _assert_fault(env.client.get("/v1/healthz"), 503, "archive disk is full")
    filler.unlink()
    assert env.client.get("/v1/healthz").status_code == 200
    assert env.post(recording).status_code == 202
    env.cleanup()


def test_embedded_redis_keeps_an_aof_in_its_own_data_dir(tmp_path: Path) -> None:
    from services.queue import JobQueue
    from services.settings import ServiceSettings

    settings = ServiceSettings(
        archive_dir=str(tmp_path / "archive"), redis_data_dir=str(tmp_path / "fast-disk")
    )
    queue = JobQueue.from_settings(settings)
    try:
        assert queue.r.config_get("appendonly") == {"appendonly": "yes"}
        assert queue.r.config_get("stop-writes-on-bgsave-error") == {
            "stop-writes-on-bgsave-error": "yes"
        }
        queue.enqueue("a" * 40, "lab-a")
        deadline = time.monotonic() + 10
        while not list((tmp_path / "fast-disk").glob("appendonly.aof*")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert not (tmp_path / "archive" / "redis").exists()  # nothing on the archive's disk
    finally:
        queue.r.shutdown()

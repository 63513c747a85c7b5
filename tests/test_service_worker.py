"""The worker's failure rules on a real Redis and the real pipeline: bad input dead-lettered at once,
transient errors retried after their backoff, a lost lease never settled, results checked before
dead letters, the pending list walked across claims, job-end webhooks, durable archive commits."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import biovl_core.files
import services.archive
from services.archive import Archive
from services.notify import SIGNATURE_HEADER, verify
from services.queue import AUTOCLAIM_PAGES_PER_CLAIM, GROUP, Claim, JobQueue
from services.redis_conn import connect
from tests import service_fixtures as sf
from tests.service_fixtures import AUTH_A
from tests.test_notify import SECRET, Receiver

checkpoint, recording, runner, make_env = sf.checkpoint, sf.recording, sf.runner, sf.make_env


def test_bad_protocol_is_dead_lettered_after_one_attempt_with_its_error(
    make_env: Any, recording: Path
) -> None:
    env = make_env(max_attempts=3)
    job_id = env.post(recording).json()["job_id"]
    jf = env.service.archive.job("lab-a", job_id)
    jf.protocol_path.write_text("   \n")  # broken after the upload check passed it
    claim = env.queue.claim("w1", block_ms=100)
    assert claim is not None and claim.job_id == job_id
    assert env.worker().process(claim) == "dead"
    dead = env.queue.dead_letters()
    assert [d["job_id"] for d in dead] == [job_id]
    assert dead[0]["attempts"] == "1" and dead[0]["error"].startswith("ProtocolError:")
    body = env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()
    assert body["status"] == "dead" and body["attempts"] == 1
    assert "the protocol is empty" in body["error"]
    assert env.queue.depth() == 0 and jf.record()["status"] == "dead"
    assert env.queue.claim("w1", block_ms=100) is None  # not run again


def test_transient_error_is_retried_after_its_backoff_then_succeeds(
    make_env: Any, recording: Path
) -> None:
    env = make_env(max_attempts=3, retry_backoff_s=1.0)
    job_id = env.post(recording).json()["job_id"]
    jf = env.service.archive.job("lab-a", job_id)
    aside = jf.dir / "job.json.aside"
    jf.record_path.rename(aside)
    jf.record_path.mkdir()  # reading job.json now fails with an OSError (IsADirectoryError)
    worker = env.worker()

    claim = env.queue.claim("w1", block_ms=100)
    assert claim is not None
    before = env.queue.now()
    assert worker.process(claim) == "retried"
    after = env.queue.now()
    st = env.queue.status(job_id)
    assert st["status"] == "queued" and "cannot be read from the archive" in st["error"]
    assert "/" not in st["error"]  # the lab is not shown server paths
    retry_at = float(st["retry_at"])
    assert before + 0.5 <= retry_at <= after + 1.0  # backoff 1 s, jittered to 50-100 %
    assert env.queue.depth() == 1  # still waiting, so back-pressure counts it
    assert env.queue.claim("w2", block_ms=100) is None  # not delivered before its backoff
    assert env.queue.dead_depth() == 0

    jf.record_path.rmdir()
    aside.rename(jf.record_path)  # the archive is readable again
    time.sleep(max(0.0, retry_at - env.queue.now()) + 0.05)
    claim = env.queue.claim("w2", block_ms=100)
    assert claim is not None and claim.job_id == job_id and claim.attempts == 2
    assert worker.process(claim) == "succeeded"
    body = env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()
    assert body["status"] == "succeeded" and body["attempts"] == 2
    assert jf.versions() == [1] and env.queue.depth() == 0


def test_backoff_doubles_per_attempt_up_to_its_cap(redis_url: str, tmp_path: Path) -> None:
    queue = JobQueue(
        connect(redis_url, tmp_path),
        f"test-{uuid.uuid4().hex[:12]}",
        retry_backoff_s=2.0,
        retry_backoff_max_s=20.0,
    )
    for attempts, full in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 20.0), (9, 20.0)]:
        waits = [queue.backoff_s(attempts) for _ in range(50)]
        assert all(full / 2 <= w <= full for w in waits), (attempts, min(waits), max(waits))


def test_lost_lease_is_never_settled_and_its_run_stops(
    make_env: Any, recording: Path, checkpoint: Path
) -> None:
    pipeline = sf.tiny_cfg(checkpoint, batch_size=1).to_dict()  # a progress report per segment
    env = make_env(visibility_timeout_s=0.5, pipeline=pipeline)
    job_id = env.post(recording).json()["job_id"]
    claim_a = env.queue.claim("worker-a", block_ms=100)
    assert claim_a is not None
    time.sleep(0.6)  # worker-a stalls past its lease before it starts...
    claim_b = env.queue.claim("worker-b", block_ms=100)  # ...so worker-b takes the job over
    assert claim_b is not None and claim_b.msg_id == claim_a.msg_id and claim_b.redelivered

    assert env.worker().process(claim_a) == "lost"
    st = env.queue.status(job_id)
    assert st["status"] == "running" and st["worker"] == "worker-b"
    assert "progress" not in st  # worker-a's run stopped at its first progress report
    jf = env.service.archive.job("lab-a", job_id)
    assert jf.versions() == [] and jf.record()["status"] == "queued"
    # A late worker can settle nothing: ack, retry and dead letter all leave the job alone.
    assert env.queue.ack(claim_a) is False
    assert env.queue.fail(claim_a, "late error") == "lost"
    assert env.queue.fail(claim_a, "late error", retryable=False) == "lost"
    assert env.queue.dead_letter(claim_a, "late error") is False
    pending = env.queue.r.xpending_range(env.queue.stream, GROUP, "-", "+", 10)
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(claim_b.msg_id, "worker-b")]
    assert env.queue.dead_depth() == 0 and env.queue.r.zcard(env.queue.delayed) == 0
    assert env.queue.status(job_id)["status"] == "running"

    assert env.worker().process(claim_b) == "succeeded"
    assert jf.versions() == [1] and env.queue.depth() == 0


def test_a_job_lost_too_often_with_a_result_succeeds_instead_of_dead(
    make_env: Any, recording: Path
) -> None:
    env = make_env(max_attempts=2, max_worker_losses=2, visibility_timeout_s=0.3)
    job_id = env.post(recording).json()["job_id"]
    assert env.worker().run_forever(max_jobs=1) == 1
    jf = env.service.archive.job("lab-a", job_id)
    assert jf.versions() == [1]
    # The result is committed, then every delivery is lost (workers dying before their ack).
    env.queue.r.delete(env.queue.status_key(job_id))
    env.queue.enqueue(job_id, "lab-a")
    claims = []
    for consumer in ("c1", "c2", "c3", "c4"):
        claims.append(env.queue.claim(consumer, block_ms=100))
        time.sleep(0.35)  # past the lease: the next claim takes it over
    last = claims[-1]
    assert last is not None and last.losses == 3 and last.attempts == 1  # losses cost no attempt
    assert last.lost_too_often(env.queue.max_worker_losses)
    assert env.worker().process(last) == "deduplicated"
    assert env.queue.status(job_id)["status"] == "succeeded" and env.queue.dead_depth() == 0
    assert jf.versions() == [1] and env.queue.depth() == 0


def test_a_pending_list_longer_than_one_autoclaim_page_is_walked(
    redis_url: str, tmp_path: Path
) -> None:
    queue = JobQueue(
        connect(redis_url, tmp_path), f"test-{uuid.uuid4().hex[:12]}", visibility_timeout_s=1.0
    )
    per_claim = AUTOCLAIM_PAGES_PER_CLAIM * 10  # entries one claim inspects at most
    n = 2 * per_claim + 30
    ids = [uuid.uuid4().hex + uuid.uuid4().hex[:8] for _ in range(n)]
    try:
        for job_id in ids:
            queue.enqueue(job_id, "lab-a")
        # One worker process per entry, all running: read them in one go.
        entries = queue.r.xreadgroup(GROUP, "busy", {queue.stream: ">"}, count=n)[0][1]
        running = [Claim(mid, f["job_id"], "lab-a", 1, "busy", 0.0, False) for mid, f in entries]
        assert len(running) == n
        time.sleep(1.1)  # every lease ran out...
        stale = {3, per_claim + 50, n - 1}
        for i, c in enumerate(running):
            if i not in stale:
                assert queue.heartbeat(c)  # ...but these workers are alive and renew theirs
        taken: list[str] = []
        calls = 0
        while len(taken) < len(stale) and calls < math.ceil(n / per_claim) + len(stale) + 2:
            calls += 1
            c = queue.claim("taker", block_ms=10)
            if c is not None:
                assert c.redelivered
                taken.append(c.job_id)
        assert taken == [ids[i] for i in sorted(stale)]
    finally:
        keys = list(queue.r.scan_iter(f"{queue.prefix}:*"))
        if keys:
            queue.r.delete(*keys)


def test_job_end_webhooks_are_signed_and_recorded_on_the_job(
    make_env: Any, recording: Path, tmp_path: Path
) -> None:
    receiver = Receiver([503])  # the first delivery is refused, the retry gets through
    try:
        hooks = tmp_path / "webhooks.json"
        hooks.write_text(json.dumps({"lab-a": {"url": receiver.url, "secret": SECRET}}))
        env = make_env(webhooks_file=str(hooks))
        good = env.post(recording).json()["job_id"]
        bad = env.post(recording, protocol="1. Add water.\n2. Mix.\n").json()["job_id"]
        video = env.service.archive.job("lab-a", bad).video_path()
        video.write_bytes(video.read_bytes()[:4000])  # corrupt after the probe passed it
        worker = env.worker()
        assert worker.run_forever(max_jobs=2) == 2
        worker.close()  # waits for the deliveries under way

        events: dict[str, list[dict[str, Any]]] = {}
        for req in receiver.requests:
            assert verify(SECRET, req["headers"][SIGNATURE_HEADER], req["body"])
            body = json.loads(req["body"])
            events.setdefault(body["job_id"], []).append(body)
        assert {e["event"] for e in events[good]} == {"job.succeeded"}
        assert events[good][-1]["status"] == "succeeded" and events[good][-1]["version"] == 1
        assert {e["event"] for e in events[bad]} == {"job.dead"}
        assert events[bad][-1]["status"] == "dead" and "VideoError" in events[bad][-1]["error"]

        statuses = []
        for job_id in (good, bad):
            shown = env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["notification"]
            assert shown["delivered"] is True
            tries = [a["status"] for a in shown["attempts"]]
            assert len(tries) == len(events[job_id]) and tries[-1] == 200  # one record per POST
            statuses += tries
        assert sorted(statuses) == [200, 200, 503]  # the refused delivery was retried
    finally:
        receiver.close()


def test_archive_commits_fsync_their_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real = biovl_core.files.fsync_dir

    def spy(folder: Path) -> None:
        synced.append(Path(folder))
        real(folder)

    monkeypatch.setattr(biovl_core.files, "fsync_dir", spy)
    monkeypatch.setattr(services.archive, "fsync_dir", spy)
    archive = Archive(tmp_path / "archive")
    video = archive.temp_path(".mp4")
    video.write_bytes(b"not really a video")
    job_id = "ab" * 20
    jf = archive.create_job(
        "lab-a",
        job_id,
        video_tmp=video,
        video_ext=".mp4",
        protocol_text="1. Mix.\n",
        annotations_tmp=None,
        annotations_ext=None,
        record={"status": "queued"},
    )
    lab_dir = archive.root / "labs" / "lab-a"
    # every new folder's parent, then the job folder after the moves and job.json
    assert {archive.root / "labs", lab_dir, lab_dir / "jobs", jf.dir} <= set(synced)
    assert synced[-1] == jf.dir and (jf.dir / "video.mp4").is_file()
    synced.clear()
    assert jf.write_result({"service": {}}, "step,start,end\n", "WEBVTT\n") == 1
    assert jf.dir in synced and synced[-1] == jf.alignments_dir


def test_worker_threads_sharing_one_queue_run_each_job_once(make_env: Any, recording: Path) -> None:
    env = make_env()
    protocols = ["1. Add water.\n2. Mix.\n", "1. Add buffer.\n2. Spin.\n", "1. Pipette.\n"]
    job_ids = [env.post(recording, protocol=p).json()["job_id"] for p in protocols]
    workers = [env.worker(), env.worker()]
    assert workers[0].consumer != workers[1].consumer  # one lease owner per thread
    threads = [threading.Thread(target=w.run_forever, daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        for job_id in job_ids:
            env.queue.wait_for(job_id, ("succeeded", "dead"), timeout_s=120)
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(30)
    for job_id in job_ids:
        assert env.queue.status(job_id)["status"] == "succeeded"
        assert env.service.archive.job("lab-a", job_id).versions() == [1]
    assert env.queue.depth() == 0

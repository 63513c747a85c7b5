"""A worker through real faults: Redis killed mid-job, the archive disk full mid-job, a job lost
with its workers again and again, a dead worker's job while every slot is busy; and the
dead-letter stream and consumer group kept tidy. A private redis-server and a real tmpfs."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from biovl_core.synthetic import make_recording
from services.concurrency import WorkerPool
from services.faults import write_later
from services.queue import GROUP
from services.worker import Worker, requeue
from tests import service_fixtures as sf
from tests.fault_fixtures import GatedRunner, OwnRedis, fill, own_redis, small_tmpfs

checkpoint, recording, runner, make_env = sf.checkpoint, sf.recording, sf.runner, sf.make_env
own_redis, small_tmpfs = own_redis, small_tmpfs


def _own_env(root: Path, server: OwnRedis, checkpoint: Path, runner: Any, **kw: Any) -> sf.Env:
    kw.setdefault("min_free_archive_bytes", 0)
    return sf.Env(sf.make_settings(root, server.url, checkpoint, **kw), runner)


def _in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


def test_redis_killed_mid_job_the_job_finishes_and_settles_when_it_returns(
    tmp_path: Path, own_redis: OwnRedis, checkpoint: Path, runner: Any, recording: Path
) -> None:
    env = _own_env(tmp_path, own_redis, checkpoint, runner, redis_outage_patience_s=120.0)
    job_id = env.post(recording).json()["job_id"]
    gated = GatedRunner(runner)
    worker = Worker(env.settings, gated, queue=env.queue, archive=env.service.archive)
    claim = env.queue.claim(worker.consumer, block_ms=100)
    assert claim is not None
    thread, outcome = _in_thread(lambda: worker.process(claim))
    assert gated.started.wait(60)
    time.sleep(1.5)  # the claim reaches the AOF (fsync every second)
    own_redis.kill()
    gated.release()  # the run goes on with Redis away: progress writes fail, unharmed
    time.sleep(2.0)
    own_redis.start()
    thread.join(150)
    assert outcome == ["succeeded"]
    st = env.queue.status(job_id)
    assert st["status"] == "succeeded" and st["attempts"] == 1  # no attempt for the outage
    assert env.service.archive.job("lab-a", job_id).versions() == [1]
    assert env.queue.depth() == 0 and env.queue.dead_depth() == 0


def test_disk_full_mid_job_waits_without_charging_then_succeeds(
    small_tmpfs: Path, own_redis: OwnRedis, checkpoint: Path, runner: Any, recording: Path
) -> None:
    env = _own_env(small_tmpfs, own_redis, checkpoint, runner, fault_backoff_s=0.5)
    job_id = env.post(recording).json()["job_id"]
    gated = GatedRunner(runner)
    worker = Worker(env.settings, gated, queue=env.queue, archive=env.service.archive)
    claim = env.queue.claim(worker.consumer, block_ms=100)
    assert claim is not None
    thread, outcome = _in_thread(lambda: worker.process(claim))
    assert gated.started.wait(60)
    filler = fill(small_tmpfs, leave_bytes=0)
    gated.release()
    thread.join(120)
    assert outcome == ["faulted"]
    st = env.queue.status(job_id)
    assert st["status"] == "queued" and "disk is full" in st["error"], st
    assert st["faults"] == "1" and st["attempts"] == 1 and env.queue.dead_depth() == 0
    filler.unlink()  # space comes back
    deadline = time.monotonic() + 30
    again = None
    while again is None and time.monotonic() < deadline:
        again = env.queue.claim(worker.consumer, block_ms=100)
    assert again is not None and again.attempts == 1 and again.faults == 1
    assert worker.process(again) == "succeeded"
    assert env.service.archive.job("lab-a", job_id).versions() == [1]


def test_a_dead_jobs_record_is_marked_dead_once_the_disk_has_room(
    small_tmpfs: Path, own_redis: OwnRedis, checkpoint: Path, runner: Any, recording: Path
) -> None:
    env = _own_env(small_tmpfs, own_redis, checkpoint, runner)
    job_id = env.post(recording).json()["job_id"]
    jf = env.service.archive.job("lab-a", job_id)
    filler = fill(small_tmpfs, leave_bytes=0)
    thread = write_later(
        lambda: jf.update_record(status="dead", error="ProtocolError: no steps"),
        "record marked dead",
        every_s=0.1,
        patience_s=60,
    )
    time.sleep(0.5)
    assert jf.record()["status"] == "queued"  # no room to write it yet
    filler.unlink()
    thread.join(30)
    record = jf.record()
    assert record["status"] == "dead" and record["error"] == "ProtocolError: no steps"


def test_a_job_lost_again_waits_and_a_poison_job_is_dead_lettered(
    make_env: Any, recording: Path
) -> None:
    env = make_env(visibility_timeout_s=0.3, max_worker_losses=2, retry_backoff_s=0.2)
    job_id = env.post(recording).json()["job_id"]
    worker = env.worker()

    def lose_to(consumer: str) -> Any:
        time.sleep(0.35)  # the claimer "dies": its lease runs out
        return env.queue.claim(consumer, block_ms=100)

    assert env.queue.claim("c1", block_ms=100) is not None
    first = lose_to("c2")
    assert first is not None and first.redelivered and first.losses == 1 and first.attempts == 1
    second = lose_to("c3")
    assert second is not None and second.losses == 2
    assert worker.process(second) == "deferred"  # lost twice: it waits, others go first
    st = env.queue.status(job_id)
    assert st["status"] == "queued" and st["attempts"] == 1 and st["retry_at"]
    time.sleep(0.5)
    assert env.queue.claim("c4", block_ms=100) is not None  # back after its short wait
    third = lose_to("c5")
    assert third is not None and third.losses == 3 and third.attempts == 1
    assert worker.process(third) == "dead"  # crashed every worker: a poison job
    dead = env.queue.dead_letters()
    assert [d["job_id"] for d in dead] == [job_id] and "lost the job 3 times" in dead[0]["error"]
    assert env.service.archive.job("lab-a", job_id).record()["status"] == "dead"


def test_a_dead_workers_job_is_reclaimed_while_every_slot_is_busy(
    make_env: Any, recording: Path, runner: Any, tmp_path: Path
) -> None:
    env = make_env(visibility_timeout_s=3.0, jobs_in_flight=1, reclaim_slots=1)
    other = make_recording(tmp_path / "other", "pcr", seed=3, duration_s=30)
    gated = GatedRunner(runner, gate_all=False)
    pool = WorkerPool(env.settings, gated, 1, consumer="pool")  # all set up before the lease runs
    crashed = env.post(recording).json()["job_id"]
    ghost = env.queue.claim("ghost", block_ms=100)  # a worker that dies right after claiming
    assert ghost is not None and ghost.job_id == crashed
    busy = env.post(other).json()["job_id"]
    gated.gated.add(busy)  # the one ordinary slot stays busy with this job until released
    thread, handled = _in_thread(lambda: pool.run_forever(max_jobs=2))
    try:
        assert gated.started.wait(60)
        deadline = time.monotonic() + 60
        while (env.queue.status(crashed) or {}).get("status") != "succeeded":
            assert time.monotonic() < deadline, env.queue.status(crashed)
            time.sleep(0.1)
        assert env.queue.status(crashed)["worker"] == "pool-r1"  # the re-claim slot took it
        assert env.queue.status(busy)["status"] == "running"  # while the slot was still busy
    finally:
        gated.release()
        thread.join(120)
    assert handled == [2] and env.queue.status(busy)["status"] == "succeeded"


def test_requeue_retry_dead_trims_what_it_revived(make_env: Any, recording: Path) -> None:
    env = make_env()
    ids = [
        env.post(recording).json()["job_id"],
        env.post(recording, protocol="1. Add water.\n2. Mix.\n").json()["job_id"],
    ]
    for _ in ids:
        claim = env.queue.claim("w", block_ms=100)
        assert claim is not None
        assert env.queue.fail(claim, "ProtocolError: bad", retryable=False) == "dead"
        env.service.archive.job("lab-a", claim.job_id).update_record(status="dead")
    assert env.queue.dead_depth() == 2
    # revived by hand: ``biovl dead`` no longer lists it, though its entry is still there
    env.queue.enqueue(ids[0], "lab-a", retry_dead=True)
    assert [d["job_id"] for d in env.queue.dead_letters()] == [ids[1]]
    assert len(env.queue.dead_letters(still_dead=False)) == 2
    assert requeue(env.settings, queue=env.queue, archive=env.service.archive, retry_dead=True) == [
        ids[1]
    ]
    assert env.queue.dead_depth() == 1  # the entry of the job requeue revived is gone
    assert env.queue.dead_letters() == []


def test_idle_consumers_are_removed_once_they_own_nothing(make_env: Any, recording: Path) -> None:
    env = make_env()
    env.post(recording)
    env.post(recording, protocol="1. Add water.\n2. Mix.\n")
    done = env.queue.claim("done", block_ms=100)
    holding = env.queue.claim("holding", block_ms=100)
    assert done is not None and holding is not None
    assert env.queue.ack(done)
    time.sleep(0.3)
    assert env.queue.remove_idle_consumers(0.2) == ["done"]
    consumers = env.queue.r.xinfo_consumers(env.queue.stream, GROUP)
    assert [c["name"] for c in consumers] == ["holding"] and consumers[0]["pending"] == 1

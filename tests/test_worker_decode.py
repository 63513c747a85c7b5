"""What the worker does with decoding (issue 19): the archived hash passed on (the file is not
read again for it), frame times in the stored alignment, decode counters for operators, and a
job past its deadline dead-lettered at once with a one-line error; real Redis, real pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from tests import service_fixtures as sf
from tests.fixtures_embed import tiny_cfg

checkpoint, recording, runner, make_env = sf.checkpoint, sf.recording, sf.runner, sf.make_env


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_job_stores_its_frame_times_and_counts_what_decoding_cost(
    make_env: Any, recording: Path
) -> None:
    env = make_env()
    job_id = env.post(recording).json()["job_id"]
    before = {n: _counter(n) for n in ("biovl_decode_frames_total", "biovl_decode_samples_total")}
    claim = env.queue.claim("w1", block_ms=100)
    assert env.worker().process(claim) == "succeeded"
    jf = env.service.archive.job("lab-a", job_id)
    _, doc = jf.latest_alignment()
    assert doc["video_sha256"] == jf.record()["video_sha256"]
    assert "hash" not in doc["timings"]  # hashed while uploading, never again
    assert len(doc["frame_times"]) == doc["num_segments"]
    samples = _counter("biovl_decode_samples_total") - before["biovl_decode_samples_total"]
    frames = _counter("biovl_decode_frames_total") - before["biovl_decode_frames_total"]
    assert samples == doc["decode"]["samples"] == doc["num_segments"]
    assert 0 < frames == doc["decode"]["frames_decoded"]
    assert _counter("biovl_decode_read_bytes_total") > 0


def test_a_job_past_its_deadline_is_dead_lettered_with_a_one_line_error(
    make_env: Any, recording: Path, checkpoint: Path
) -> None:
    pipeline = tiny_cfg(checkpoint, job_deadline_s=1e-6, batch_size=2).to_dict()
    env = make_env(pipeline=pipeline, max_attempts=3)
    job_id = env.post(recording).json()["job_id"]
    claim = env.queue.claim("w1", block_ms=100)
    assert env.worker().process(claim) == "dead"  # running it again cannot help
    (dead,) = env.queue.dead_letters()
    assert dead["job_id"] == job_id and dead["attempts"] == "1"
    error = dead["error"]
    assert error.startswith("JobDeadlineExceeded: video.mp4: the job passed its deadline")
    assert "job_deadline_s" in error and "\n" not in error

"""The queue worker: claim a job -> run the pipeline -> write the result to the archive -> ack.

The same ``Worker`` runs as a standalone process (``python -m services worker``, pipeline
in-process through ``LocalRunner`` = ``biovl_core.pipeline.align_video``, exactly what
``biovl align`` runs) and inside the Serve ``QueueWorker`` deployment (``services.serve.remote.ServeRunner``:
the same ``align_video``, with decoding, embedding and aligning on the Decoder, Embedder and
Aligner deployments).

Delivery is at-least-once, so processing is idempotent: a job whose archive already holds a
result for the same configuration key is acknowledged without recomputing, and a result is
written only while this worker still owns the claim.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Protocol

from biovl_core import __version__
from biovl_core.config import PipelineConfig
from biovl_core.formats import alignment_to_dict, to_csv, to_webvtt
from biovl_core.protocol import parse_protocol
from biovl_core.result import AlignmentResult
from services import metrics
from services.archive import Archive, ArchiveError, JobFiles
from services.groups import group_context
from services.queue import Claim, JobQueue
from services.settings import ServiceSettings

log = logging.getLogger("biovl.worker")

# Config fields that cannot change an alignment (where and how fast it runs).
_RUNTIME_ONLY = ("device", "batch_size", "cache_dir", "backend", "allow_random_weights")


class Runner(Protocol):
    """Runs the pipeline for one job.

    A runner may also have ``remote_stages``: names of ``result.timings`` stages that its
    deployments record in ``biovl_stage_seconds`` themselves (the worker skips those).
    """

    def model_identity(self, cfg: PipelineConfig) -> tuple[str, str, str]:
        """(model_id, weights, model_key) the runner would use for ``cfg``.

        ``model_key`` is ``Embedder.cache_key()``: architecture, weight fingerprint, preprocessing.
        """

    def run(
        self,
        video: Path,
        protocol_text: str,
        protocol_name: str,
        cfg: PipelineConfig,
        progress: Any,
        group: Any = None,
    ) -> AlignmentResult:
        """Align the protocol to the video (with its group: ``services.groups.group_context``)."""


def config_key(cfg: PipelineConfig, model_id: str, weights: str, model_key: str) -> str:
    """Hash of everything that decides an alignment: config (minus runtime-only fields), the
    model (including its weight fingerprint) and the aligner version.

    The worker and ``biovl realign`` use the same key, so neither recomputes the other's result.
    """
    data = {k: v for k, v in cfg.to_dict().items() if k not in _RUNTIME_ONLY}
    data["model_id"], data["weights"], data["model_key"] = model_id, weights, model_key
    data["aligner_version"] = __version__
    blob = json.dumps(data, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


class LocalRunner:
    """In-process pipeline (``align_video``) with one loaded embedder per model configuration."""

    def __init__(self) -> None:
        self._embedders: dict[str, Any] = {}
        self._lock = threading.Lock()

    def embedder(self, cfg: PipelineConfig) -> Any:
        """The (cached) embedder for ``cfg``'s model fields."""
        from biovl_core.embed import load_embedder

        fields = ("embedder", "model", "pretrained", "checkpoint", "frames_per_segment")
        key = json.dumps([getattr(cfg, f) for f in fields] + [cfg.device, cfg.allow_random_weights])
        with self._lock:
            if key not in self._embedders:
                self._embedders[key] = load_embedder(cfg)
            return self._embedders[key]

    def model_identity(self, cfg: PipelineConfig) -> tuple[str, str, str]:
        """(model_id, weights, model_key) of the embedder for ``cfg``."""
        emb = self.embedder(cfg)
        return emb.model_id, emb.weights, emb.cache_key()

    def run(
        self,
        video: Path,
        protocol_text: str,
        protocol_name: str,
        cfg: PipelineConfig,
        progress: Any,
        group: Any = None,
    ) -> AlignmentResult:
        """``biovl_core.pipeline.align_video`` on the archived inputs."""
        from biovl_core.pipeline import align_video

        protocol = parse_protocol(protocol_text, filename=protocol_name)
        embedder = self.embedder(cfg)
        return align_video(video, protocol, cfg, embedder=embedder, progress=progress, group=group)


def result_payload(result: AlignmentResult, service: dict[str, Any]) -> dict[str, Any]:
    """The stored alignment JSON: ``alignment_to_dict`` with the similarity matrix + service info."""
    payload = alignment_to_dict(result, include_similarity=True)
    payload["service"] = service
    return payload


def payload_spans(payload: dict[str, Any]) -> list[tuple[float, float] | None]:
    """Predicted spans of an alignment JSON, in step order."""
    steps = sorted(payload.get("steps", []), key=lambda s: s.get("index", 0))
    return [
        (float(s["start"]), float(s["end"])) if s.get("start") is not None else None for s in steps
    ]


def annotate_payload(payload: dict[str, Any], jf: JobFiles) -> dict[str, Any]:
    """Add the job's annotated spans, each step's IoU and the mIoU (ours and the uniform
    baseline's) to an alignment JSON when the job has annotations; the viewer shows them.
    An annotations file that does not match the protocol is reported, never fatal."""
    from biovl_core.formats import annotations_to_spans, read_annotations
    from biovl_core.metrics import miou, step_ious

    path = jf.annotations_path()
    if path is None or not path.is_file():
        return payload
    steps = [s["text"] for s in sorted(payload.get("steps", []), key=lambda s: s["index"])]
    try:
        gt = annotations_to_spans(read_annotations(path), steps)
        pred = payload_spans(payload)
        payload["annotation_spans"] = [list(g) if g is not None else None for g in gt]
        payload["step_ious"] = step_ious(pred, gt)
        payload["miou"] = miou(pred, gt)
        baseline = payload.get("baseline_spans")
        if baseline:
            payload["baseline_miou"] = miou([tuple(b) if b else None for b in baseline], gt)
    except (ValueError, OSError) as exc:  # AnnotationError is a ValueError
        payload["annotations_error"] = str(exc)
    return payload


class Worker:
    """Processes queue entries until stopped."""

    def __init__(
        self,
        settings: ServiceSettings,
        runner: Runner,
        *,
        queue: JobQueue | None = None,
        archive: Archive | None = None,
        consumer: str | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.archive = archive or Archive(settings.archive_path)
        self.queue = queue or JobQueue.from_settings(settings, self.archive.root)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.stop_event = threading.Event()

    # ---- loop ----------------------------------------------------------------------------
    def run_forever(self, max_jobs: int | None = None) -> int:
        """Claim and process jobs until ``stop()`` (or ``max_jobs``); returns jobs handled."""
        handled = 0
        while not self.stop_event.is_set() and (max_jobs is None or handled < max_jobs):
            try:
                claim = self.queue.claim(self.consumer, block_ms=self.settings.claim_block_ms)
            except Exception as exc:  # Redis down: wait and retry rather than die
                log.exception("claim failed (%s); retrying in 2s", exc)
                self.stop_event.wait(2.0)
                continue
            if claim is None:
                continue
            self.process(claim)
            handled += 1
        return handled

    def stop(self) -> None:
        """Finish the current job, then leave ``run_forever``."""
        self.stop_event.set()

    def sample_queue(self) -> None:
        """Refresh the queue gauges (called by the metrics sampler thread)."""
        metrics.sample_queue(self.queue)
        metrics.update_gpu_utilization()

    # ---- one job -------------------------------------------------------------------------
    def process(self, claim: Claim) -> str:
        """Handle one claim; returns the outcome (succeeded, deduplicated, retried, dead, lost)."""
        try:
            jf = self.archive.job(claim.lab, claim.job_id)
            record = jf.record()
        except (ArchiveError, OSError, ValueError) as exc:
            return self._dead(claim, None, f"job is not in the archive ({exc})")
        if claim.exhausted(self.queue.max_attempts):
            return self._dead(claim, jf, claim.lost_error(self.queue.visibility_timeout_s))
        try:
            cfg = self._job_config(record)
            key = config_key(cfg, *self.runner.model_identity(cfg))
            existing = jf.find_result(key)
            if existing is not None:
                self._succeed(claim, jf, existing)
                metrics.JOBS.labels(state="deduplicated").inc()
                return "deduplicated"
            return self._align_and_write(claim, jf, record, cfg, key)
        except Exception as exc:
            return self._failed(claim, jf, exc)

    def _job_config(self, record: dict[str, Any]) -> PipelineConfig:
        """The job's pipeline config; embeddings cached in the archive unless configured elsewhere,
        so re-aligning never re-embeds."""
        cfg = self.settings.pipeline_config(**record.get("options", {}))
        if not cfg.cache_dir:
            cfg = cfg.replace(cache_dir=str(self.archive.root / "embeddings"))
        return cfg

    def _align_and_write(
        self, claim: Claim, jf: JobFiles, record: dict[str, Any], cfg: PipelineConfig, key: str
    ) -> str:
        """Run the pipeline, then commit its result as a new version while the claim is ours."""
        metrics.JOBS.labels(state="started").inc()
        if claim.attempts == 1:
            metrics.STAGE_SECONDS.labels(stage="queue_wait").observe(
                max(0.0, self.queue.now() - claim.enqueued_at)
            )
        result = self._run_with_heartbeat(claim, jf, record, cfg)
        if not self.queue.owns(claim) or jf.find_result(key) is not None:
            log.warning("job %s was taken over by another worker; dropping this run", claim.job_id)
            return "lost"
        start = time.perf_counter()
        service = {
            "job_id": claim.job_id,
            "lab": claim.lab,
            "config_key": key,
            "attempts": claim.attempts,
            "worker": self.consumer,
            "finished_at": time.time(),
        }
        version = jf.write_result(
            annotate_payload(result_payload(result, service), jf),
            to_csv(result),
            to_webvtt(result),
        )
        metrics.STAGE_SECONDS.labels(stage="write").observe(time.perf_counter() - start)
        # Stages a runner's deployments time themselves are not counted twice.
        remote = getattr(self.runner, "remote_stages", ())
        metrics.observe_stages({k: v for k, v in result.timings.items() if k not in remote})
        metrics.VIDEO_SECONDS.inc(result.duration_s)
        metrics.SEGMENTS_EMBEDDED.inc(result.num_segments)
        self._succeed(claim, jf, version)
        metrics.JOBS.labels(state="succeeded").inc()
        return "succeeded"

    def _failed(self, claim: Claim, jf: JobFiles, exc: Exception) -> str:
        """Report a failed attempt to the queue: retried, or dead-lettered after the last one."""
        error = f"{type(exc).__name__}: {exc}"
        log.error(
            "job %s attempt %d failed: %s\n%s",
            claim.job_id,
            claim.attempts,
            error,
            traceback.format_exc(),
        )
        metrics.JOBS.labels(state="failed").inc()
        outcome = self.queue.fail(claim, error)
        if outcome == "dead":
            jf.update_record(status="dead", error=error, attempts=claim.attempts)
            metrics.JOBS.labels(state="dead_lettered").inc()
        else:
            metrics.JOBS.labels(state="retried").inc()
        return outcome

    def _run_with_heartbeat(
        self, claim: Claim, jf: JobFiles, record: dict[str, Any], cfg: PipelineConfig
    ) -> AlignmentResult:
        """Run the pipeline while a thread keeps the claim alive and progress is published."""
        done = threading.Event()
        interval = max(0.5, self.queue.visibility_timeout_s / 4)

        def beat() -> None:
            while not done.wait(interval):
                try:
                    self.queue.heartbeat(claim)
                except Exception as exc:  # transient Redis error: the next beat retries
                    log.warning("heartbeat for %s failed: %s", claim.job_id, exc)

        last = [0.0]

        def progress(stage: str, n: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] > 1.0 or n == total:
                last[0] = now
                self.queue.set_status(claim.job_id, stage=stage, progress=f"{n}/{total}")

        thread = threading.Thread(target=beat, name=f"heartbeat-{claim.job_id[:8]}", daemon=True)
        thread.start()
        try:
            return self.runner.run(
                jf.video_path(),
                jf.protocol_path.read_text(encoding="utf-8"),
                record.get("protocol_filename") or "protocol.txt",
                cfg,
                progress,
                group=group_context(self.archive, jf),
            )
        finally:
            done.set()
            thread.join()

    def _succeed(self, claim: Claim, jf: JobFiles, version: int) -> None:
        """Mark the job succeeded in the archive, then acknowledge it."""
        jf.update_record(status="succeeded", version=version, error=None, attempts=claim.attempts)
        self.queue.ack(claim, version=version)

    def _dead(self, claim: Claim, jf: JobFiles | None, error: str) -> str:
        """Dead-letter a job without running it."""
        self.queue.dead_letter(claim, error)
        if jf is not None and jf.record_path.exists():
            jf.update_record(status="dead", error=error, attempts=claim.attempts)
        metrics.JOBS.labels(state="dead_lettered").inc()
        return "dead"


def requeue(
    settings: ServiceSettings,
    *,
    queue: JobQueue | None = None,
    archive: Archive | None = None,
    retry_dead: bool = False,
) -> list[str]:
    """Rebuild the queue from the archive: queue every job without a result that Redis lacks."""
    archive = archive or Archive(settings.archive_path)
    queue = queue or JobQueue.from_settings(settings, archive.root)
    queued: list[str] = []
    for jf in archive.iter_jobs():
        if jf.versions():
            continue
        record = jf.record()
        if record.get("status") == "dead" and not retry_dead:
            continue
        added, _ = queue.enqueue(jf.job_id, jf.lab, retry_dead=retry_dead)
        if added:
            if record.get("status") == "dead":
                jf.update_record(status="queued", error=None)
            queued.append(jf.job_id)
    return queued

"""The queue worker: claim a job -> run the pipeline -> write the result to the archive -> ack.

The same ``Worker`` runs as a standalone process (``python -m services worker``, pipeline
in-process through ``LocalRunner`` = ``biovl_core.pipeline.align_video``, exactly what
``biovl align`` runs) and inside the Serve ``QueueWorker`` deployment (``services.serve.remote.ServeRunner``:
the same ``align_video``, with decoding, embedding and aligning on the Decoder, Embedder and
Aligner deployments).

Delivery is at-least-once, so processing is idempotent: a job whose archive already holds a
result for the same configuration key is acknowledged without recomputing (checked before
anything else, even before dead-lettering a claim whose earlier deliveries were all lost), and
a result is written only while this worker still owns the claim.

One job, start to end, runs under its lease (``services.queue``): a heartbeat thread renews it
every third of ``visibility_timeout_s``; when a beat finds another worker owns the job, the run
is cancelled at its next progress report and this worker never writes, acks or fails it.
A failure is dead-lettered at once with its error when running again cannot help (bad input:
``is_retryable``), else retried after an exponential backoff, up to ``max_attempts``. Only the
job's own failures are charged: a run lost with its worker counts as a loss (a second loss waits
a backoff, ``max_worker_losses`` dead-letters a poison job), and a fault of Redis or the disk
(``services.faults``) is waited out for minutes without charge; progress writes are best effort
and settling waits out a Redis outage (``redis_outage_patience_s``).
When a job succeeds or is dead-lettered, the lab's webhook (``webhooks_file``) gets a signed
summary (``services.notify``) and the delivery is recorded on the job as ``notification``.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

from biovl_core.config import PipelineConfig
from biovl_core.io import to_csv, to_webvtt
from biovl_core.result import AlignmentResult
from services import metrics
from services.archive import Archive, ArchiveError, JobFiles
from services.faults import (
    fault_of,
    is_disk_full,
    is_fault,
    is_redis_fault,
    patiently,
    redis_write_problem,
    write_later,
)
from services.groups import group_context
from services.notify import Notifier, job_summary, load_webhooks
from services.queue import Claim, JobQueue
from services.runner import Runner, annotate_payload, config_key, result_payload
from services.settings import ServiceSettings

log = logging.getLogger("biovl.worker")
T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed attempt may succeed when run again (retry with backoff) or not (dead-letter).

    Bad input fails the same way every time: every ``ValueError`` -- ``BioVLError`` (corrupt
    video, protocol error, missing weights), ``ArchiveError``, malformed JSON, PyAV's
    InvalidDataError, and a deployment's such error re-raised by Ray (still an instance of it)
    -- is not retried. Everything else may pass: ``OSError`` (an NFS hiccup), Ray actor and
    system errors, and unexpected errors, which are retried up to ``max_attempts`` so a bug
    costs a bounded number of runs. (A full disk and Redis errors are faults, not failures:
    ``services.faults``, handled before this rule.)
    """
    return not isinstance(exc, ValueError)


class ArchiveUnavailable(OSError):
    """The job's record could not be read right now (retried: NFS hiccup, permissions)."""


class LeaseLost(Exception):
    """Raised into the pipeline when the heartbeat finds the job taken over by another worker."""


def read_job_record(jf: JobFiles) -> dict[str, Any]:
    """``job.json``, with errors worded for the lab (no server paths) and typed for the retry rule."""
    try:
        return jf.record()
    except OSError as exc:
        raise ArchiveUnavailable(
            f"the job's record cannot be read from the archive ({exc.strerror or exc}); "
            "check that the archive volume is mounted and readable on every worker"
        ) from exc
    except ValueError as exc:
        raise ArchiveError(
            f"job is not in the archive (job.json is not valid JSON: {exc})"
        ) from exc


_WORKER_SEQ = itertools.count(1)


class Worker:
    """Processes queue entries until stopped.

    Several ``Worker``s may run in threads of one process and share one ``JobQueue``; each has
    its own consumer name, and everything about one job (its lease, its cancel flag) lives in
    that job's call of ``process``.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        runner: Runner,
        *,
        queue: JobQueue | None = None,
        archive: Archive | None = None,
        consumer: str | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.archive = archive or Archive(settings.archive_path)
        self.queue = queue or JobQueue.from_settings(settings, self.archive.root)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{next(_WORKER_SEQ)}"
        self.notifier = notifier or Notifier(load_webhooks(settings.webhooks_file))
        self.stop_event = threading.Event()
        # a WorkerPool over capacity takes no new work, only dead workers' jobs (concurrency.py)
        self.admit_new: Callable[[], bool] = lambda: True
        self.busy: Callable[[], AbstractContextManager[object]] = nullcontext
        self.takeover_poll_s = min(1.0, self.queue.visibility_timeout_s / 10)

    # ---- loop ----------------------------------------------------------------------------
    def run_forever(self, max_jobs: int | None = None) -> int:
        """Claim and process jobs until ``stop()`` (or ``max_jobs``); returns jobs handled."""
        handled = 0
        while not self.stop_event.is_set() and (max_jobs is None or handled < max_jobs):
            try:
                new = self.admit_new()  # False: take over dead workers' jobs only
                block = self.settings.claim_block_ms if new else 0
                claim = self.queue.claim(self.consumer, block_ms=block, new=new)
                if claim is None:
                    if not new:
                        self.stop_event.wait(self.takeover_poll_s)
                    continue
                with self.busy():
                    self.process(claim)
            except Exception as exc:  # Redis down: wait and retry rather than die
                log.exception("queue call failed (%s); retrying in 2s", exc)
                self.stop_event.wait(2.0)
                continue
            handled += 1
        return handled

    def stop(self) -> None:
        """Finish the current job, then leave ``run_forever``."""
        self.stop_event.set()

    def sample_queue(self) -> None:
        """Refresh the queue and health gauges (called by the metrics sampler thread)."""
        try:
            problem = redis_write_problem(self.queue.r, f"{self.queue.prefix}:health")
            metrics.REDIS_WRITE_OK.set(0 if problem else 1)
            metrics.ARCHIVE_FREE_BYTES.set(shutil.disk_usage(self.archive.root).free)
        except OSError:
            pass
        metrics.sample_queue(self.queue)
        metrics.update_gpu_utilization()

    # ---- one job -------------------------------------------------------------------------
    def process(self, claim: Claim) -> str:
        """Handle one claim under its lease; returns the outcome
        (succeeded, deduplicated, retried, dead, or lost: taken over, left to the new owner)."""
        jf: JobFiles | None = None
        with self._lease(claim) as lost:
            try:
                jf = self.archive.job(claim.lab, claim.job_id)
                return self._run_job(claim, jf, lost)
            except Exception as exc:
                if lost.is_set():
                    return self._lost(claim)
                if is_fault(exc):
                    return self._faulted(claim, jf, exc)
                return self._failed(claim, jf, exc)

    def _patiently(self, call: Callable[[], T]) -> T:
        """A queue call retried through a Redis outage for ``redis_outage_patience_s``."""
        return patiently(call, self.settings.redis_outage_patience_s)

    def _faulted(self, claim: Claim, jf: JobFiles | None, exc: Exception) -> str:
        """A fault of the environment stopped the run (Redis, a full disk): not the job's
        failure, so no attempt is charged; it is tried again after a long backoff. When Redis
        itself stays away the entry is left pending, to be taken over once Redis is back."""
        kind = "disk_full" if is_disk_full(exc) else "redis"
        metrics.JOB_FAULTS.labels(kind=kind).inc()
        fault = fault_of(exc)
        error = self._public_error(fault.message.split(";")[0] if fault else str(exc))
        log.warning("job %s stopped by a fault, not charged an attempt: %s", claim.job_id, error)

        def settle() -> str:
            return self.queue.fail(claim, error, fault=True)

        try:  # Redis's own outage was waited out already (``_patiently``): one more try
            outcome = settle() if is_redis_fault(exc) else self._patiently(settle)
        except Exception as again:
            if not is_redis_fault(again):
                raise
            log.warning(
                "job %s left for a take-over: Redis is still away (%s)", claim.job_id, again
            )
            return "abandoned"
        if outcome == "dead":
            self._record_dead(claim, jf, error)
        elif outcome == "lost":
            return self._lost(claim)
        return "faulted" if outcome == "retried" else outcome

    def _run_job(self, claim: Claim, jf: JobFiles, lost: threading.Event) -> str:
        """An existing result first (even for an exhausted claim), then dead-letter an
        exhausted claim, else align."""
        record = read_job_record(jf)
        cfg = self._job_config(record)
        key = config_key(cfg, *self.runner.model_identity(cfg))
        existing = jf.find_result(key)
        if existing is not None:
            return self._succeed(claim, jf, record, existing, "deduplicated")
        if claim.lost_too_often(self.queue.max_worker_losses):
            return self._dead(claim, jf, claim.lost_error(self.queue.visibility_timeout_s))
        if claim.redelivered and claim.losses > 1:
            # lost with its worker before: wait a little, so a run of crashes spreads over
            # many jobs instead of charging the same ones again and again
            wait = self.queue.backoff_s(claim.losses - 1)
            reason = f"worker lost the job {claim.losses} times; running it again in {wait:.0f} s"
            if self.queue.defer(claim, wait, reason):
                metrics.WORKER_LOSSES.inc()
                return "deferred"
            return self._lost(claim)
        if claim.redelivered:
            metrics.WORKER_LOSSES.inc()
        return self._align_and_write(claim, jf, record, cfg, key, lost)

    def _job_config(self, record: dict[str, Any]) -> PipelineConfig:
        """The job's pipeline config; embeddings cached in the archive unless configured elsewhere,
        so re-aligning never re-embeds."""
        cfg = self.settings.pipeline_config(**record.get("options", {}))
        if not cfg.cache_dir:
            cfg = cfg.replace(cache_dir=str(self.archive.root / "embeddings"))
        return cfg

    def _align_and_write(
        self,
        claim: Claim,
        jf: JobFiles,
        record: dict[str, Any],
        cfg: PipelineConfig,
        key: str,
        lost: threading.Event,
    ) -> str:
        """Run the pipeline, then commit its result as a new version while the claim is ours."""
        metrics.JOBS.labels(state="started").inc()
        if claim.attempts == 1 and not claim.redelivered:
            metrics.STAGE_SECONDS.labels(stage="queue_wait").observe(
                max(0.0, time.time() - claim.enqueued_at)
            )
        result = self._run_pipeline(claim, jf, record, cfg, lost)
        if lost.is_set() or not self._patiently(lambda: self.queue.owns(claim)):
            return self._lost(claim)
        existing = jf.find_result(key)
        if existing is not None:  # committed meanwhile (``biovl realign``, or a takeover)
            return self._succeed(claim, jf, record, existing, "deduplicated")
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
        for finding in result.deviations or ():
            metrics.DEVIATIONS.labels(kind=finding["kind"]).inc()
        metrics.observe_decode(
            result.decode
        )  # in-process decoding (Serve's Decoder counts its own)
        return self._succeed(claim, jf, record, version, "succeeded")

    def _run_pipeline(
        self,
        claim: Claim,
        jf: JobFiles,
        record: dict[str, Any],
        cfg: PipelineConfig,
        lost: threading.Event,
    ) -> AlignmentResult:
        """Run the pipeline, publishing progress; stops (``LeaseLost``) at the next progress
        report once the lease is lost."""
        last = [0.0]

        def progress(stage: str, n: int, total: int) -> None:
            if lost.is_set():
                raise LeaseLost(f"job {claim.job_id} was taken over by another worker")
            now = time.monotonic()
            if now - last[0] > 1.0 or n == total:
                last[0] = now
                try:  # best effort: a Redis blip must not fail the job
                    self.queue.set_status(claim.job_id, stage=stage, progress=f"{n}/{total}")
                except Exception as exc:
                    log.warning("job %s: progress not published (%s)", claim.job_id, exc)

        return self.runner.run(
            jf.video_path(),
            jf.protocol_path.read_text(encoding="utf-8"),
            record.get("protocol_filename") or "protocol.txt",
            cfg,
            progress,
            group=group_context(self.archive, jf),
            video_sha256=record.get("video_sha256") or None,  # hashed at upload: not read again
        )

    @contextmanager
    def _lease(self, claim: Claim) -> Iterator[threading.Event]:
        """Keep the claim's lease renewed while the block runs; the event is set (and the
        renewing stops) once the heartbeat finds another worker owns the job."""
        lost = threading.Event()
        done = threading.Event()

        def beat() -> None:
            while True:
                try:
                    if not self.queue.heartbeat(claim):
                        log.warning("job %s: lease lost to another worker; stopping", claim.job_id)
                        lost.set()
                        return
                except Exception as exc:  # transient Redis error: the next beat retries
                    log.warning("heartbeat for %s failed: %s", claim.job_id, exc)
                if done.wait(self.queue.heartbeat_interval_s):
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat-{claim.job_id[:8]}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            done.set()
            thread.join()

    def _succeed(
        self, claim: Claim, jf: JobFiles, record: dict[str, Any], version: int, outcome: str
    ) -> str:
        """Mark the job succeeded in the archive, acknowledge it, and tell the lab (once)."""
        told = record.get("status") == "succeeded" and record.get("version") == version
        told = told and bool(record.get("notification"))
        updated = jf.update_record(
            status="succeeded", version=version, error=None, attempts=claim.attempts
        )
        if not self._patiently(lambda: self.queue.ack(claim, version=version)):
            return self._lost(claim)
        metrics.JOBS.labels(state=outcome).inc()
        if not told:
            self._notify(jf, updated, "job.succeeded")
        return outcome

    def _failed(self, claim: Claim, jf: JobFiles | None, exc: Exception) -> str:
        """Report a failed attempt: dead-lettered at once when retrying cannot help, else
        retried after a backoff (dead after the last attempt)."""
        error = self._public_error(f"{type(exc).__name__}: {exc}")
        retryable = is_retryable(exc)
        log.error(
            "job %s attempt %d failed (%s): %s\n%s",
            claim.job_id,
            claim.attempts,
            "retryable" if retryable else "not retryable",
            error,
            traceback.format_exc(),
        )
        metrics.JOBS.labels(state="failed").inc()
        outcome = self._patiently(lambda: self.queue.fail(claim, error, retryable=retryable))
        if outcome == "dead":
            self._record_dead(claim, jf, error)
        elif outcome == "retried":
            metrics.JOBS.labels(state="retried").inc()
        else:
            return self._lost(claim)
        return outcome

    def _public_error(self, text: str) -> str:
        """The error as a lab may read it (API, webhook): no server paths, only archive-relative
        names (``labs/<lab>/jobs/<id>/video.mp4`` -> ``video.mp4``)."""
        root = str(self.archive.root)
        return re.sub(re.escape(root) + r"/labs/[^/\s]+/jobs/[0-9a-f]+/", "", text).replace(
            root, "<archive>"
        )

    def _dead(self, claim: Claim, jf: JobFiles | None, error: str) -> str:
        """Dead-letter a job without running it."""
        if not self._patiently(lambda: self.queue.dead_letter(claim, error)):
            return self._lost(claim)
        self._record_dead(claim, jf, error)
        return "dead"

    def _record_dead(self, claim: Claim, jf: JobFiles | None, error: str) -> None:
        """After the queue dead-lettered the job: mark it dead in the archive, tell the lab."""
        metrics.JOBS.labels(state="dead_lettered").inc()
        record = {"job_id": claim.job_id, "lab": claim.lab, "status": "dead", "error": error}
        record["attempts"] = claim.attempts
        if jf is None:
            return  # an invalid lab or job id: no archive entry, no lab to tell
        try:
            record = jf.update_record(status="dead", error=error, attempts=claim.attempts)
        except (OSError, ValueError) as exc:  # the queue already holds the verdict
            log.warning("job %s: could not mark the record dead (%s); retrying", claim.job_id, exc)
            write_later(
                lambda: jf.update_record(status="dead", error=error, attempts=claim.attempts),
                f"job {claim.job_id}: record marked dead",
            )
        self._notify(jf, record, "job.dead")

    def _lost(self, claim: Claim) -> str:
        """The job was taken over: leave it alone (no write, no ack, no fail)."""
        log.warning("job %s was taken over by another worker; dropping this run", claim.job_id)
        return "lost"

    def _notify(self, jf: JobFiles, record: dict[str, Any], event: str) -> None:
        """Send the lab's job-end webhook in the background; the delivery is recorded on the job."""

        def record_delivery(delivery: dict[str, Any]) -> None:
            jf.update_record(notification=delivery)

        self.notifier.submit(jf.lab, job_summary(record, event), on_done=record_delivery)

    def close(self) -> None:
        """Wait for webhook deliveries under way (call when the worker is done)."""
        self.notifier.close(wait=True)


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
        added, existing = queue.enqueue(jf.job_id, jf.lab, retry_dead=retry_dead)
        if added:
            if record.get("status") == "dead":
                jf.update_record(status="queued", error=None)
            queued.append(jf.job_id)
        elif existing == "dead" and record.get("status") != "dead":
            live = queue.status(jf.job_id) or {}  # the record missed its "dead" (a full disk)
            jf.update_record(status="dead", error=live.get("error") or None)
    if retry_dead and queued:
        queue.trim_dead(set(queued))  # ``biovl dead`` lists only what is still dead
    return queued

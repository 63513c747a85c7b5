"""The job service behind the routes: who is asking, which job, what it shows, and submitting
one (read the form, check the upload, archive and queue it)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from services import metrics
from services.api.auth import AuthError, TokenStore, bearer_token
from services.api.errors import HTTPProblem
from services.api.slots import LabSlots
from services.api.tus_store import UploadStore
from services.api.upload import Upload, UploadChecker
from services.archive import Archive, ArchiveError, JobFiles
from services.faults import DISK_RETRY_AFTER_S, disk_problem, redis_write_problem
from services.queue import JobQueue
from services.settings import ServiceSettings

log = logging.getLogger("biovl.service")

RANDOM_WEIGHTS_WARNING = (
    "RANDOM DEMO WEIGHTS: the model was randomly initialised; this alignment is "
    "meaningless (configure real weights to get real results)"
)


def make_job_id(lab: str, video_sha256: str, protocol_text: str, options: dict[str, Any]) -> str:
    """Content hash of lab, video, protocol and options: 160 bits of hex."""
    h = hashlib.sha256()
    for part in (lab, video_sha256, protocol_text, json.dumps(options, sort_keys=True)):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:40]


class JobService:
    """What the HTTP layer needs: settings, archive, queue, tokens and the upload checker."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.archive = Archive(settings.archive_path)
        self.queue = JobQueue.from_settings(settings, self.archive.root)
        self.redis = self.queue.r
        self.tus_store = UploadStore(self.archive.root / "uploads", settings.upload_expiry_s)
        self.tus_store.sweep()
        self.uploads = UploadChecker(settings, self.archive, self.tus_store)
        # non-blocking slots (work across event loops and threads), capped per replica and per
        # lab: excess uploads get 503, and one lab can never hold them all
        self.upload_slots = LabSlots(
            "uploads",
            settings.max_concurrent_uploads,
            settings.max_uploads_per_lab,
            settings.retry_after_s,
            ("max_concurrent_uploads", "max_uploads_per_lab"),
            lambda lab, n: metrics.UPLOAD_SLOTS_IN_USE.labels(lab=lab, kind="upload").set(n),
        )
        self.body_slots = LabSlots(
            "requests with a body",
            settings.max_body_reads,
            settings.max_body_reads_per_lab,
            settings.retry_after_s,
            ("max_body_reads", "max_body_reads_per_lab"),
            lambda lab, n: metrics.UPLOAD_SLOTS_IN_USE.labels(lab=lab, kind="body").set(n),
        )
        removed = self.archive.remove_stale_temps(settings.stale_temp_grace_s)
        if removed:
            log.info("removed %d stale upload temp file(s) from %s", removed, self.archive.tmp_dir)
        self.tokens = TokenStore.from_settings(settings.tokens_file, settings.lab_tokens)
        if not len(self.tokens):
            log.warning(
                "no lab tokens configured: every request will get 401 (set BIOVL_LAB_TOKENS)"
            )

    # ---- auth / lookup -------------------------------------------------------------------
    def lab_of(self, request: Request) -> str:
        """The caller's lab from its bearer token (never from the URL: see api.hardening)."""
        token = bearer_token(request.headers.get("authorization"))
        try:
            return self.tokens.lab_for(token)
        except AuthError as exc:
            raise HTTPProblem(401, str(exc), {"WWW-Authenticate": "Bearer"}) from None

    def job_of(self, lab: str, job_id: str) -> JobFiles:
        """The caller's job, or 404 (also for another lab's job: existence is not leaked)."""
        try:
            jf = self.archive.job(lab, job_id)
        except ArchiveError:
            raise HTTPProblem(404, f"no job {job_id!r} for your lab") from None
        if not jf.record_path.is_file():
            raise HTTPProblem(404, f"no job {job_id!r} for your lab")
        return jf

    def health_problems(self) -> list[str]:
        """What keeps this replica from taking jobs now: Redis refusing writes, a full archive
        disk (empty when healthy); the health gauges are refreshed on the way."""
        redis_problem = redis_write_problem(self.redis, f"{self.settings.redis_prefix}:health")
        metrics.REDIS_WRITE_OK.set(0 if redis_problem else 1)
        try:
            metrics.ARCHIVE_FREE_BYTES.set(shutil.disk_usage(self.archive.root).free)
        except OSError:
            pass
        disk = disk_problem(self.archive.root, self.settings.min_free_archive_bytes)
        return [p for p in (redis_problem, disk) if p]

    # ---- views ---------------------------------------------------------------------------
    def urls(self, job_id: str) -> dict[str, str]:
        """Links of one job."""
        base = f"/v1/jobs/{job_id}"
        return {
            "self": base,
            "json": f"{base}/alignment.json",
            "csv": f"{base}/alignment.csv",
            "vtt": f"{base}/alignment.vtt",
            "video": f"{base}/video",
            "viewer": f"/jobs/{job_id}",
        }

    def summary(self, jf: JobFiles, *, with_result: bool = True) -> dict[str, Any]:
        """The job as the API shows it: record + live status from Redis + result summary."""
        record = jf.record()
        live = self.queue.status(jf.job_id) or {}
        latest = jf.latest_alignment() if with_result else None
        status = live.get("status") or record.get("status") or "unknown"
        if latest is not None and status not in ("running", "queued"):
            status = "succeeded"
        out: dict[str, Any] = {
            "job_id": jf.job_id,
            "lab": jf.lab,
            "status": status,
            "attempts": live.get("attempts", record.get("attempts", 0)),
            "error": live.get("error") or record.get("error") or None,
            "created_at": record.get("created_at"),
            "title": record.get("title"),
            "num_steps": record.get("num_steps"),
            "protocol_edited": bool(record.get("protocol_edited")),
            "duration_s": record.get("duration_s"),
            "video_sha256": record.get("video_sha256"),
            "options": record.get("options", {}),
            "notes": record.get("notes", []),
            "stage": live.get("stage"),
            "progress": live.get("progress"),
            "notification": record.get("notification"),
            "urls": self.urls(jf.job_id),
            "result": None,
        }
        if latest is not None:
            version, data = latest
            out["result"] = {
                "version": version,
                "weights": data.get("weights"),
                "model_id": data.get("model_id"),
                "method": data.get("method"),
                "score": data.get("score"),
                "duration_s": data.get("duration_s"),
                "steps": [
                    {k: s.get(k) for k in ("number", "text", "start", "end", "score")}
                    for s in data.get("steps", [])
                ],
                # what the recording did differently from its lab's usual (group alignments)
                "deviations": data.get("deviations"),
            }
            if data.get("weights") == "random-demo":
                out["warning"] = RANDOM_WEIGHTS_WARNING
        return out

    # ---- submission ----------------------------------------------------------------------
    async def submit(self, request: Request) -> tuple[int, dict[str, Any]]:
        """Read the form as a stream, check the upload, then archive and queue it (or return the
        existing job). Redis, the probe and the disk work run in worker threads."""
        started = time.perf_counter()
        lab = self.lab_of(request)
        await run_in_threadpool(self._check_capacity)
        try:
            self.upload_slots.acquire(lab)
        except HTTPProblem:
            metrics.JOBS.labels(state="rejected").inc()
            raise
        try:
            form = await self.uploads.read_form(request)
            video = form.get("video")
            if video is not None and video.is_file:
                metrics.UPLOAD_BYTES.labels(kind="direct").inc(video.size)
            upload = await run_in_threadpool(self.uploads.check, form, lab)
            try:
                return 202, await run_in_threadpool(self._archive_and_enqueue, lab, upload, started)
            finally:
                upload.discard()
        finally:
            self.upload_slots.release(lab)

    def _check_capacity(self) -> None:
        """503 with Retry-After when the queue is full, 507 when the archive disk is (before
        any of the upload is read)."""
        s = self.settings
        disk = disk_problem(self.archive.root, s.min_free_archive_bytes)
        if disk:
            metrics.JOBS.labels(state="rejected").inc()
            raise HTTPProblem(
                507,
                f"{disk}; nothing was stored: retry in {DISK_RETRY_AFTER_S} s",
                {"Retry-After": str(DISK_RETRY_AFTER_S)},
            )
        depth = self.queue.depth()
        if depth >= s.max_queue_depth:
            metrics.JOBS.labels(state="rejected").inc()
            raise HTTPProblem(
                503,
                f"the queue is full ({depth} jobs waiting, limit {s.max_queue_depth}); "
                f"retry in {s.retry_after_s} s",
                {"Retry-After": str(s.retry_after_s)},
            )

    def _archive_and_enqueue(self, lab: str, upload: Upload, started: float) -> dict[str, Any]:
        """Commit a checked upload as a new job and queue it; an existing job is returned as is
        (and re-queued when Redis lost it)."""
        protocol_key = upload.protocol_text + "\x00" + (upload.protocol_original or "")
        job_id = make_job_id(lab, upload.video_sha256, protocol_key, upload.options)
        if self.archive.exists(lab, job_id):
            jf = self.archive.job(lab, job_id)
            if not jf.versions() and jf.record().get("status") != "dead":
                self.queue.enqueue(job_id, lab)  # self-heal when Redis lost the job
            metrics.JOBS.labels(state="deduplicated").inc()
            body = self.summary(jf, with_result=False)
            body["deduplicated"] = True
            return body
        record = {
            "created_at": time.time(),
            "status": "queued",
            "video_sha256": upload.video_sha256,
            "video_bytes": upload.video_bytes,
            "video_filename": Path(upload.video_filename or "video").name[:200],
            "protocol_filename": Path(upload.protocol_filename or "protocol.txt").name[:200],
            "title": upload.protocol.title,
            "num_steps": len(upload.protocol.steps),
            "duration_s": upload.duration_s,
            "options": upload.options,
            "protocol_edited": upload.protocol_original is not None,
            "notes": upload.notes,
            "annotation_spans": upload.annotation_spans,
        }
        jf = self.archive.create_job(
            lab,
            job_id,
            video_tmp=upload.video_tmp,
            video_ext=upload.video_ext,
            protocol_text=upload.protocol_text,
            protocol_original=upload.protocol_original,
            annotations_tmp=upload.annotations_tmp,
            annotations_ext=upload.annotations_ext,
            record=record,
        )
        upload.temps.clear()  # the archive owns the files now
        self.queue.enqueue(job_id, lab)
        metrics.JOBS.labels(state="submitted").inc()
        metrics.STAGE_SECONDS.labels(stage="upload").observe(time.perf_counter() - started)
        body = self.summary(jf, with_result=False)
        body["deduplicated"] = False
        return body

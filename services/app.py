"""HTTP API (FastAPI) and the Ray Serve application: Ingress, Decoder, Embedder, Aligner, QueueWorker.

``create_app(service)`` builds the FastAPI app; it runs inside the Serve ``Ingress`` deployment
(``build_app(settings)`` composes the deployments) or standalone for tests. Routes (SPEC "Service"):

- ``POST /v1/jobs``  multipart ``video`` file, ``protocol`` file or text field, optional
  ``annotations`` file and ``options`` JSON (keys: method, method_params, segment_seconds) -> 202
- ``GET /v1/jobs``, ``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/alignment.{json,csv,vtt}``
  (``?similarity=1`` adds the matrix to the JSON), ``GET /v1/jobs/{id}/video`` (HTTP Range)
- ``/-/healthz``, ``/metrics``; ``/jobs/{id}`` and ``/`` serve the viewer from ``services/static``.

Auth: ``Authorization: Bearer <lab token>``; the video and alignment downloads also accept
``?token=`` because a browser ``<video>``/``<track>`` element cannot send headers. Another lab's
job answers 404, exactly like a job that does not exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from biovl_core.errors import AnnotationError, BioVLError, ProtocolError, VideoError
from services import metrics
from services.archive import Archive, ArchiveError, JobFiles, annotations_ext, video_ext
from services.auth import AuthError, TokenStore, bearer_token
from services.protocol_preview import register_protocol_preview
from services.queue import JobQueue
from services.redis_conn import connect
from services.settings import SAFE_OPTION_KEYS, ServiceSettings

log = logging.getLogger("biovl.service")

STATIC_DIR = Path(__file__).parent / "static"
ALIGNMENT_MEDIA = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


class HTTPProblem(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def make_job_id(lab: str, video_sha256: str, protocol_text: str, options: dict[str, Any]) -> str:
    """Content hash of lab, video, protocol and options: 160 bits of hex."""
    h = hashlib.sha256()
    for part in (lab, video_sha256, protocol_text, json.dumps(options, sort_keys=True)):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:40]


class JobService:
    """What the HTTP layer needs: settings, archive, queue and tokens."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.archive = Archive(settings.archive_path)
        self.redis = connect(settings.redis_url, self.archive.root / "redis")
        self.queue = JobQueue(
            self.redis,
            settings.redis_prefix,
            max_attempts=settings.max_attempts,
            visibility_timeout_s=settings.visibility_timeout_s,
        )
        self.tokens = TokenStore.from_settings(settings.tokens_file, settings.lab_tokens)
        if not len(self.tokens):
            log.warning(
                "no lab tokens configured: every request will get 401 (set BIOVL_LAB_TOKENS)"
            )

    # ---- auth / lookup -------------------------------------------------------------------
    def lab_of(self, request: Request, allow_query_token: bool = False) -> str:
        """The caller's lab from its bearer token (or ``?token=`` where allowed)."""
        token = bearer_token(request.headers.get("authorization"))
        if token is None and allow_query_token:
            token = request.query_params.get("token")
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
            "duration_s": record.get("duration_s"),
            "video_sha256": record.get("video_sha256"),
            "options": record.get("options", {}),
            "stage": live.get("stage"),
            "progress": live.get("progress"),
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
            }
            if data.get("weights") == "random-demo":
                out["warning"] = (
                    "RANDOM DEMO WEIGHTS: the model was randomly initialised; this alignment is "
                    "meaningless (configure real weights to get real results)"
                )
        return out

    def sample_queue(self) -> None:
        """Refresh the queue gauges."""
        metrics.QUEUE_DEPTH.set(self.queue.depth())
        metrics.QUEUE_OLDEST.set(self.queue.oldest_pending_seconds())
        metrics.DEAD_LETTER_DEPTH.set(self.queue.dead_depth())

    # ---- submission ----------------------------------------------------------------------
    async def submit(self, request: Request) -> tuple[int, dict[str, Any]]:
        """Validate and archive an upload, then queue it (or return the existing job)."""
        started = time.perf_counter()
        s = self.settings
        lab = self.lab_of(request)
        depth = self.queue.depth()
        if depth >= s.max_queue_depth:
            metrics.JOBS.labels(state="rejected").inc()
            raise HTTPProblem(
                503,
                f"the queue is full ({depth} jobs waiting, limit {s.max_queue_depth}); "
                f"retry in {s.retry_after_s} s",
                {"Retry-After": str(s.retry_after_s)},
            )
        limit_total = (
            s.max_video_bytes + s.max_protocol_bytes + s.max_annotations_bytes + 1024 * 1024
        )
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit_total:
            raise HTTPProblem(
                413,
                f"request body is {int(length)} bytes; the limit is {limit_total} bytes "
                f"(video {s.max_video_bytes}, protocol {s.max_protocol_bytes}, "
                f"annotations {s.max_annotations_bytes})",
            )
        try:
            form = await request.form(
                max_files=3, max_fields=8, max_part_size=s.max_protocol_bytes + 1
            )
        except Exception as exc:  # malformed multipart, too many parts, an oversize text field
            raise HTTPProblem(
                400,
                f"could not read the multipart form ({exc}); send fields video, protocol, "
                "annotations (optional), options (optional JSON)",
            ) from None
        temps: list[Path] = []
        try:
            video = form.get("video")
            if not isinstance(video, UploadFile):
                raise HTTPProblem(422, "missing the 'video' file field (multipart/form-data)")
            video_tmp, sha, nbytes = await self._store(video, s.max_video_bytes, "video")
            temps.append(video_tmp)
            protocol_text, protocol_name = await self._protocol_text(form.get("protocol"))
            from biovl_core.protocol import parse_protocol

            try:
                protocol = parse_protocol(protocol_text, filename=protocol_name)
            except ProtocolError as exc:
                raise HTTPProblem(422, f"protocol: {exc}") from None
            ann_tmp, ann_ext = None, None
            annotations = form.get("annotations")
            if isinstance(annotations, UploadFile):
                ann_tmp, _, _ = await self._store(
                    annotations, s.max_annotations_bytes, "annotations"
                )
                temps.append(ann_tmp)
                ann_ext = annotations_ext(annotations.filename)
                from biovl_core.formats import parse_annotations

                try:
                    parse_annotations(ann_tmp.read_bytes(), filename=annotations.filename)
                except AnnotationError as exc:
                    raise HTTPProblem(422, f"annotations: {exc}") from None
            options = self._options(form.get("options"))
            probe_start = time.perf_counter()
            info = await run_in_threadpool(self._probe, video_tmp, video.filename)
            metrics.STAGE_SECONDS.labels(stage="probe").observe(time.perf_counter() - probe_start)
            self._check_alignable(options, len(protocol.steps), info.duration_s)
            job_id = make_job_id(lab, sha, protocol_text, options)
            if self.archive.exists(lab, job_id):
                jf = self.archive.job(lab, job_id)
                if not jf.versions() and jf.record().get("status") != "dead":
                    self.queue.enqueue(job_id, lab)  # self-heal when Redis lost the job
                metrics.JOBS.labels(state="deduplicated").inc()
                body = self.summary(jf, with_result=False)
                body["deduplicated"] = True
                return 202, body
            record = {
                "created_at": time.time(),
                "status": "queued",
                "video_sha256": sha,
                "video_bytes": nbytes,
                "video_filename": Path(video.filename or "video").name[:200],
                "protocol_filename": Path(protocol_name or "protocol.txt").name[:200],
                "title": protocol.title,
                "num_steps": len(protocol.steps),
                "duration_s": info.duration_s,
                "options": options,
            }
            jf = self.archive.create_job(
                lab,
                job_id,
                video_tmp=video_tmp,
                video_ext=video_ext(video.filename),
                protocol_text=protocol_text,
                annotations_tmp=ann_tmp,
                annotations_ext=ann_ext,
                record=record,
            )
            temps.clear()
            self.queue.enqueue(job_id, lab)
            metrics.JOBS.labels(state="submitted").inc()
            metrics.STAGE_SECONDS.labels(stage="upload").observe(time.perf_counter() - started)
            body = self.summary(jf, with_result=False)
            body["deduplicated"] = False
            return 202, body
        finally:
            for t in temps:
                t.unlink(missing_ok=True)

    async def _store(self, upload: UploadFile, limit: int, field: str) -> tuple[Path, str, int]:
        """Copy an upload in chunks to an archive temp file: (path, sha256, bytes); 413 over ``limit``."""
        tmp = self.archive.temp_path()
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := await upload.read(self.settings.upload_chunk_bytes):
                    size += len(chunk)
                    if size > limit:
                        raise HTTPProblem(
                            413,
                            f"'{field}' is larger than the limit of {limit} bytes "
                            f"({limit / 1024 / 1024:.1f} MiB)",
                        )
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, digest.hexdigest(), size

    async def _protocol_text(self, field: Any) -> tuple[str, str | None]:
        """The protocol from a file or text field (422 when missing, 413 over the limit)."""
        limit = self.settings.max_protocol_bytes
        if isinstance(field, UploadFile):
            data = await field.read(limit + 1)
            name = field.filename
        elif isinstance(field, str):
            data, name = field.encode("utf-8"), None
        else:
            raise HTTPProblem(422, "missing the 'protocol' field: a text file or a text value")
        if len(data) > limit:
            raise HTTPProblem(413, f"'protocol' is larger than the limit of {limit} bytes")
        try:
            return data.decode("utf-8-sig"), name
        except UnicodeDecodeError:
            raise HTTPProblem(422, "protocol: not UTF-8 text; save it as UTF-8") from None

    def _options(self, raw: Any) -> dict[str, Any]:
        """Parse and check the ``options`` JSON (only SAFE_OPTION_KEYS; method checked by aligning)."""
        if raw is None or raw == "":
            return {}
        if not isinstance(raw, str):
            raise HTTPProblem(422, "options must be a JSON text field, not a file")
        try:
            options = json.loads(raw)
        except ValueError as exc:
            raise HTTPProblem(422, f"options is not valid JSON ({exc})") from None
        if not isinstance(options, dict):
            raise HTTPProblem(422, 'options must be a JSON object, e.g. {"method": "nw"}')
        unknown = sorted(set(options) - SAFE_OPTION_KEYS)
        if unknown:
            raise HTTPProblem(
                422, f"options {unknown} cannot be set per job; allowed: {sorted(SAFE_OPTION_KEYS)}"
            )
        seg = options.get("segment_seconds")
        if seg is not None and (
            not isinstance(seg, int | float) or isinstance(seg, bool) or not 0.5 <= seg <= 60
        ):
            raise HTTPProblem(422, f"segment_seconds must be a number from 0.5 to 60, got {seg!r}")
        if not isinstance(options.get("method_params", {}), dict):
            raise HTTPProblem(422, "method_params must be a JSON object")
        try:
            self.settings.pipeline_config(**options)
        except (ValueError, TypeError) as exc:
            raise HTTPProblem(422, f"options: {exc}") from None
        return options

    def _check_alignable(self, options: dict[str, Any], num_steps: int, duration_s: float) -> None:
        """Run the job's aligner on a zero matrix of the real shape: 422 if it cannot work."""
        from biovl_core.align import DEFAULT_METHOD, align
        from biovl_core.video import segment_count

        try:
            cfg = self.settings.pipeline_config(**options)
            n = segment_count(duration_s, cfg.segment_seconds)
            align(
                np.zeros((num_steps, n), dtype=np.float32),
                method=DEFAULT_METHOD if cfg.method == "default" else cfg.method,
                segment_seconds=cfg.segment_seconds,
                duration_s=duration_s,
                backend="numpy",
                **cfg.method_params,
            )
        except (ValueError, TypeError) as exc:
            raise HTTPProblem(
                422,
                f"this recording cannot be aligned with these options ({num_steps} steps, "
                f"{duration_s:.1f} s of video): {exc}",
            ) from None

    def _probe(self, path: Path, filename: str | None) -> Any:
        """``biovl_core.video.probe`` with the upload's name in the error (415 for non-videos)."""
        from biovl_core.video import probe

        try:
            return probe(path)
        except VideoError as exc:
            raise HTTPProblem(
                415,
                f"video {filename!r} cannot be read as a video: {str(exc).replace(str(path), 'upload')}",
            ) from None


def _problem_response(exc: HTTPProblem) -> JSONResponse:
    return JSONResponse(
        {"error": exc.message, "status": exc.status}, exc.status, headers=exc.headers
    )


def create_app(service: JobService) -> FastAPI:
    """The FastAPI app serving ``service``."""
    app = FastAPI(title="BioVL aligner", version="1", docs_url="/docs", redoc_url=None)
    app.state.service = service
    register_protocol_preview(app, service)

    @app.exception_handler(HTTPProblem)
    async def _problem(_: Request, exc: HTTPProblem) -> JSONResponse:
        return _problem_response(exc)

    @app.exception_handler(BioVLError)
    async def _biovl(_: Request, exc: BioVLError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "status": 422}, 422)

    @app.middleware("http")
    async def _http_metrics(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        code = 500
        try:
            response = await call_next(request)
            code = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            metrics.HTTP_REQUESTS.labels(route=name, method=request.method, code=str(code)).inc()
            metrics.HTTP_SECONDS.labels(route=name).observe(time.perf_counter() - start)

    @app.post("/v1/jobs", status_code=202)
    async def submit_job(request: Request) -> JSONResponse:
        """Upload a recording and its protocol; 202 with the job id."""
        status, body = await service.submit(request)
        return JSONResponse(body, status)

    @app.get("/v1/jobs")
    def list_jobs(request: Request, limit: int = 100) -> dict[str, Any]:
        """The caller's lab's jobs, newest first."""
        lab = service.lab_of(request)
        jobs = [service.summary(jf, with_result=False) for jf in service.archive.iter_jobs(lab)]
        jobs.sort(key=lambda j: j.get("created_at") or 0, reverse=True)
        return {"lab": lab, "jobs": jobs[: max(1, min(limit, 1000))]}

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str, request: Request) -> dict[str, Any]:
        """Status, attempts, error and result summary of one job."""
        return service.summary(service.job_of(service.lab_of(request), job_id))

    @app.get("/v1/jobs/{job_id}/alignment.{fmt}")
    def get_alignment(job_id: str, fmt: str, request: Request, similarity: int = 0) -> Response:
        """The newest alignment as JSON, CSV or WebVTT (``?token=`` accepted)."""
        jf = service.job_of(service.lab_of(request, allow_query_token=True), job_id)
        if fmt not in ALIGNMENT_MEDIA:
            raise HTTPProblem(404, f"unknown format {fmt!r}; use alignment.json, .csv or .vtt")
        versions = jf.versions()
        if not versions:
            st = service.summary(jf, with_result=False)
            raise HTTPProblem(
                409,
                f"job {job_id} has no alignment yet (status {st['status']}"
                + (f": {st['error']}" if st.get("error") else "")
                + "); poll GET /v1/jobs/"
                + job_id,
            )
        path = jf.alignment_path(versions[-1], fmt)
        if fmt == "json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not similarity:
                data.pop("similarity", None)
            return JSONResponse(data)
        return Response(path.read_bytes(), media_type=ALIGNMENT_MEDIA[fmt])

    @app.get("/v1/jobs/{job_id}/video")
    def get_video(job_id: str, request: Request) -> FileResponse:
        """The archived video, with HTTP Range support (``?token=`` accepted)."""
        jf = service.job_of(service.lab_of(request, allow_query_token=True), job_id)
        path = jf.video_path()
        media = {".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime"}
        return FileResponse(path, media_type=media.get(path.suffix, "application/octet-stream"))

    @app.get("/-/healthz")
    @app.get("/v1/healthz")
    def healthz() -> dict[str, Any]:
        """Redis reachability + queue depth (under Serve the proxy answers /-/healthz itself)."""
        try:
            depth = service.queue.depth()
        except Exception as exc:
            raise HTTPProblem(503, f"redis unreachable: {exc}") from None
        return {"ok": True, "queue_depth": depth}

    @app.get("/metrics")
    def get_metrics() -> Response:
        """Prometheus text exposition (this node's processes in multiprocess mode)."""
        try:
            service.sample_queue()
        except Exception as exc:  # scrape still answers with the other metrics
            log.warning("queue gauges not updated: %s", exc)
        metrics.update_gpu_utilization()
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/jobs/{job_id}")
    def viewer(job_id: str) -> FileResponse:
        """The viewer page (it reads the job id from the URL and asks for the token itself)."""
        page = STATIC_DIR / "viewer.html"
        if not page.is_file():
            raise HTTPProblem(404, "the viewer is not installed (services/static/viewer.html)")
        return FileResponse(page, media_type="text/html")

    @app.get("/")
    def index() -> Response:
        """The landing page, or a pointer to the API."""
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return PlainTextResponse("BioVL aligner: POST /v1/jobs; see /docs\n")

    if STATIC_DIR.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


# ---- Ray Serve ---------------------------------------------------------------------------


class RemoteEmbedder:
    """Looks like a ``biovl_core.embed.Embedder`` to the pipeline; runs on the Embedder deployment."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        info = handle.info.remote().result()
        self.model_id: str = info["model_id"]
        self.weights: str = info["weights"]
        self.frames_per_segment: int = info["frames_per_segment"]
        self.input_size: int = info["input_size"]
        self.dim: int = info["dim"]
        self._cache_key: str = info["cache_key"]
        self.prompt_templates: tuple[str, ...] = tuple(info["prompt_templates"])

    def cache_key(self) -> str:
        """The remote embedder's cache key."""
        return self._cache_key

    def embed_frames(self, frames: np.ndarray) -> np.ndarray:
        """Segment frames -> embeddings, batched with other jobs' requests on the deployment."""
        return self._handle.embed_frames.remote(np.ascontiguousarray(frames)).result()

    def embed_texts(self, steps: list[str]) -> np.ndarray:
        """Step texts -> embeddings."""
        return self._handle.embed_texts.remote(list(steps)).result()


class RemoteSampler:
    """Looks like a ``biovl_core.video.FrameSampler`` to the pipeline; decodes on the Decoder deployment.

    One Decoder call per batch of segments (the archive is on a volume every replica reads); the
    next batch is requested before the current one is handed out, so decoding overlaps embedding
    while at most two batches are in flight.
    """

    name = "serve-decoder"

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def iter_batches(
        self, path: str | Path, timestamps: np.ndarray, size: int = 224, batch_segments: int = 64
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """(segment slice, uint8 frames [b, k, size, size, 3]) batches, decoded remotely."""
        ts = np.asarray(timestamps, dtype=np.float64)
        if ts.ndim != 2:
            raise ValueError(f"timestamps must be [segments, frames], got shape {ts.shape}")
        step = max(1, int(batch_segments))
        starts = list(range(0, ts.shape[0], step))

        def request(a: int) -> Any:
            batch = np.ascontiguousarray(ts[a : a + step])
            return self._handle.decode.remote(str(path), batch, int(size))

        pending = request(starts[0]) if starts else None
        try:
            for i, a in enumerate(starts):
                frames = pending.result()
                pending = request(starts[i + 1]) if i + 1 < len(starts) else None
                yield slice(a, min(a + step, ts.shape[0])), frames
        finally:
            if pending is not None:
                pending.cancel()

    def sample(self, path: str | Path, timestamps: np.ndarray, size: int = 224) -> np.ndarray:
        """All frames at once: uint8 [N, k, size, size, 3]."""
        ts = np.asarray(timestamps, dtype=np.float64)
        out = np.empty((*ts.shape, size, size, 3), dtype=np.uint8)
        for sl, frames in self.iter_batches(path, ts, size, batch_segments=max(1, len(ts))):
            out[sl] = frames
        return out


class RemoteAligner:
    """An ``align_fn`` for the pipeline (signature of ``biovl_core.align.align``) on the Aligner."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __call__(
        self,
        similarity: Any,
        segment_seconds: float = 5.0,
        method: str | None = None,  # None: biovl_core.align.DEFAULT_METHOD
        backend: str = "auto",
        duration_s: float | None = None,
        **params: Any,
    ) -> Any:
        """Align one video; batched with other jobs' requests on the deployment."""
        request = {
            "similarity": np.ascontiguousarray(similarity),
            "segment_seconds": segment_seconds,
            "method": method,
            "backend": backend,
            "duration_s": duration_s,
            "params": params,
        }
        out = self._handle.align.remote(request).result()
        if isinstance(out, BaseException):  # the request's own error, without Ray's wrapping
            raise out
        return out


class ServeRunner:
    """Worker runner for Serve: ``align_video`` in the QueueWorker replica with every heavy stage
    remote: frames from the Decoder, embeddings from the Embedder, alignments from the Aligner."""

    # Stages the deployments record themselves (Worker leaves them out of observe_stages).
    remote_stages = ("decode", "align")

    def __init__(
        self,
        settings: ServiceSettings,
        embedder_handle: Any,
        decoder_handle: Any = None,
        aligner_handle: Any = None,
    ) -> None:
        self.settings = settings
        self.embedder = RemoteEmbedder(embedder_handle)
        self.sampler = RemoteSampler(decoder_handle) if decoder_handle is not None else None
        self.align_fn = RemoteAligner(aligner_handle) if aligner_handle is not None else None
        self.remote_stages = tuple(
            stage
            for stage, remote in (("decode", self.sampler), ("align", self.align_fn))
            if remote is not None
        )

    def model_identity(self, cfg: Any) -> tuple[str, str, str]:
        """(model_id, weights, model_key) of the Embedder deployment."""
        return self.embedder.model_id, self.embedder.weights, self.embedder.cache_key()

    def run(
        self, video: Path, protocol_text: str, protocol_name: str, cfg: Any, progress: Any
    ) -> Any:
        """``align_video`` with the remote decoder, embedder and aligner."""
        from biovl_core.pipeline import align_video
        from biovl_core.protocol import parse_protocol

        protocol = parse_protocol(protocol_text, filename=protocol_name)
        extra: dict[str, Any] = {}
        if self.sampler is not None:
            extra["sampler"] = self.sampler
        if self.align_fn is not None:
            extra["align_fn"] = self.align_fn
        return align_video(video, protocol, cfg, embedder=self.embedder, progress=progress, **extra)


# Parameters that differ per video (the protocol's step texts): passed per request, not grouped.
_PER_VIDEO_PARAMS = ("steps",)


def _shared_params(request: dict[str, Any]) -> dict[str, Any]:
    """The request's aligner parameters that a batch must share."""
    return {k: v for k, v in request["params"].items() if k not in _PER_VIDEO_PARAMS}


def _per_video_params(request: dict[str, Any]) -> dict[str, Any]:
    """The request's own parameters (e.g. its protocol's step texts)."""
    return {k: v for k, v in request["params"].items() if k in _PER_VIDEO_PARAMS}


def _align_group_key(request: dict[str, Any]) -> Any:
    """Requests with equal keys go through one ``align_batch`` call (it takes one method)."""
    try:
        params = json.dumps(_shared_params(request), sort_keys=True)
    except (TypeError, ValueError):  # e.g. a per-segment drop_cost array: a group of its own
        params = f"unhashable-{id(request)}"
    return (
        request["method"],
        request["backend"],
        float(request["segment_seconds"]),
        params,
    )


def align_requests(requests: list[dict[str, Any]], default_backend: str = "auto") -> list[Any]:
    """Align a list of single-video requests: one ``align_batch`` call per group of requests
    sharing (method, backend, segment_seconds, params). Returns one ``Alignment`` per request,
    or the exception that request raised (a failing group is retried request by request, so one
    bad request does not fail the others)."""
    from biovl_core.align import DEFAULT_METHOD, align_batch

    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(_align_group_key(r), []).append(i)
    out: list[Any] = [None] * len(requests)
    for idx in groups.values():
        first = requests[idx[0]]
        kwargs = {
            "segment_seconds": first["segment_seconds"],
            "method": first["method"] or DEFAULT_METHOD,
            "backend": first["backend"] or default_backend,
            **_shared_params(first),
        }
        try:
            results = align_batch(
                [requests[i]["similarity"] for i in idx],
                duration_s=[requests[i]["duration_s"] for i in idx],
                per_video=[_per_video_params(requests[i]) for i in idx],
                **kwargs,
            )
            for i, res in zip(idx, results, strict=True):
                out[i] = res
        except Exception:
            for i in idx:
                try:
                    out[i] = align_batch(
                        [requests[i]["similarity"]],
                        duration_s=requests[i]["duration_s"],
                        per_video=[_per_video_params(requests[i])],
                        **kwargs,
                    )[0]
                except Exception as exc:
                    out[i] = exc
    return out


def _serve_deployments() -> dict[str, Any]:
    """Define the Serve deployment classes (imported lazily: ray is heavy)."""
    from ray import serve

    @serve.deployment(name="Embedder")
    class EmbedderDeployment:
        """The embedding model; requests from concurrent jobs are batched into one forward pass."""

        def __init__(self, settings: dict[str, Any]) -> None:
            from biovl_core.embed import load_embedder

            self.settings = ServiceSettings.from_dict(settings)
            self.embedder = load_embedder(self.settings.pipeline_config())
            self.embed_frames.set_max_batch_size(self.settings.embed_max_batch_size)
            self.embed_frames.set_batch_wait_timeout_s(self.settings.embed_batch_wait_timeout_s)
            self._lock = threading.Lock()
            if self.settings.worker_metrics_port:
                metrics.serve_metrics(self.settings.worker_metrics_port)

        def info(self) -> dict[str, Any]:
            """Model identity and input geometry."""
            e = self.embedder
            return {
                "model_id": e.model_id,
                "weights": e.weights,
                "frames_per_segment": e.frames_per_segment,
                "input_size": e.input_size,
                "dim": e.dim,
                "cache_key": e.cache_key(),
                "prompt_templates": list(e.prompt_templates),
            }

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
        async def embed_frames(self, batches: list[np.ndarray]) -> list[np.ndarray]:
            """Concatenate the waiting requests' segments, embed once, split the rows back."""
            sizes = [len(b) for b in batches]
            frames = np.concatenate(batches, axis=0)
            metrics.EMBED_BATCH_SIZE.observe(len(frames))
            out = await asyncio.to_thread(self._embed, frames)
            return list(np.split(out, np.cumsum(sizes)[:-1], axis=0))

        def _embed(self, frames: np.ndarray) -> np.ndarray:
            with self._lock:
                return self.embedder.embed_frames(frames)

        async def embed_texts(self, steps: list[str]) -> np.ndarray:
            """Step texts -> embeddings."""
            return await asyncio.to_thread(self._embed_texts, steps)

        def _embed_texts(self, steps: list[str]) -> np.ndarray:
            with self._lock:
                return self.embedder.embed_texts(steps)

    @serve.deployment(name="Decoder")
    class DecoderDeployment:
        """Frame sampling: DALI (NVDEC) on a replica with a GPU share and DALI installed, else PyAV.

        One request = one batch of segments of one video on the shared archive volume.
        """

        def __init__(self, settings: dict[str, Any]) -> None:
            from biovl_core.video import get_sampler

            self.settings = ServiceSettings.from_dict(settings)
            self.sampler = get_sampler(self.settings.pipeline_config().decoder)
            # DALI pipelines are stateful objects: one decode at a time; PyAV opens per call.
            self._lock = threading.Lock() if self.sampler.name == "dali" else None
            log.info("Decoder replica decodes with the %s sampler", self.sampler.name)
            self._calls = 0
            self._segments = 0
            if self.settings.worker_metrics_port:
                metrics.serve_metrics(self.settings.worker_metrics_port)

        async def decode(self, path: str, timestamps: np.ndarray, size: int) -> np.ndarray:
            """uint8 RGB frames [b, k, size, size, 3] shown at ``timestamps`` [b, k] (seconds)."""
            start = time.perf_counter()
            frames = await asyncio.to_thread(self._decode, path, timestamps, size)
            metrics.STAGE_SECONDS.labels(stage="decode").observe(time.perf_counter() - start)
            self._calls += 1
            self._segments += len(frames)
            return frames

        def _decode(self, path: str, timestamps: np.ndarray, size: int) -> np.ndarray:
            if self._lock is None:
                return np.asarray(self.sampler.sample(path, timestamps, size))
            with self._lock:
                frames = self.sampler.sample(path, timestamps, size)
                return frames.cpu().numpy() if hasattr(frames, "cpu") else np.asarray(frames)

        def stats(self) -> dict[str, Any]:
            """Which sampler this replica runs and what it decoded (tests, debugging)."""
            return {"sampler": self.sampler.name, "calls": self._calls, "segments": self._segments}

    @serve.deployment(name="Aligner")
    class AlignerDeployment:
        """Alignment requests from concurrent jobs, batched into one ``align_batch`` call per
        (method, params) group: the CuPy wavefront kernel on a GPU replica, numba on CPU."""

        def __init__(self, settings: dict[str, Any]) -> None:
            from biovl_core.device import cupy_usable

            self.settings = ServiceSettings.from_dict(settings)
            self.backend = self.settings.pipeline_config().backend
            self.align_batched.set_max_batch_size(self.settings.align_max_batch_size)
            self.align_batched.set_batch_wait_timeout_s(self.settings.align_batch_wait_timeout_s)
            auto = "cupy" if cupy_usable() else "numba"
            self._resolved = auto if self.backend == "auto" else self.backend
            self._batches = 0
            self._requests = 0
            self._max_batch = 0
            if self.settings.worker_metrics_port:
                metrics.serve_metrics(self.settings.worker_metrics_port)

        async def align(self, request: dict[str, Any]) -> Any:
            """One video's alignment (``Alignment``), or the exception its request raised."""
            start = time.perf_counter()
            out = await self.align_batched(request)
            metrics.STAGE_SECONDS.labels(stage="align").observe(time.perf_counter() - start)
            return out

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
        async def align_batched(self, requests: list[dict[str, Any]]) -> list[Any]:
            """The waiting requests, grouped by method and parameters, one kernel call per group."""
            self._batches += 1
            self._requests += len(requests)
            self._max_batch = max(self._max_batch, len(requests))
            return await asyncio.to_thread(align_requests, requests, self.backend)

        def stats(self) -> dict[str, Any]:
            """Backend and batching counters of this replica (tests, debugging)."""
            return {
                "backend": self._resolved,
                "batches": self._batches,
                "requests": self._requests,
                "max_batch": self._max_batch,
            }

    @serve.deployment(name="QueueWorker")
    class QueueWorkerDeployment:
        """Consumes the Redis stream; decoding, embedding and aligning run on their deployments."""

        def __init__(
            self, settings: dict[str, Any], embedder: Any, decoder: Any = None, aligner: Any = None
        ) -> None:
            from services.worker import Worker

            self.settings = ServiceSettings.from_dict(settings)
            self._runner_args = (embedder, decoder, aligner)
            self.worker: Worker | None = None
            self._error: BaseException | None = None
            self._thread = threading.Thread(target=self._run, name="queue-worker", daemon=True)
            self._thread.start()

        def _run(self) -> None:
            from services.worker import Worker

            try:
                runner = ServeRunner(self.settings, *self._runner_args)
                self.worker = Worker(self.settings, runner)
                if self.settings.worker_metrics_port:
                    metrics.serve_metrics(self.settings.worker_metrics_port)
                metrics.start_sampler(self.worker.sample_queue)
                self.worker.run_forever()
            except BaseException as exc:  # reported by check_health, so Serve restarts us
                log.exception("queue worker stopped")
                self._error = exc

        def check_health(self) -> None:
            """Unhealthy when the worker thread died (Serve then replaces the replica)."""
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"queue worker thread stopped: {self._error!r}")

        def stats(self) -> dict[str, Any]:
            """Consumer name (for tests and debugging)."""
            return {"consumer": self.worker.consumer if self.worker else None}

        def __del__(self) -> None:
            if self.worker is not None:
                self.worker.stop()

    @serve.deployment(name="Ingress")
    @serve.ingress()
    class IngressDeployment:
        """The HTTP API."""

        def __init__(self, settings: dict[str, Any], _worker: Any = None) -> None:
            self.service = JobService(ServiceSettings.from_dict(settings))
            self._worker = _worker  # keeps the QueueWorker deployment in the application

        def __serve_build_asgi_app__(self) -> FastAPI:
            return create_app(self.service)

    return {
        "Decoder": DecoderDeployment,
        "Embedder": EmbedderDeployment,
        "Aligner": AlignerDeployment,
        "QueueWorker": QueueWorkerDeployment,
        "Ingress": IngressDeployment,
    }


def replica_env(settings: ServiceSettings, role: str) -> dict[str, str]:
    """Environment of a replica: its role's metrics folder, device choice, random-weights opt-in."""
    import os

    env: dict[str, str] = {}
    if settings.metrics_dir:
        env[metrics.MULTIPROC_ENV] = str(Path(settings.metrics_dir).resolve() / role)
    for key in (
        "BIOVL_DEVICE",
        "BIOVL_ALLOW_RANDOM_WEIGHTS",
        "BIOVL_OPEN_CLIP_CACHE",
        "HF_HUB_OFFLINE",
    ):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def build_app(settings: ServiceSettings) -> Any:
    """The Serve application graph: Ingress (+ Decoder, Embedder, Aligner, QueueWorker if configured)."""
    d = _serve_deployments()
    cfg = settings.to_dict()
    cpus = settings.replica_num_cpus

    def opts(num_gpus: float, role: str) -> dict[str, Any]:
        env = {"env_vars": replica_env(settings, role)}
        return {"num_cpus": cpus, "num_gpus": num_gpus, "runtime_env": env}

    ingress = d["Ingress"].options(
        num_replicas=settings.ingress_replicas, ray_actor_options=opts(0.0, "ingress")
    )
    if settings.worker_replicas <= 0:
        return ingress.bind(cfg)
    batch = settings.embed_max_batch_size
    embedder = (
        d["Embedder"]
        .options(
            num_replicas=settings.embedder_replicas,
            max_ongoing_requests=max(2 * batch, 16),
            ray_actor_options=opts(settings.embedder_num_gpus, "pipeline"),
        )
        .bind(cfg)
    )
    decoder = (
        d["Decoder"]
        .options(
            num_replicas=settings.decoder_replicas,
            max_ongoing_requests=4,
            ray_actor_options=opts(settings.decoder_num_gpus, "pipeline"),
        )
        .bind(cfg)
    )
    aligner = (
        d["Aligner"]
        .options(
            num_replicas=settings.aligner_replicas,
            max_ongoing_requests=max(2 * settings.align_max_batch_size, 16),
            ray_actor_options=opts(settings.aligner_num_gpus, "pipeline"),
        )
        .bind(cfg)
    )
    worker = (
        d["QueueWorker"]
        .options(
            num_replicas=settings.worker_replicas,
            ray_actor_options=opts(settings.worker_num_gpus, "pipeline"),
            health_check_period_s=10,
        )
        .bind(cfg, embedder, decoder, aligner)
    )
    # The worker is a sibling of the ingress in the graph: binding it here deploys it.
    return ingress.bind(cfg, _worker=worker)


def app_builder(args: dict[str, str] | None = None) -> Any:
    """Entry point for ``serve run services.app:app_builder`` / deploy/serve_config.yaml.

    Settings come from the environment of the node that builds the application (``BIOVL_*``,
    ``REDIS_URL``, optionally a YAML named by ``BIOVL_SERVICE_CONFIG``); ``args.config`` may
    name a settings YAML instead. The built settings travel to every replica as init args.
    """
    from services.settings import load_settings

    return build_app(load_settings((args or {}).get("config") or None))

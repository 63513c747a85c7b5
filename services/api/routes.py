"""The HTTP routes (SPEC "Service") over a ``JobService``, with request metrics and the viewer pages.

- ``POST /v1/jobs``  multipart ``video`` file (or ``video_upload``: a finished resumable upload's
  id or URL), ``protocol`` file or text field, optional ``annotations`` file and ``options`` JSON
  (keys: method, method_params, segment_seconds, protocol_id) -> 202
- ``/v1/uploads``: resumable uploads, tus 1.0 (``services.api.tus``)
- ``GET /v1/jobs``, ``GET /v1/jobs/{id}`` (with signed media ``links``),
  ``GET /v1/jobs/{id}/alignment.{json,csv,vtt}`` (``?similarity=1`` adds the matrix to the
  JSON), ``GET /v1/jobs/{id}/video`` (HTTP Range)
- ``GET /v1/protocols``: per protocol of the caller's lab, which steps vary most across its
  recordings (``services.lab_report``); each job's alignment JSON carries its own
  ``deviations`` and each step the lab's usual range (``lab``)
- ``/-/healthz``; ``/jobs/{id}`` and ``/`` serve the viewer from ``services/static``.
  No ``/docs``, ``/redoc`` or ``/openapi.json``; the metrics are on their own port
  (``services.metrics.NodeMetrics``), never on this one.

Auth: ``Authorization: Bearer <lab token>``, never a query string (``?token=`` gets 401). A browser
``<video>``/``<track>`` element or download link cannot send headers, so the video and alignment
routes also take the short-lived signed links of ``GET /v1/jobs/{id}`` (``services.api.links``);
an expired, altered or other-job link gets 403. Another lab's job answers 404, exactly like a job
that does not exist.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from biovl_core.errors import BioVLError
from services import metrics
from services.api.corrections import add_correction_routes
from services.api.errors import HTTPProblem, problem_response
from services.api.hardening import Hardening, hardened_headers
from services.api.jobs import JobService
from services.api.links import SIGNATURE_PARAMS, LinkError, LinkSigner
from services.api.tus import register_tus_routes
from services.archive import JobFiles
from services.faults import fault_of
from services.lab_report import lab_protocols
from services.protocol_preview import register_protocol_preview

log = logging.getLogger("biovl.service")

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
ALIGNMENT_MEDIA = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}
VIDEO_MEDIA = {
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
    ".ts": "video/mp2t",
    ".mov": "video/quicktime",
}
DEEP_NESTING_MESSAGE = (
    "the JSON is nested too deeply to read; send a flat object or list (a protocol, "
    "annotations, options and corrections are at most a few levels deep)"
)
# the archived video never changes (the job id is its content hash): the browser may keep it
VIDEO_CACHE_CONTROL = "private, max-age=3600"


def create_app(service: JobService) -> FastAPI:
    """The FastAPI app serving ``service``."""
    app = FastAPI(
        title="BioVL aligner", version="1", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.service = service
    register_protocol_preview(app, service)
    register_tus_routes(app, service)
    links = LinkSigner.from_settings(service.settings)
    app.add_middleware(Hardening)  # added first: the request metrics below also count its 401s

    def media_job(request: Request, job_id: str, resource: str) -> JobFiles:
        """The job behind a media route: by its signed link (403 when invalid) or the bearer token."""
        query = request.query_params
        if not any(p in query for p in SIGNATURE_PARAMS):
            return service.job_of(service.lab_of(request), job_id)
        try:
            lab = links.verify(query, job_id, resource)
        except LinkError as exc:
            raise HTTPProblem(403, str(exc)) from None
        if lab not in service.tokens.labs:
            raise HTTPProblem(403, f"lab {lab!r} is no longer configured; ask the operator")
        return service.job_of(lab, job_id)

    @app.exception_handler(HTTPProblem)
    async def _problem(_: Request, exc: HTTPProblem) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(BioVLError)
    async def _biovl(_: Request, exc: BioVLError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "status": 422}, 422)

    @app.exception_handler(RecursionError)
    async def _too_deep(_: Request, exc: RecursionError) -> JSONResponse:
        return problem_response(HTTPProblem(422, DEEP_NESTING_MESSAGE))

    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        # Redis down or refusing writes (503), a full disk (507): named, with Retry-After
        fault = fault_of(exc)
        if fault is None:
            return await _unexpected(request, exc)
        log.warning("%s %s: %s (%r)", request.method, request.url.path, fault.message, exc)
        metrics.REQUEST_FAULTS.labels(kind="disk_full" if fault.status == 507 else "redis").inc()
        headers = {"Retry-After": str(fault.retry_after_s)}
        return problem_response(HTTPProblem(fault.status, fault.message, headers))

    app.add_exception_handler(redis.RedisError, _fault)
    app.add_exception_handler(OSError, _fault)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers this from its outermost middleware, outside Hardening: the
        # security headers are set here so that a 500 carries them too
        log.error("%s %s failed: %r", request.method, request.url.path, exc, exc_info=exc)
        body = {"error": "internal error; the operator's log has the details", "status": 500}
        return JSONResponse(body, 500, headers=hardened_headers(request.url.path))

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
        """Status, attempts, error and result summary of one job, and its signed media links."""
        jf = service.job_of(service.lab_of(request), job_id)
        body = service.summary(jf)
        body["links"] = links.links(jf.lab, jf.job_id)
        return body

    @app.get("/v1/jobs/{job_id}/alignment.{fmt}")
    def get_alignment(job_id: str, fmt: str, request: Request, similarity: int = 0) -> Response:
        """The newest alignment as JSON, CSV or WebVTT (bearer token or signed link)."""
        if fmt not in ALIGNMENT_MEDIA:
            raise HTTPProblem(404, f"unknown format {fmt!r}; use alignment.json, .csv or .vtt")
        jf = media_job(request, job_id, f"alignment.{fmt}")
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

    add_correction_routes(app, service)

    @app.get("/v1/protocols")
    def get_protocols(request: Request) -> dict[str, Any]:
        """The lab's protocols, each with its steps sorted by how much they vary."""
        return lab_protocols(service.archive, service.lab_of(request))

    @app.get("/v1/jobs/{job_id}/video")
    def get_video(job_id: str, request: Request) -> FileResponse:
        """The archived video, with HTTP Range support (bearer token or signed link)."""
        path = media_job(request, job_id, "video").video_path()
        return FileResponse(
            path,
            media_type=VIDEO_MEDIA.get(path.suffix, "application/octet-stream"),
            headers={"Cache-Control": VIDEO_CACHE_CONTROL},
        )

    @app.get("/-/healthz")
    @app.get("/v1/healthz")
    def healthz() -> dict[str, Any]:
        """Redis takes writes, the archive disk has room, queue depth (503 naming each problem;
        under Serve the proxy answers /-/healthz itself)."""
        problems = service.health_problems()
        if problems:
            raise HTTPProblem(
                503, "unhealthy: " + "; ".join(problems), {"Retry-After": "15"}
            ) from None
        return {"ok": True, "queue_depth": service.queue.depth()}

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
        return PlainTextResponse("BioVL aligner: POST /v1/jobs (see README.md)\n")

    if STATIC_DIR.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app

"""The HTTP routes (SPEC "Service") over a ``JobService``, with request metrics and the viewer pages.

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

import json
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from biovl_core.errors import BioVLError
from services import metrics
from services.api.corrections import add_correction_routes
from services.api.errors import HTTPProblem, problem_response
from services.api.jobs import JobService

log = logging.getLogger("biovl.service")

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
ALIGNMENT_MEDIA = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


def create_app(service: JobService) -> FastAPI:
    """The FastAPI app serving ``service``."""
    app = FastAPI(title="BioVL aligner", version="1", docs_url="/docs", redoc_url=None)
    app.state.service = service

    @app.exception_handler(HTTPProblem)
    async def _problem(_: Request, exc: HTTPProblem) -> JSONResponse:
        return problem_response(exc)

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

    add_correction_routes(app, service)

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
            metrics.sample_queue(service.queue)
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

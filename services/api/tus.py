"""Resumable uploads on the tus 1.0 protocol at ``/v1/uploads``: core (HEAD, PATCH), creation
(POST), termination (DELETE) and expiration, with the lab's bearer token.

Written here rather than taken from a tus server package: see docs/SECURITY.md ("Resumable
uploads") for the packages weighed and why none fit. What this module guarantees:

- the token is checked before a byte of a body is read; another lab's upload answers 404,
  exactly like one that does not exist;
- each PATCH is bounded in bytes (``tus_max_patch_bytes``), total time, idle time and average
  rate (``services.api.body``), holds one of its lab's upload slots, writes at the upload's
  offset under an exclusive lock (423 while another request writes it) and keeps whatever
  arrived before a hang-up or a timeout, so the client resumes from there;
- the sha256 is computed as the bytes arrive (``tus_store.Writer``);
- an upload not written for ``upload_expiry_s`` is removed with its bytes.

A finished upload becomes a job with ``POST /v1/jobs`` and the field ``video_upload`` (its id or
its URL), checked, probed and hashed as a direct upload is (``services.api.upload``).
"""

from __future__ import annotations

import base64
import binascii
from email.utils import formatdate
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from services import metrics
from services.api.body import BodyLimits, BodyReader
from services.api.errors import HTTPProblem
from services.api.tus_store import UploadBusy, UploadInfo, UploadStore

if TYPE_CHECKING:
    from services.api.jobs import JobService

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination,expiration"
UPLOADS_ROUTE = "/v1/uploads"
MAX_METADATA_BYTES = 4096
WRITE_BATCH_BYTES = 1024 * 1024
SWEEP_INTERVAL_S = 60.0
OFFSET_MEDIA_TYPE = "application/offset+octet-stream"


def tus_headers(info: UploadInfo | None = None) -> dict[str, str]:
    """Headers of every tus answer (with the upload's offset and expiry when given)."""
    headers = {"Tus-Resumable": TUS_VERSION}
    if info is not None:
        headers["Upload-Offset"] = str(info.offset)
        headers["Upload-Expires"] = formatdate(info.expires_at, usegmt=True)
    return headers


def _check_version(request: Request) -> None:
    """412 unless the client speaks tus 1.0.0."""
    if request.headers.get("tus-resumable") != TUS_VERSION:
        raise HTTPProblem(
            412,
            f"send 'Tus-Resumable: {TUS_VERSION}': this server speaks tus {TUS_VERSION} "
            "(use a tus client, e.g. tus-js-client or tuspy)",
            {"Tus-Version": TUS_VERSION, "Tus-Resumable": TUS_VERSION},
        )


def _parse_metadata(raw: str) -> dict[str, str]:
    """``Upload-Metadata: key base64,key base64`` -> {key: text} (400 when malformed)."""
    if len(raw.encode("latin-1", "replace")) > MAX_METADATA_BYTES:
        raise HTTPProblem(400, f"Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes")
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        key, _, value = pair.partition(" ")
        try:
            out[key] = base64.b64decode(value, validate=True).decode("utf-8") if value else ""
        except (binascii.Error, UnicodeDecodeError):
            raise HTTPProblem(400, f"Upload-Metadata {key!r} is not base64 of UTF-8 text") from None
    return out


def _length(request: Request, name: str) -> int:
    """A non-negative integer header (400 when missing or malformed)."""
    value = request.headers.get(name, "")
    if not value.isdigit():
        raise HTTPProblem(400, f"send the header {name} as a whole number of bytes")
    return int(value)


class TusUploads:
    """The tus routes of one ``JobService``."""

    def __init__(self, service: JobService) -> None:
        self.service = service
        self.settings = service.settings
        self.store: UploadStore = service.tus_store

    def _upload(self, lab: str, upload_id: str) -> UploadInfo:
        """The caller's upload, or 404 (also for another lab's: existence is not leaked)."""
        try:
            info = self.store.get(lab, upload_id)
        except ValueError:
            info = None
        if info is None:
            raise HTTPProblem(
                404,
                f"no upload {upload_id!r} for your lab (unknown, deleted, or expired after "
                f"{self.settings.upload_expiry_s / 3600:g} h without data); start a new upload",
                tus_headers(),
            )
        return info

    async def create(self, request: Request) -> Response:
        """POST: a new upload of ``Upload-Length`` bytes; 201 with its Location."""
        lab = self.service.lab_of(request)
        _check_version(request)
        s = self.settings
        if request.headers.get("upload-defer-length"):
            raise HTTPProblem(400, "send Upload-Length: this server needs the size up front")
        length = _length(request, "upload-length")
        if length == 0:
            raise HTTPProblem(400, "Upload-Length is 0: pick the recording file again")
        if length > s.max_video_bytes:
            raise HTTPProblem(
                413,
                f"the upload is {length} bytes; the limit is {s.max_video_bytes} bytes "
                "(max_video_bytes): split the recording or re-encode it at a lower bitrate",
                tus_headers(),
            )
        if request.headers.get("content-length", "0") not in ("", "0"):
            raise HTTPProblem(400, "POST creates an empty upload: send the bytes with PATCH")
        metadata = _parse_metadata(request.headers.get("upload-metadata", ""))
        await run_in_threadpool(self.store.sweep, SWEEP_INTERVAL_S)
        if self.store.open_count(lab) >= s.max_open_uploads_per_lab:
            raise HTTPProblem(
                429,
                f"your lab holds {s.max_open_uploads_per_lab} uploads "
                "(max_open_uploads_per_lab); delete unused ones (DELETE /v1/uploads/<id>) or "
                f"let them expire ({s.upload_expiry_s / 3600:g} h without data)",
            )
        info = await run_in_threadpool(self.store.create, lab, length, metadata)
        headers = tus_headers(info)
        headers["Location"] = f"{UPLOADS_ROUTE}/{info.id}"
        return Response(status_code=201, headers=headers)

    async def head(self, request: Request, upload_id: str) -> Response:
        """HEAD: where the upload stands (the offset to resume from)."""
        lab = self.service.lab_of(request)
        _check_version(request)
        info = await run_in_threadpool(self._upload, lab, upload_id)
        headers = tus_headers(info)
        headers.update({"Upload-Length": str(info.length), "Cache-Control": "no-store"})
        return Response(status_code=200, headers=headers)

    async def delete(self, request: Request, upload_id: str) -> Response:
        """DELETE (termination): the upload and its bytes are removed."""
        lab = self.service.lab_of(request)
        _check_version(request)
        await run_in_threadpool(self._upload, lab, upload_id)
        try:
            with self.store.locked(lab, upload_id):
                await run_in_threadpool(self.store.remove, lab, upload_id)
        except UploadBusy:
            raise self._busy(upload_id) from None
        return Response(status_code=204, headers=tus_headers())

    @staticmethod
    def _busy(upload_id: str) -> HTTPProblem:
        return HTTPProblem(
            423,
            f"upload {upload_id} is being written by another request; retry in a moment",
            {**tus_headers(), "Retry-After": "1"},
        )

    async def patch(self, request: Request, upload_id: str) -> Response:
        """PATCH (core): append the body at ``Upload-Offset``; 204 with the new offset."""
        lab = self.service.lab_of(request)
        _check_version(request)
        if request.headers.get("content-type", "").split(";")[0].strip() != OFFSET_MEDIA_TYPE:
            raise HTTPProblem(
                415, f"a PATCH body must be sent as Content-Type: {OFFSET_MEDIA_TYPE}"
            )
        offset = _length(request, "upload-offset")
        info = await run_in_threadpool(self._upload, lab, upload_id)
        self._check_offset(info, offset)
        with self.service.upload_slots.hold(lab):
            try:
                with self.store.locked(lab, upload_id):
                    info = await run_in_threadpool(self._upload, lab, upload_id)  # under lock
                    self._check_offset(info, offset)
                    info = await self._receive(request, info)
            except UploadBusy:
                raise self._busy(upload_id) from None
        return Response(status_code=204, headers=tus_headers(info))

    @staticmethod
    def _check_offset(info: UploadInfo, offset: int) -> None:
        if offset != info.offset:
            raise HTTPProblem(
                409,
                f"Upload-Offset {offset} is not where upload {info.id} stands ({info.offset} "
                "bytes received): ask with HEAD and resume from there",
                tus_headers(info),
            )

    async def _receive(self, request: Request, info: UploadInfo) -> UploadInfo:
        """Stream the body into the upload; whatever arrived is kept, even on a 408 or hang-up."""
        s = self.settings
        remaining = info.length - info.offset
        limits = BodyLimits(
            max_bytes=min(s.tus_max_patch_bytes, remaining),
            deadline_s=s.tus_patch_deadline_s,
            idle_timeout_s=s.upload_idle_timeout_s,
            min_rate_bps=s.upload_min_rate_bps,
            grace_s=s.upload_rate_grace_s,
            what="the PATCH body",
            fix=(
                f"send at most {min(s.tus_max_patch_bytes, remaining)} bytes per PATCH "
                f"(tus_max_patch_bytes {s.tus_max_patch_bytes}, {remaining} bytes left)"
            ),
        )
        body = BodyReader(request, limits)
        body.check_declared_length()
        writer = await run_in_threadpool(self.store.writer, info)
        start = writer.offset
        pending: list[bytes] = []
        size = 0
        complete = False
        try:
            async for chunk in body.chunks():
                pending.append(chunk)
                size += len(chunk)
                if size >= WRITE_BATCH_BYTES:
                    await run_in_threadpool(writer.write, b"".join(pending))
                    pending, size = [], 0
            complete = True
        finally:
            if pending:
                await run_in_threadpool(writer.write, b"".join(pending))
            written = writer.offset - start
            if info.interrupted and written:
                metrics.UPLOAD_RESUMPTIONS.inc()
            metrics.UPLOAD_BYTES.labels(kind="tus").inc(written)
            interrupted = not complete or info.interrupted and not written
            info = await run_in_threadpool(self.store.commit, info, writer, interrupted=interrupted)
        return info


def options_response() -> Response:
    """OPTIONS: what this server speaks (no token needed)."""
    return Response(
        status_code=204,
        headers={
            **tus_headers(),
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": TUS_EXTENSIONS,
        },
    )


def register_tus_routes(app: FastAPI, service: JobService) -> None:
    """Add the tus routes to ``app``."""
    tus = TusUploads(service)
    max_size = str(service.settings.max_video_bytes)

    @app.options(UPLOADS_ROUTE)
    def tus_options() -> Response:
        """The protocol version, extensions and the largest upload taken."""
        response = options_response()
        response.headers["Tus-Max-Size"] = max_size
        return response

    @app.post(UPLOADS_ROUTE, status_code=201)
    async def tus_create(request: Request) -> Response:
        """Create an upload (tus creation)."""
        return await tus.create(request)

    @app.head(UPLOADS_ROUTE + "/{upload_id}")
    async def tus_head(upload_id: str, request: Request) -> Response:
        """The upload's offset (tus core)."""
        return await tus.head(request, upload_id)

    @app.patch(UPLOADS_ROUTE + "/{upload_id}", status_code=204)
    async def tus_patch(upload_id: str, request: Request) -> Response:
        """Append bytes (tus core)."""
        return await tus.patch(request, upload_id)

    @app.delete(UPLOADS_ROUTE + "/{upload_id}", status_code=204)
    async def tus_delete(upload_id: str, request: Request) -> Response:
        """Remove the upload (tus termination)."""
        return await tus.delete(request, upload_id)


def upload_id_of(value: str) -> str:
    """The upload id in ``video_upload``: the bare id or an upload URL (``.../v1/uploads/<id>``)."""
    text = value.strip()
    tail = text.rstrip("/").rsplit("/", 1)[-1]
    prefix = text[: len(text) - len(tail)].rstrip("/")
    if prefix and not prefix.endswith(UPLOADS_ROUTE):
        raise ValueError(f"video_upload {value[:100]!r} is not an upload URL of this service")
    return tail

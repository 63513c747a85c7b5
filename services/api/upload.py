"""Reading and checking an upload: the multipart form, size limits, protocol, annotations,
options and the video probe; the checked files wait in the archive's temp folder."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from biovl_core.errors import AnnotationError, ProtocolError, VideoError
from services import metrics
from services.api.errors import HTTPProblem
from services.archive import Archive, annotations_ext
from services.groups import check_protocol_id
from services.settings import JOB_OPTION_KEYS, ServiceSettings

if TYPE_CHECKING:
    from biovl_core.protocol import Protocol


@dataclass
class Upload:
    """A checked submission; its video (and annotations) are still temp files of the archive."""

    video_tmp: Path
    video_sha256: str
    video_bytes: int
    video_filename: str | None
    protocol_text: str
    protocol_filename: str | None
    protocol: Protocol
    annotations_tmp: Path | None
    annotations_ext: str | None
    options: dict[str, Any]
    duration_s: float
    temps: list[Path] = field(default_factory=list)

    def discard(self) -> None:
        """Delete the temp files the archive did not take over."""
        for t in self.temps:
            t.unlink(missing_ok=True)
        self.temps.clear()


class UploadChecker:
    """Checks an upload against the settings' limits and stores its files in the archive's tmp."""

    def __init__(self, settings: ServiceSettings, archive: Archive) -> None:
        self.settings = settings
        self.archive = archive

    async def read_form(self, request: Request) -> FormData:
        """The multipart form (413 over the total size limit, 400 when it cannot be parsed)."""
        s = self.settings
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
            return await request.form(
                max_files=3, max_fields=8, max_part_size=s.max_protocol_bytes + 1
            )
        except Exception as exc:  # malformed multipart, too many parts, an oversize text field
            raise HTTPProblem(
                400,
                f"could not read the multipart form ({exc}); send fields video, protocol, "
                "annotations (optional), options (optional JSON)",
            ) from None

    async def check(self, form: FormData) -> Upload:
        """Every field checked in order (video, protocol, annotations, options, probe, aligner);
        the first problem is raised as an ``HTTPProblem`` and the temp files are removed."""
        temps: list[Path] = []
        try:
            video = form.get("video")
            if not isinstance(video, UploadFile):
                raise HTTPProblem(422, "missing the 'video' file field (multipart/form-data)")
            video_tmp, sha, nbytes = await self._store(
                video, self.settings.max_video_bytes, "video"
            )
            temps.append(video_tmp)
            protocol_text, protocol_name = await self._protocol_text(form.get("protocol"))
            protocol = self._protocol(protocol_text, protocol_name)
            ann_tmp, ann_ext = await self._annotations(form.get("annotations"), temps)
            options = self._options(form.get("options"))
            probe_start = time.perf_counter()
            info = await run_in_threadpool(self._probe, video_tmp, video.filename)
            metrics.STAGE_SECONDS.labels(stage="probe").observe(time.perf_counter() - probe_start)
            self._check_alignable(options, len(protocol.steps), info.duration_s)
        except BaseException:
            for t in temps:
                t.unlink(missing_ok=True)
            raise
        return Upload(
            video_tmp=video_tmp,
            video_sha256=sha,
            video_bytes=nbytes,
            video_filename=video.filename,
            protocol_text=protocol_text,
            protocol_filename=protocol_name,
            protocol=protocol,
            annotations_tmp=ann_tmp,
            annotations_ext=ann_ext,
            options=options,
            duration_s=info.duration_s,
            temps=temps,
        )

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

    @staticmethod
    def _protocol(text: str, filename: str | None) -> Protocol:
        """The parsed protocol (422 when it has no steps or cannot be read)."""
        from biovl_core.protocol import parse_protocol

        try:
            return parse_protocol(text, filename=filename)
        except ProtocolError as exc:
            raise HTTPProblem(422, f"protocol: {exc}") from None

    async def _annotations(self, field: Any, temps: list[Path]) -> tuple[Path | None, str | None]:
        """The optional annotations file, stored and parsed: (temp path, extension) or Nones."""
        if not isinstance(field, UploadFile):
            return None, None
        tmp, _, _ = await self._store(field, self.settings.max_annotations_bytes, "annotations")
        temps.append(tmp)
        ext = annotations_ext(field.filename)
        from biovl_core.formats import parse_annotations

        try:
            parse_annotations(tmp.read_bytes(), filename=field.filename)
        except AnnotationError as exc:
            raise HTTPProblem(422, f"annotations: {exc}") from None
        return tmp, ext

    def _options(self, raw: Any) -> dict[str, Any]:
        """Parse and check the ``options`` JSON (only JOB_OPTION_KEYS; method checked by aligning)."""
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
        unknown = sorted(set(options) - JOB_OPTION_KEYS)
        if unknown:
            raise HTTPProblem(
                422, f"options {unknown} cannot be set per job; allowed: {sorted(JOB_OPTION_KEYS)}"
            )
        if "protocol_id" in options:
            try:
                check_protocol_id(options["protocol_id"])
            except ValueError as exc:
                raise HTTPProblem(422, str(exc)) from None
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

    @staticmethod
    def _probe(path: Path, filename: str | None) -> Any:
        """``biovl_core.video.probe`` with the upload's name in the error (415 for non-videos)."""
        from biovl_core.video import probe

        try:
            return probe(path)
        except VideoError as exc:
            raise HTTPProblem(
                415,
                f"video {filename!r} cannot be read as a video: {str(exc).replace(str(path), 'upload')}",
            ) from None

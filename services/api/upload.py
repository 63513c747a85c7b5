"""Checking an upload: the streamed multipart form, size limits, protocol, annotations, options
and the video probe with its duration and segment limits; the checked files wait in the
archive's temp folder."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request

from biovl_core.errors import AnnotationError, ProtocolError, VideoError
from services import metrics
from services.api.body import BodyLimits, BodyReader
from services.api.errors import HTTPProblem
from services.api.form import (
    FormPart,
    MultipartSink,
    PartRule,
    StreamedForm,
    boundary_of,
    read_streamed_form,
)
from services.api.job_options import check_alignable, check_options
from services.api.tus_store import UploadStore
from services.archive import Archive, annotations_ext
from services.groups import spans_to_json
from services.settings import ServiceSettings

if TYPE_CHECKING:
    from biovl_core.protocol import Protocol
    from biovl_core.video import VideoInfo

FORM_OVERHEAD_BYTES = 1024 * 1024
"""Multipart headers and boundaries allowed on top of the fields' own limits."""


@dataclass
class Upload:
    """A checked submission; its video (and annotations) are still temp files of the archive."""

    video_tmp: Path
    video_sha256: str
    video_bytes: int
    video_filename: str | None
    video_ext: str  # from the probed container, never from the upload's name
    protocol_text: str
    protocol_filename: str | None
    protocol: Protocol
    annotations_tmp: Path | None
    annotations_ext: str | None
    annotation_spans: list[list[float] | None] | None  # matched to the steps at upload
    options: dict[str, Any]
    duration_s: float
    notes: list[str] = field(default_factory=list)  # what the check decided for the lab
    temps: list[Path] = field(default_factory=list)
    protocol_original: str | None = None  # the uploaded text, when the lab sent edited steps

    def discard(self) -> None:
        """Delete the temp files the archive did not take over."""
        for t in self.temps:
            t.unlink(missing_ok=True)
        self.temps.clear()


class UploadChecker:
    """Checks an upload against the settings' limits and stores its files in the archive's tmp."""

    def __init__(self, settings: ServiceSettings, archive: Archive, store: UploadStore) -> None:
        self.settings = settings
        self.archive = archive
        self.store = store

    def part_rules(self) -> dict[str, PartRule]:
        """The form's fields: each one's byte limit, storage and the fix when it is too big."""
        s = self.settings
        if s.max_direct_video_bytes < s.max_video_bytes:
            video = PartRule(
                s.max_direct_video_bytes,
                True,
                "send larger recordings as a resumable upload (tus, POST /v1/uploads; the "
                "upload form does) and name it in the field 'video_upload' (the operator's "
                "limit for direct uploads is max_direct_video_bytes)",
            )
        else:
            video = PartRule(
                s.max_video_bytes,
                True,
                "send a shorter recording or one re-encoded at a lower bitrate "
                "(the operator's limit is max_video_bytes)",
            )
        return {
            "video": video,
            "video_upload": PartRule(
                1024, False, "video_upload is the id or URL of a finished upload"
            ),
            "protocol": PartRule(
                s.max_protocol_bytes,
                False,
                "a protocol is plain text or JSON with one step per line; send only the steps "
                "(the operator's limit is max_protocol_bytes)",
            ),
            "annotations": PartRule(
                s.max_annotations_bytes,
                True,
                "send one row per step, step,start,end (the operator's limit is "
                "max_annotations_bytes)",
            ),
            "steps": PartRule(
                s.max_protocol_bytes,
                False,
                'steps is the edited step list as JSON {"title": ..., "steps": [...]}; send only '
                "the steps (the operator's limit is max_protocol_bytes)",
            ),
            "options": PartRule(
                s.max_options_bytes,
                False,
                'options is a small JSON object, e.g. {"method": "nw"} (the operator\'s limit '
                "is max_options_bytes)",
            ),
        }

    async def read_form(self, request: Request) -> StreamedForm:
        """The multipart form read as a stream: 413 the moment a field or the body is over its
        limit (Content-Length or chunked), 400 when it cannot be parsed or was cut off."""
        rules = self.part_rules()
        limit_total = sum(r.limit for r in rules.values()) + FORM_OVERHEAD_BYTES
        length = request.headers.get("content-length")
        s = self.settings
        if length and length.isdigit() and int(length) > limit_total:
            raise HTTPProblem(
                413,
                f"request body is {int(length)} bytes; the limit is {limit_total} bytes "
                f"(video {rules['video'].limit}, protocol and steps {s.max_protocol_bytes} each, "
                f"annotations {s.max_annotations_bytes}, options {s.max_options_bytes}); "
                f"{rules['video'].fix}",
            )
        sink = MultipartSink(
            boundary_of(request.headers.get("content-type"), sorted(rules)),
            rules,
            self.archive.temp_path,
        )
        body = BodyReader(
            request,
            BodyLimits(
                max_bytes=limit_total,
                deadline_s=s.upload_deadline_s,
                idle_timeout_s=s.upload_idle_timeout_s,
                min_rate_bps=s.upload_min_rate_bps,
                grace_s=s.upload_rate_grace_s,
                what="the upload",
                fix="send one video, one protocol and at most one annotations file",
            ),
        )
        return await read_streamed_form(
            body.chunks(), sink, batch_bytes=self.settings.upload_chunk_bytes
        )

    def small_body_limits(self, what: str, max_bytes: int, fix: str) -> BodyLimits:
        """The pace every small body (preview, correction) must keep: ``body_deadline_s``."""
        s = self.settings
        return BodyLimits(
            max_bytes=max_bytes,
            deadline_s=s.body_deadline_s,
            idle_timeout_s=min(s.upload_idle_timeout_s, s.body_deadline_s),
            min_rate_bps=s.upload_min_rate_bps,
            grace_s=min(s.upload_rate_grace_s, s.body_deadline_s),
            what=what,
            fix=fix,
        )

    async def read_protocol_form(self, request: Request) -> FormPart | None:
        """The ``protocol`` field of a small multipart form (the protocol preview), read as a
        stream under ``max_protocol_bytes`` and ``body_deadline_s``."""
        limit = self.settings.max_protocol_bytes
        fix = "a protocol is plain text or JSON with one step per line (max_protocol_bytes)"
        rules = {"protocol": PartRule(limit, False, fix)}
        try:
            boundary = boundary_of(
                request.headers.get("content-type"), ["protocol"], "POST /v1/protocol/preview"
            )
        except HTTPProblem:
            return None  # not multipart: no protocol field (the body is never read)
        sink = MultipartSink(boundary, rules, self.archive.temp_path)
        body = BodyReader(
            request, self.small_body_limits("the protocol", limit + FORM_OVERHEAD_BYTES, fix)
        )
        form = await read_streamed_form(
            body.chunks(), sink, batch_bytes=self.settings.upload_chunk_bytes
        )
        return form.get("protocol")

    def check(self, form: StreamedForm, lab: str) -> Upload:
        """Every field checked in order (video, protocol, edited steps, annotations, options,
        probe, probe limits, method); the first problem is raised as an ``HTTPProblem`` and the
        form's temp files are removed. Blocking (probe, parsing): the ingress runs it in a
        worker thread.

        With ``steps`` (the step list a lab edited in the upload form's preview) the job aligns
        those steps; the uploaded ``protocol`` text is kept as the original beside them."""
        try:
            if form.get("video_upload") is not None:
                form.parts["video"] = self._uploaded_video(form, lab)
            video = self._video_part(form.get("video"))
            steps_part = form.get("steps")
            original: str | None = None
            if steps_part is None:
                protocol_text, protocol_name = self._protocol_text(form.get("protocol"))
                protocol = self._protocol(protocol_text, protocol_name)
            else:
                if form.get("protocol") is not None:
                    original, protocol_name = self._protocol_text(form.get("protocol"))
                else:
                    protocol_name = "steps.json"
                protocol, protocol_text = edited_steps(steps_part, protocol_name)
            annotations, spans = self._annotations(form.get("annotations"), protocol.steps)
            options = check_options(self.settings, form.get("options"))
            assert video.path is not None
            probe_start = time.perf_counter()
            info = self._probe(video.path, video.filename)
            metrics.STAGE_SECONDS.labels(stage="probe").observe(time.perf_counter() - probe_start)
            video_ext = self._canonical_extension(info, video.filename)
            options, note = check_alignable(
                self.settings, options, len(protocol.steps), info.duration_s, video.filename
            )
        except BaseException:
            form.discard()
            raise
        return Upload(
            video_tmp=video.path,
            video_sha256=video.sha256,
            video_bytes=video.size,
            video_filename=video.filename,
            video_ext=video_ext,
            protocol_text=protocol_text,
            protocol_filename=protocol_name,
            protocol=protocol,
            annotations_tmp=annotations.path if annotations else None,
            annotations_ext=annotations_ext(annotations.filename) if annotations else None,
            annotation_spans=spans,
            options=options,
            duration_s=info.duration_s,
            notes=[note] if note else [],
            temps=form.temp_files(),
            protocol_original=original,
        )

    def _uploaded_video(self, form: StreamedForm, lab: str) -> FormPart:
        """The finished resumable upload named by ``video_upload``, linked into the archive's
        temp folder as if it had come in the form: its size and the sha256 computed while its
        bytes arrived (nothing reads it again to hash it)."""
        from services.api.tus import upload_id_of

        if form.get("video") is not None:
            raise HTTPProblem(422, "send either 'video' or 'video_upload', not both")
        named = form.parts.pop("video_upload").value.decode("utf-8", "replace")
        try:
            info = self.store.get(lab, upload_id_of(named))
        except ValueError as exc:
            raise HTTPProblem(422, f"video_upload: {exc}") from None
        if info is None:
            raise HTTPProblem(
                422,
                f"video_upload {named[:100]!r}: no such upload for your lab (unknown, deleted, "
                "or expired); upload the recording again",
            )
        if not info.complete or not info.sha256:
            raise HTTPProblem(
                409,
                f"upload {info.id} has {info.offset} of {info.length} bytes: resume it (HEAD, "
                "then PATCH from that offset) before naming it in video_upload",
            )
        tmp = self.archive.temp_path()
        try:
            os.link(self.store.data_path(lab, info.id), tmp)
        except FileNotFoundError:
            raise HTTPProblem(
                422, f"upload {info.id} was removed meanwhile; upload the recording again"
            ) from None
        return FormPart(
            name="video",
            filename=info.metadata.get("filename") or f"upload-{info.id}",
            size=info.length,
            sha256=info.sha256,
            path=tmp,
        )

    @staticmethod
    def _video_part(part: FormPart | None) -> FormPart:
        """The video file part (422 when missing, not a file, or empty)."""
        if part is None or not part.is_file:
            raise HTTPProblem(
                422,
                "missing the 'video' file field (multipart/form-data), or 'video_upload' naming "
                "a finished resumable upload (POST /v1/uploads)",
            )
        if part.size == 0:
            raise HTTPProblem(
                422,
                f"video {part.filename!r} is empty (0 bytes): the upload carried no data; "
                "pick the recording file again",
            )
        return part

    @staticmethod
    def _protocol_text(part: FormPart | None) -> tuple[str, str | None]:
        """The protocol from a file or text field (422 when missing or not UTF-8)."""
        if part is None:
            raise HTTPProblem(422, "missing the 'protocol' field: a text file or a text value")
        try:
            return part.value.decode("utf-8-sig"), part.filename
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

    @staticmethod
    def _annotations(
        part: FormPart | None, steps: list[str]
    ) -> tuple[FormPart | None, list[list[float] | None] | None]:
        """The optional annotations part, parsed and matched to the protocol's steps once, here
        (linear: ``annotations_to_spans``); 422 when it cannot be read or does not fit."""
        if part is None:
            return None, None
        from biovl_core.io import annotations_to_spans, parse_annotations

        assert part.path is not None
        try:
            rows = parse_annotations(part.path.read_bytes(), filename=part.filename)
            spans = annotations_to_spans(rows, steps)
        except AnnotationError as exc:
            raise HTTPProblem(422, f"annotations: {exc}") from None
        return part, spans_to_json(spans)

    @staticmethod
    def _probe(path: Path, filename: str | None) -> VideoInfo:
        """``biovl_core.video.info`` with the upload's name in the error (415 for non-videos)."""
        from biovl_core.video import probe

        try:
            return probe(path)
        except VideoError as exc:
            raise HTTPProblem(
                415,
                f"video {filename!r} cannot be read as a video: {str(exc).replace(str(path), 'upload')}",
            ) from None

    @staticmethod
    def _canonical_extension(info: VideoInfo, filename: str | None) -> str:
        """The archive extension from the probed container (415 for a container not allowed)."""
        try:
            return info.canonical_extension
        except ValueError as exc:
            raise HTTPProblem(415, f"video {filename!r}: {exc}") from None


def edited_steps(part: FormPart, protocol_name: str | None) -> tuple[Protocol, str]:
    """The ``steps`` field: (the protocol it gives, the canonical JSON to archive and align).

    It is JSON ``{"title": ..., "steps": [...]}`` (or a bare list), each step a string or
    ``{"text", "notes", "details"}``; without a title the uploaded protocol's name gives one."""
    from biovl_core.protocol import parse_protocol

    shape = 'send the edited steps as JSON {"title": "...", "steps": [{"text": "..."}, ...]}'
    if part.is_file:
        raise HTTPProblem(422, f"steps must be a JSON text field, not a file; {shape}")
    try:
        text = part.value.decode("utf-8-sig")
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPProblem(422, f"steps is not valid JSON ({exc}); {shape}") from None
    if not isinstance(data, dict | list):
        raise HTTPProblem(422, f"steps must be a JSON object or list; {shape}")
    try:
        protocol = parse_protocol(text, filename="steps.json", split_verbs=False)
    except ProtocolError as exc:
        raise HTTPProblem(422, f"{exc}; {shape}") from None
    title = data.get("title") if isinstance(data, dict) else None
    protocol.title = title or Path(protocol_name or "protocol").stem
    canonical = {
        "title": protocol.title,
        "steps": [
            {"text": t, "notes": n, "details": d}
            for t, n, d in zip(protocol.steps, protocol.notes, protocol.details, strict=True)
        ],
    }
    return protocol, json.dumps(canonical, ensure_ascii=False, indent=1) + "\n"

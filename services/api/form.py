"""Reading a multipart upload as a stream: python-multipart's parser routes each part to a temp
file or a small buffer, and every size limit is enforced while the bytes arrive, so a body with
or without Content-Length never costs more than its limits in disk or one read batch in memory."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from services.api.errors import HTTPProblem

MAX_PARTS = 8
"""More parts than this is not a form this API defines."""


@dataclass(frozen=True)
class PartRule:
    """How one form field is read: its byte limit, where it goes, and what to say when it is too big."""

    limit: int
    to_disk: bool
    fix: str  # what the client can do when the field is over its limit


@dataclass
class FormPart:
    """One received field: its bytes (in memory) or its temp file, with size, digest and filename."""

    name: str
    filename: str | None
    size: int = 0
    sha256: str = ""
    path: Path | None = None
    value: bytes = b""

    @property
    def is_file(self) -> bool:
        """True when the client sent it as a file (``filename=`` in its Content-Disposition)."""
        return self.filename is not None


@dataclass
class StreamedForm:
    """The parts of one upload by field name; ``discard`` removes the temp files still held."""

    parts: dict[str, FormPart] = field(default_factory=dict)

    def get(self, name: str) -> FormPart | None:
        """The part called ``name``, if it was sent."""
        return self.parts.get(name)

    def temp_files(self) -> list[Path]:
        """Temp files of the parts kept on disk."""
        return [p.path for p in self.parts.values() if p.path is not None]

    def discard(self) -> None:
        """Delete every temp file of this form."""
        for path in self.temp_files():
            path.unlink(missing_ok=True)


def too_large(name: str, limit: int, fix: str) -> HTTPProblem:
    """The 413 of a field over its limit: the field, the limit and the fix."""
    return HTTPProblem(
        413,
        f"'{name}' is larger than the limit of {limit} bytes ({limit / 1024 / 1024:.1f} MiB); {fix}",
    )


class MultipartSink:
    """Feeds body bytes to the streaming parser and stores each part by its field's rule.

    Synchronous (the ingress calls it in a worker thread): part data goes straight to its temp
    file or buffer, and a part over its limit raises a 413 at once, mid-stream.
    """

    def __init__(
        self, boundary: bytes, rules: dict[str, PartRule], temp_path: Callable[[], Path]
    ) -> None:
        self.rules = rules
        self.temp_path = temp_path
        self.form = StreamedForm()
        self.complete = False
        self._headers: dict[str, str] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._part: FormPart | None = None
        self._rule: PartRule | None = None
        self._file: IO[bytes] | None = None
        self._buffer = bytearray()
        self._digest = hashlib.sha256()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, data: bytes) -> None:
        """Parse the next bytes of the body (400 when they are not multipart)."""
        try:
            self._parser.write(data)
        except MultipartParseError as exc:
            raise HTTPProblem(
                400,
                f"could not read the multipart form ({exc}); send multipart/form-data with "
                f"fields {sorted(self.rules)}",
            ) from None

    def finish(self) -> StreamedForm:
        """The form once the body has ended (400 when its closing boundary never came)."""
        self._parser.finalize()
        if not self.complete:
            raise HTTPProblem(
                400,
                "the multipart body ended before its closing boundary (the upload was cut off); "
                "send it again",
            )
        return self.form

    def abort(self) -> None:
        """Close and delete everything written so far."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._part is not None and self._part.path is not None:
            self._part.path.unlink(missing_ok=True)
        self.form.discard()

    # ---- parser callbacks ---------------------------------------------------------------
    def _part_begin(self) -> None:
        if len(self.form.parts) >= MAX_PARTS:
            raise HTTPProblem(
                400, f"the form has more than {MAX_PARTS} parts; send fields {sorted(self.rules)}"
            )
        self._headers = {}

    def _header_end(self) -> None:
        name = bytes(self._header_field).decode("latin-1").strip().lower()
        self._headers[name] = bytes(self._header_value).decode("latin-1").strip()
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if disposition != b"form-data" or name not in self.rules:
            raise HTTPProblem(
                400,
                f"unexpected form field {name!r}; this API takes fields {sorted(self.rules)}",
            )
        if name in self.form.parts:
            raise HTTPProblem(400, f"the form sends '{name}' twice; send each field once")
        raw_filename = params.get(b"filename")
        filename = raw_filename.decode("utf-8", "replace") if raw_filename is not None else None
        self._part = FormPart(name=name, filename=filename)
        self._rule = self.rules[name]
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        if self._rule.to_disk:
            self._part.path = self.temp_path()
            self._file = open(self._part.path, "wb")  # noqa: SIM115 (closed in _part_end / abort)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part, rule = self._part, self._rule
        assert part is not None and rule is not None
        chunk = data[start:end]
        part.size += len(chunk)
        if part.size > rule.limit:
            raise too_large(part.name, rule.limit, rule.fix)
        self._digest.update(chunk)
        if self._file is not None:
            self._file.write(chunk)
        else:
            self._buffer.extend(chunk)

    def _part_end(self) -> None:
        part = self._part
        assert part is not None
        if self._file is not None:
            self._file.close()
            self._file = None
        part.sha256 = self._digest.hexdigest()
        part.value = bytes(self._buffer)
        self.form.parts[part.name] = part
        self._part = None

    def _end(self) -> None:
        self.complete = True


def boundary_of(content_type: str | None, fields: list[str], route: str = "POST /v1/jobs") -> bytes:
    """The multipart boundary of a Content-Type header (415 for any other body)."""
    kind, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise HTTPProblem(
            415,
            f"{route} takes multipart/form-data (fields {fields}), got Content-Type "
            f"{content_type!r}; e.g. curl -F video=@rec.mp4 -F protocol=@protocol.txt",
        )
    return boundary


async def read_streamed_form(
    chunks: AsyncIterator[bytes], sink: MultipartSink, *, batch_bytes: int
) -> StreamedForm:
    """Feed the body to ``sink`` in batches of about ``batch_bytes`` (parsing and disk writes in
    a worker thread, off the event loop); ``chunks`` enforces the body's cap and pace
    (``services.api.body.BodyReader``), ``sink`` each field's limit."""
    pending: list[bytes] = []
    pending_bytes = 0
    try:
        async for chunk in chunks:
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= batch_bytes:
                await run_in_threadpool(sink.feed, b"".join(pending))
                pending, pending_bytes = [], 0
        if pending:
            await run_in_threadpool(sink.feed, b"".join(pending))
        return sink.finish()
    except BaseException:
        sink.abort()
        raise

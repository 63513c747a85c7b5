"""``POST /v1/protocol/preview``: the steps the service would align, before a job is submitted.

The upload form shows this preview (steps, source lines, notes) so a lab can check how its
protocol was read; the parser is the one the worker runs, so the preview is what gets aligned.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from biovl_core.errors import ProtocolError
from biovl_core.protocol import parse_protocol

PREVIEW_ROUTE = "/v1/protocol/preview"


def register_protocol_preview(app: FastAPI, service: Any) -> None:
    """Add the preview route to ``app``; callers authenticate as for every job route."""

    @app.post(PREVIEW_ROUTE)
    async def preview_protocol(request: Request) -> JSONResponse:
        """Parse an uploaded protocol (multipart field ``protocol``): its title, steps and notes."""
        lab = service.lab_of(request)
        with service.body_slots.hold(lab):  # read as a stream: byte cap, deadline, rate
            field = await service.uploads.read_protocol_form(request)
        if field is None or not field.is_file and not field.value.strip():
            return _problem(422, 'no protocol: send the protocol file as the form field "protocol"')
        data, name = field.value, field.filename or "protocol.txt"
        try:
            protocol = parse_protocol(data, filename=name)
        except ProtocolError as exc:
            return _problem(422, str(exc))
        return JSONResponse({"filename": name, **protocol.to_dict()})


def _problem(status: int, message: str) -> JSONResponse:
    """An error body shaped like the other routes' ({"error", "status"})."""
    return JSONResponse({"error": message, "status": status}, status)

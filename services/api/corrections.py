"""Corrections from the viewer: ``PUT /v1/jobs/{id}/annotations`` stores a new annotation version
(who and when) that the recording's group learns from; ``GET`` answers the one in force.

Body of the PUT: a JSON list with one entry per protocol step, ``[start_s, end_s]`` or ``null``
(the step was not performed). Lab-scoped like every job route: another lab's job answers 404.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request

from services.api.body import BodyReader
from services.api.errors import HTTPProblem
from services.api.jobs import JobService
from services.archive import JobFiles
from services.groups import (
    CorrectionError,
    Recording,
    check_correction,
    correction_versions,
    latest_correction,
    save_correction,
)

MAX_CORRECTION_BYTES = 256 * 1024


def _recording(service: JobService, request: Request, job_id: str) -> tuple[str, Recording]:
    """(caller's lab, its job as a group recording) or 404."""
    lab = service.lab_of(request)
    jf: JobFiles = service.job_of(lab, job_id)
    return lab, Recording.of(jf)


def _answer(rec: Recording) -> dict[str, Any]:
    """The annotation in force: the latest correction, else the uploaded annotations."""
    spans, corrected = rec.annotation()
    latest = latest_correction(rec.jf) if corrected else None
    return {
        "job_id": rec.jf.job_id,
        "steps": rec.steps,
        "spans": None if spans is None else [None if s is None else list(s) for s in spans],
        "source": "correction" if corrected else ("upload" if spans is not None else None),
        "version": latest["version"] if latest else 0,
        "versions": correction_versions(rec.jf),
        "lab": latest["lab"] if latest else None,
        "saved_at": latest["saved_at"] if latest else None,
        "protocol_key": rec.key,
    }


def add_correction_routes(app: FastAPI, service: JobService) -> None:
    """Register the annotation routes on ``app``."""

    @app.get("/v1/jobs/{job_id}/annotations")
    def get_annotations(job_id: str, request: Request) -> dict[str, Any]:
        """The annotation the recording's group uses: its latest correction, else its upload."""
        _, rec = _recording(service, request, job_id)
        return _answer(rec)

    @app.put("/v1/jobs/{job_id}/annotations")
    async def put_annotations(job_id: str, request: Request) -> dict[str, Any]:
        """Save corrected spans (one per step, null = not performed) as a new version."""
        lab, rec = _recording(service, request, job_id)
        limits = service.uploads.small_body_limits(
            "a correction", MAX_CORRECTION_BYTES, "send one [start_s, end_s] or null per step"
        )
        with service.body_slots.hold(lab):  # read as a stream: byte cap, deadline, rate
            raw = await BodyReader(request, limits).read()
        try:
            body = json.loads(raw)
        except RecursionError:
            raise HTTPProblem(422, "the body is nested too deeply; send a list of spans") from None
        except ValueError as exc:
            raise HTTPProblem(422, f"the body is not JSON ({exc}); send a list of spans") from None
        duration = float(rec.record.get("duration_s") or 0.0)
        try:
            spans = check_correction(body, rec.steps, duration)
        except CorrectionError as exc:
            raise HTTPProblem(422, str(exc)) from None
        save_correction(rec.jf, spans, rec.steps, lab)
        return _answer(rec)

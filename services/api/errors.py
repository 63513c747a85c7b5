"""API errors: an ``HTTPProblem`` is answered as ``{"error": message, "status": code}``."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class HTTPProblem(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def problem_response(exc: HTTPProblem) -> JSONResponse:
    """The JSON answer of an ``HTTPProblem``."""
    return JSONResponse(
        {"error": exc.message, "status": exc.status}, exc.status, headers=exc.headers
    )

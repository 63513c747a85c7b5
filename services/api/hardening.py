"""What every HTTP answer carries and every request is refused for, whatever the route: browser
security headers, ``Cache-Control: private`` on lab data, and no lab token in a query string."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import MutableHeaders

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # frame-ancestors is ignored in a <meta> CSP: the header is what stops framing
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
LAB_DATA_PREFIX = "/v1/"
LAB_DATA_CACHE_CONTROL = "private, no-store"
QUERY_TOKEN_PARAMS = frozenset({"token", "access_token"})
QUERY_TOKEN_MESSAGE = (
    "the lab token is not accepted in a URL (it would be kept in browser history and proxy "
    "logs): send it as 'Authorization: Bearer <lab token>'; for <video>, <track> and download "
    "links use the signed links of GET /v1/jobs/{id} ('links')"
)


def hardened_headers(path: str) -> dict[str, str]:
    """The headers ``Hardening`` adds to an answer on ``path`` (for answers made outside it)."""
    headers = dict(SECURITY_HEADERS)
    if path.startswith(LAB_DATA_PREFIX):
        headers["Cache-Control"] = LAB_DATA_CACHE_CONTROL
    return headers


def _has_query_token(query_string: bytes) -> bool:
    """True when the query string names a lab-token parameter."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return any(name.lower() in QUERY_TOKEN_PARAMS for name, _ in pairs)


class Hardening:
    """ASGI middleware: 401 for ``?token=``; security headers on every response, and
    ``Cache-Control: private, no-store`` on ``/v1/`` answers that set no Cache-Control."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lab_data = scope["path"].startswith(LAB_DATA_PREFIX)

        async def send_hardened(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if lab_data:
                    headers.setdefault("Cache-Control", LAB_DATA_CACHE_CONTROL)
            await send(message)

        if _has_query_token(scope.get("query_string", b"")):
            await _refuse_query_token(send_hardened)
            return
        await self.app(scope, receive, send_hardened)


async def _refuse_query_token(send: Any) -> None:
    """Answer 401 with the fix (the body has the API's error shape)."""
    body = json.dumps({"error": QUERY_TOKEN_MESSAGE, "status": 401}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"www-authenticate", b"Bearer"),
                (b"cache-control", LAB_DATA_CACHE_CONTROL.encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

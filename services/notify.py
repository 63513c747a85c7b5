"""Job-end notifications: a signed JSON POST to the lab's webhook, retried with backoff, recorded on the job.

Webhook URLs are registered per lab by the operator (``webhooks_file`` in the settings), never
per job, so no upload can aim the service at an internal address. Each delivery carries

    X-BioVL-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the lab's secret>

so a receiver can check both who sent it and when (``verify`` refuses old timestamps: a replay
of a captured request is spotted). Receivers should also de-duplicate on ``X-BioVL-Delivery``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from services.settings import read_mapping_file

log = logging.getLogger("biovl.notify")

SIGNATURE_HEADER = "X-BioVL-Signature"
MIN_SECRET_CHARS = 16
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Webhook:
    """One lab's registered receiver."""

    url: str
    secret: str


def load_webhooks(path: str | Path | None) -> dict[str, Webhook]:
    """``{lab: Webhook}`` from a JSON or YAML file ``{lab: {"url": ..., "secret": ...}}``."""
    if not path:
        return {}
    path = Path(path)
    try:
        data = read_mapping_file(path, "lab -> {url, secret}")
    except OSError as exc:
        raise ValueError(
            f"{path}: cannot read the webhooks file ({exc}); fix webhooks_file"
        ) from exc
    hooks: dict[str, Webhook] = {}
    for lab, entry in data.items():
        if not isinstance(entry, Mapping) or not {"url", "secret"} <= set(entry):
            raise ValueError(f"{path}: lab {lab!r} needs both 'url' and 'secret'")
        url, secret = str(entry["url"]), str(entry["secret"])
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{path}: lab {lab!r}: {url!r} is not an http(s) URL")
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"{path}: lab {lab!r}: the secret is shorter than {MIN_SECRET_CHARS} characters; "
                "generate one with `openssl rand -hex 32`"
            )
        hooks[str(lab)] = Webhook(url, secret)
    return hooks


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """Whether ``header`` signs ``body`` under ``secret`` within ``tolerance_s`` of ``now``."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)


def job_summary(record: Mapping[str, Any], event: str) -> dict[str, Any]:
    """The JSON a lab receives when its job ends (no file paths, no other lab's data)."""
    keys = ("job_id", "lab", "status", "version", "error", "attempts", "video_filename")
    return {"event": event, "sent_at": time.time(), **{k: record.get(k) for k in keys}}


class Notifier:
    """Delivers job-end notifications in a background thread, with retries and exponential backoff."""

    def __init__(
        self,
        webhooks: Mapping[str, Webhook],
        *,
        attempts: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 10.0,
        max_workers: int = 2,
    ) -> None:
        self.webhooks = dict(webhooks)
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="notify")

    def submit(
        self,
        lab: str,
        payload: Mapping[str, Any],
        on_done: Callable[[dict[str, Any]], None] | None = None,
    ) -> Future[dict[str, Any]] | None:
        """Deliver ``payload`` to ``lab``'s webhook in the background; None when it has none."""
        hook = self.webhooks.get(lab)
        if hook is None:
            return None

        def run() -> dict[str, Any]:
            record = self.deliver(hook, payload)
            if on_done is not None:
                try:
                    on_done(record)
                except Exception:  # recording must never kill the delivery thread
                    log.exception("could not record the delivery for lab %s", lab)
            return record

        return self._pool.submit(run)

    def deliver(self, hook: Webhook, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``payload`` until a 2xx, a non-retryable answer or the last attempt; the record."""
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        delivery = uuid.uuid4().hex
        tries: list[dict[str, Any]] = []
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
            for attempt in range(1, self.attempts + 1):
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": "biovl-aligner-webhook/1",
                    "X-BioVL-Event": str(payload.get("event", "job.ended")),
                    "X-BioVL-Delivery": delivery,
                    SIGNATURE_HEADER: sign(hook.secret, int(time.time()), body),
                }
                started = time.time()
                try:
                    status = client.post(hook.url, content=body, headers=headers).status_code
                    tries.append({"at": started, "status": status})
                    if 200 <= status < 300:
                        return {"delivery": delivery, "delivered": True, "attempts": tries}
                    if status not in RETRY_STATUSES:
                        break
                except httpx.HTTPError as exc:
                    tries.append({"at": started, "error": f"{type(exc).__name__}: {exc}"})
                if attempt < self.attempts:
                    delay = self.backoff_s * 2 ** (attempt - 1)
                    time.sleep(delay * (0.5 + random.random() / 2))
        log.warning(
            "webhook delivery %s to %s failed after %d tries", delivery, hook.url, len(tries)
        )
        return {"delivery": delivery, "delivered": False, "attempts": tries}

    def close(self, wait: bool = True) -> None:
        """Stop accepting deliveries; wait for those under way."""
        self._pool.shutdown(wait=wait)

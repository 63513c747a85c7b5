"""Job-end webhooks against a real HTTP receiver on 127.0.0.1: signature, replay window, retries."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.notify import (
    SIGNATURE_HEADER,
    Notifier,
    Webhook,
    job_summary,
    load_webhooks,
    sign,
    verify,
)

SECRET = "0123456789abcdef0123456789abcdef"


class Receiver:
    """A webhook receiver that answers a scripted list of statuses, then 200."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    r = Receiver(getattr(request, "param", []))
    yield r
    r.close()


def _notifier(url: str, **kw: Any) -> Notifier:
    return Notifier({"lab-a": Webhook(url, SECRET)}, backoff_s=0.01, **kw)


@pytest.mark.parametrize("receiver", [[503, 500]], indirect=True)
def test_delivery_is_signed_retried_and_recorded(receiver: Receiver) -> None:
    recorded: list[dict[str, Any]] = []
    notifier = _notifier(receiver.url)
    payload = job_summary({"job_id": "j1", "lab": "lab-a", "status": "succeeded"}, "job.succeeded")
    record = notifier.submit("lab-a", payload, on_done=recorded.append).result(timeout=30)
    notifier.close()
    assert record["delivered"] is True
    assert [t["status"] for t in record["attempts"]] == [503, 500, 200]
    assert recorded == [record]
    assert len(receiver.requests) == 3
    last = receiver.requests[-1]
    assert json.loads(last["body"])["job_id"] == "j1"
    assert verify(SECRET, last["headers"][SIGNATURE_HEADER], last["body"])
    assert not verify(
        "another-secret-of-some-length", last["headers"][SIGNATURE_HEADER], last["body"]
    )
    assert not verify(SECRET, last["headers"][SIGNATURE_HEADER], last["body"] + b" ")
    # One delivery id across the retries, so the receiver can de-duplicate.
    assert len({r["headers"]["X-BioVL-Delivery"] for r in receiver.requests}) == 1


@pytest.mark.parametrize("receiver", [[400]], indirect=True)
def test_a_client_error_is_not_retried(receiver: Receiver) -> None:
    notifier = _notifier(receiver.url)
    record = notifier.submit("lab-a", {"event": "job.dead"}).result(timeout=30)
    notifier.close()
    assert record["delivered"] is False
    assert [t["status"] for t in record["attempts"]] == [400]


def test_an_unreachable_receiver_is_retried_then_recorded_as_failed() -> None:
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notifier = _notifier(f"http://127.0.0.1:{port}/hook", attempts=3)
    record = notifier.submit("lab-a", {"event": "job.succeeded"}).result(timeout=30)
    notifier.close()
    assert record["delivered"] is False
    assert len(record["attempts"]) == 3 and all("error" in t for t in record["attempts"])


def test_labs_without_a_webhook_are_not_notified() -> None:
    notifier = _notifier("http://127.0.0.1:9/never")
    assert notifier.submit("lab-b", {"event": "job.succeeded"}) is None
    notifier.close()


def test_replayed_signature_is_refused_after_the_window() -> None:
    body = b'{"job_id":"j1"}'
    old = int(time.time()) - 3600
    assert not verify(SECRET, sign(SECRET, old, body), body)
    assert verify(SECRET, sign(SECRET, old, body), body, now=old + 10)
    assert not verify(SECRET, "garbage", body)


def test_webhooks_file_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "hooks.json"
    good.write_text(json.dumps({"lab-a": {"url": "https://lab-a.example/hook", "secret": SECRET}}))
    assert load_webhooks(good) == {"lab-a": Webhook("https://lab-a.example/hook", SECRET)}
    assert load_webhooks(None) == {}
    for entry, message in [
        ({"url": "file:///etc/passwd", "secret": SECRET}, "not an http"),
        ({"url": "https://x.example/h", "secret": "short"}, "shorter than"),
        ({"url": "https://x.example/h"}, "needs both"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"lab-a": entry}))
        with pytest.raises(ValueError, match=message):
            load_webhooks(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_webhooks(tmp_path / "missing.json")

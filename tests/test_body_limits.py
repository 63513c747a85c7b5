"""Every route that reads a body streams it under a byte cap, a deadline and a minimum rate: the
correction PUT and the protocol preview (issue 20: a 1 GiB chunked PUT cost the ingress 2 GiB
before its 413; 1 GiB into the preview went to /tmp; stalled previews held the ingress forever).

The ingress runs in its own uvicorn process; the clients write by hand, so a test sees how much
the server read before it answered.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import service_fixtures as sf
from tests.service_fixtures import AUTH_A, TOKENS
from tests.test_hostile_uploads import _server_settings, serve_in_subprocess

checkpoint, recording = sf.checkpoint, sf.recording

MiB = 1024 * 1024
pytestmark = pytest.mark.slow


class RawRequest:
    """A chunked request written by hand: ``send`` until the server answers."""

    def __init__(self, port: int, head: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(head.encode())
        self.sent = 0

    def answered(self) -> bool:
        import select

        return bool(select.select([self.sock], [], [], 0)[0])

    def send_chunk(self, data: bytes) -> bool:
        if self.answered():
            return False
        try:
            self.sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return False
        self.sent += len(data)
        return True

    def response(self) -> tuple[int, dict[str, Any]]:
        resp = http.client.HTTPResponse(self.sock)
        resp.begin()
        return resp.status, json.loads(resp.read() or b"{}")

    def close(self) -> None:
        self.sock.close()


def _head(method: str, path: str, content_type: str) -> str:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKENS['lab-a']}\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )


def test_oversize_bodies_are_refused_while_reading_and_stalled_ones_cut_off(
    tmp_path: Path, redis_url: str, checkpoint: Path, recording: Path
) -> None:
    settings = _server_settings(tmp_path, redis_url, checkpoint, body_deadline_s=3.0)
    piece = b"[" * (64 * 1024)
    with serve_in_subprocess(settings) as server:
        files, data = sf.upload(recording)
        job = httpx.post(
            f"{server.base}/v1/jobs", files=files, data=data, headers=AUTH_A, timeout=120
        )
        job_id = job.json()["job_id"]
        # 64 MiB into a correction (limit 256 KiB): answered once the limit is passed
        put = RawRequest(server.port, _head("PUT", f"/v1/jobs/{job_id}/annotations", "text/json"))
        while put.sent < 64 * MiB and put.send_chunk(piece):
            pass
        status, body = put.response()
        put.close()
        assert status == 413 and "a correction is larger than 262144 bytes" in body["error"]
        assert put.sent < 16 * MiB, f"the server read {put.sent} bytes before answering"
        # the same into the protocol preview (limit max_protocol_bytes + the form's overhead)
        boundary = "b0undary"
        head = _head("POST", "/v1/protocol/preview", f"multipart/form-data; boundary={boundary}")
        preview = RawRequest(server.port, head)
        preview.send_chunk(
            f'--{boundary}\r\nContent-Disposition: form-data; name="protocol"; '
            'filename="p.txt"\r\n\r\n'.encode()
        )
        while preview.sent < 64 * MiB and preview.send_chunk(b"1. Mix.\n" * 8192):
            pass
        status, body = preview.response()
        preview.close()
        # the form's field limit or the body's cap, whichever the chunks reach first
        assert status == 413, body
        assert re.search(r"('protocol'|the protocol) is larger than", body["error"]), body
        assert preview.sent < 16 * MiB, preview.sent
        # a preview that stops sending is cut off at body_deadline_s, not held
        stalled = RawRequest(server.port, head)
        stalled.send_chunk(f"--{boundary}\r\n".encode())
        status, body = stalled.response()
        stalled.close()
        assert status == 408 and "did not arrive within 3 s" in body["error"], body
        assert list(server.tmp_dir.iterdir()) == []
        assert httpx.get(f"{server.base}/v1/healthz", timeout=60).status_code == 200

"""Resumable uploads (tus 1.0 at /v1/uploads) against the real ingress (FastAPI app, real Redis,
real probe), and the pace every body must keep: lab isolation, offsets and resumption after a
hang-up, PATCH caps, expiry, termination, ``video_upload`` jobs hashed once, per-lab slots.

The raw-socket tests run the ingress in its own uvicorn process, so a hang-up is a real one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.api import JobService, create_app
from tests import service_fixtures as sf
from tests.service_fixtures import AUTH_A, AUTH_B, TOKENS
from tests.test_hostile_uploads import (
    THREE_STEPS,
    RawUpload,
    _server_settings,
    job_parts,
    multipart,
    serve_in_subprocess,
)

checkpoint, recording, runner, make_env = sf.checkpoint, sf.recording, sf.runner, sf.make_env

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = {"Content-Type": "application/offset+octet-stream"}


def _meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def _create(client: Any, length: int, auth: dict[str, str] = AUTH_A, **kw: Any) -> Any:
    headers = {**auth, **TUS, "Upload-Length": str(length), "Upload-Metadata": _meta(**kw)}
    return client.post("/v1/uploads", headers=headers)


def _patch(client: Any, url: str, offset: int, data: bytes, auth: dict[str, str] = AUTH_A) -> Any:
    headers = {**auth, **TUS, **OFFSET_TYPE, "Upload-Offset": str(offset)}
    return client.patch(url, content=data, headers=headers)


def _head(client: Any, url: str, auth: dict[str, str] = AUTH_A) -> Any:
    return client.head(url, headers={**auth, **TUS})


def _job(client: Any, recording: Path, video_upload: str, auth: dict[str, str] = AUTH_A) -> Any:
    files = {"protocol": ("protocol.txt", (recording / "protocol.txt").read_bytes(), "text/plain")}
    return client.post("/v1/jobs", files=files, data={"video_upload": video_upload}, headers=auth)


def test_a_video_uploaded_in_pieces_becomes_a_job_hashed_once(
    make_env: Any, recording: Path
) -> None:
    """Three PATCHes over two replicas (the hash state of one catches up on the other's bytes),
    a wrong offset refused, then a job that names the upload by URL: probed, its sha256 the one
    computed while the bytes arrived, its video a hard link of the upload (no copy)."""
    env = make_env()
    other = create_app(JobService(env.settings))  # a second ingress replica on the same archive
    from fastapi.testclient import TestClient

    replica_b = TestClient(other)
    video = (recording / "video.mp4").read_bytes()
    options = env.client.options("/v1/uploads")
    assert options.status_code == 204
    assert options.headers["tus-version"] == "1.0.0"
    assert set(options.headers["tus-extension"].split(",")) >= {"creation", "termination"}
    created = _create(env.client, len(video), filename="rec.mp4")
    assert created.status_code == 201, created.text
    url = created.headers["location"]
    assert url.startswith("/v1/uploads/") and created.headers["upload-offset"] == "0"
    cuts = [0, len(video) // 3, 2 * len(video) // 3, len(video)]
    for i, client in enumerate([env.client, replica_b, env.client]):
        r = _patch(client, url, cuts[i], video[cuts[i] : cuts[i + 1]])
        assert r.status_code == 204, r.text
        assert r.headers["upload-offset"] == str(cuts[i + 1])
        if i == 0:
            stale = _patch(replica_b, url, 0, video[:10])  # a retry of a PATCH already applied
            assert stale.status_code == 409 and "ask with HEAD" in stale.json()["error"]
            assert _head(replica_b, url).headers["upload-offset"] == str(cuts[1])
    head = _head(env.client, url)
    assert head.status_code == 200 and head.headers["upload-length"] == str(len(video))
    assert head.headers["cache-control"] == "no-store"
    r = _job(env.client, recording, f"http://testserver{url}")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["video_sha256"] == hashlib.sha256(video).hexdigest()
    jf = env.service.archive.job("lab-a", body["job_id"])
    assert jf.record()["video_filename"] == "rec.mp4"
    assert os.stat(jf.video_path()).st_nlink == 2, "the job's video is the upload's bytes"
    assert list(env.service.archive.tmp_dir.iterdir()) == []
    # the same bytes sent directly make the same job (one hash, one id)
    direct = env.post(recording, annotations=False)
    assert direct.status_code == 202 and direct.json()["job_id"] == body["job_id"]
    assert direct.json()["deduplicated"] is True


def test_another_labs_upload_answers_exactly_like_an_unknown_one(
    make_env: Any, recording: Path
) -> None:
    env = make_env()
    url = _create(env.client, 1000).headers["location"]
    unknown = "/v1/uploads/" + "0" * 32
    for call in (
        lambda u: _head(env.client, u, AUTH_B),
        lambda u: _patch(env.client, u, 0, b"x" * 10, AUTH_B),
        lambda u: env.client.delete(u, headers={**AUTH_B, **TUS}),
    ):
        theirs, nobody = call(url), call(unknown)
        assert theirs.status_code == nobody.status_code == 404
        if theirs.content:
            assert theirs.json()["error"].replace(url[-32:], "X") == nobody.json()["error"].replace(
                "0" * 32, "X"
            )
    r = _job(env.client, recording, url, AUTH_B)
    assert r.status_code == 422 and "no such upload for your lab" in r.json()["error"]
    assert _head(env.client, url).headers["upload-offset"] == "0"  # untouched


def test_creation_and_patch_are_checked_before_any_byte_is_kept(make_env: Any) -> None:
    env = make_env(max_video_bytes=1000, tus_max_patch_bytes=100, max_open_uploads_per_lab=2)
    c = env.client
    assert c.post("/v1/uploads", headers={**TUS, "Upload-Length": "10"}).status_code == 401
    no_version = c.post("/v1/uploads", headers={**AUTH_A, "Upload-Length": "10"})
    assert no_version.status_code == 412 and no_version.headers["tus-version"] == "1.0.0"
    too_big = _create(c, 1001)
    assert too_big.status_code == 413 and "max_video_bytes" in too_big.json()["error"]
    bad_meta = c.post(
        "/v1/uploads", headers={**AUTH_A, **TUS, "Upload-Length": "10", "Upload-Metadata": "f !!"}
    )
    assert bad_meta.status_code == 400
    url = _create(c, 500).headers["location"]
    over = _patch(c, url, 0, b"x" * 101)
    assert over.status_code == 413 and "tus_max_patch_bytes" in over.json()["error"]
    wrong_type = c.patch(url, content=b"x", headers={**AUTH_A, **TUS, "Upload-Offset": "0"})
    assert wrong_type.status_code == 415
    assert _head(c, url).headers["upload-offset"] == "0"
    assert _patch(c, url, 0, b"x" * 100).status_code == 204
    _create(c, 10)
    full = _create(c, 10)
    assert full.status_code == 429 and "max_open_uploads_per_lab" in full.json()["error"]


def test_unfinished_uploads_are_refused_as_videos_and_expire_with_their_bytes(
    make_env: Any, recording: Path
) -> None:
    env = make_env()
    store = env.service.tus_store
    url = _create(env.client, 5000).headers["location"]
    upload_id = url.rsplit("/", 1)[1]
    assert _patch(env.client, url, 0, b"x" * 1000).status_code == 204
    r = _job(env.client, recording, upload_id)
    assert r.status_code == 409 and "has 1000 of 5000 bytes: resume it" in r.json()["error"]
    both = env.client.post(
        "/v1/jobs",
        files={"video": ("v.mp4", b"x", "video/mp4"), "protocol": ("p.txt", THREE_STEPS)},
        data={"video_upload": upload_id},
        headers=AUTH_A,
    )
    assert both.status_code == 422 and "not both" in both.json()["error"]
    data = store.data_path("lab-a", upload_id)
    assert data.stat().st_size == 1000
    # a day without data passes (the record's expiry moved back): the bytes go
    record = data.with_suffix(".json")
    info = json.loads(record.read_text())
    info["expires_at"] = time.time() - 1
    record.write_text(json.dumps(info))
    JobService(env.settings)  # an ingress (re)starting sweeps expired uploads
    assert not data.exists() and not record.exists()
    assert _head(env.client, url).status_code == 404
    # and one that expires while nobody restarts is removed when it is next asked for
    url = _create(env.client, 100).headers["location"]
    second = store.data_path("lab-a", url.rsplit("/", 1)[1])
    info = json.loads(second.with_suffix(".json").read_text())
    info["expires_at"] = time.time() - 1
    second.with_suffix(".json").write_text(json.dumps(info))
    assert _patch(env.client, url, 0, b"x").status_code == 404 and not second.exists()


def test_termination_removes_the_upload(make_env: Any) -> None:
    env = make_env()
    url = _create(env.client, 100).headers["location"]
    data = env.service.tus_store.data_path("lab-a", url.rsplit("/", 1)[1])
    assert _patch(env.client, url, 0, b"y" * 50).status_code == 204
    r = env.client.delete(url, headers={**AUTH_A, **TUS})
    assert r.status_code == 204 and not data.exists()
    assert _head(env.client, url).status_code == 404


# ---- real connections: hang-ups, trickles, slots ------------------------------------------
class RawPatch:
    """A PATCH written by hand: headers promising ``length`` bytes, then what the test sends."""

    def __init__(self, port: int, url: str, offset: int, length: int, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        head = (
            f"PATCH {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\nContent-Length: {length}\r\n\r\n"
        )
        self.sock.sendall(head.encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response_status(self) -> int:
        import http.client

        resp = http.client.HTTPResponse(self.sock)
        resp.begin()
        resp.read()
        return resp.status

    def close(self) -> None:
        self.sock.close()


def _wait_offset(base: str, url: str, want_at_least: int) -> int:
    """HEAD until the server has committed a hung-up PATCH (it notices the hang-up itself)."""
    deadline = time.monotonic() + 30
    while True:
        offset = int(httpx.head(base + url, headers={**AUTH_A, **TUS}).headers["upload-offset"])
        if offset >= want_at_least or time.monotonic() > deadline:
            return offset
        time.sleep(0.1)


@pytest.mark.slow
def test_a_hung_up_patch_keeps_what_arrived_and_the_upload_resumes_from_there(
    tmp_path: Path, redis_url: str, checkpoint: Path, recording: Path
) -> None:
    settings = _server_settings(tmp_path, redis_url, checkpoint, max_video_bytes=64 * 2**20)
    video = (recording / "video.mp4").read_bytes()
    with serve_in_subprocess(settings) as server:
        created = httpx.post(
            f"{server.base}/v1/uploads",
            headers={**AUTH_A, **TUS, "Upload-Length": str(len(video))},
        )
        url = created.headers["location"]
        half = len(video) // 2
        cut = RawPatch(server.port, url, 0, len(video), TOKENS["lab-a"])
        cut.send(video[:half])
        time.sleep(0.5)
        cut.close()  # the connection drops mid-body
        offset = _wait_offset(server.base, url, half)
        assert 0 < offset <= half, offset
        r = httpx.patch(
            server.base + url,
            content=video[offset:],
            headers={**AUTH_A, **TUS, **OFFSET_TYPE, "Upload-Offset": str(offset)},
        )
        assert r.status_code == 204 and r.headers["upload-offset"] == str(len(video))
        files = {"protocol": ("p.txt", (recording / "protocol.txt").read_bytes(), "text/plain")}
        job = httpx.post(
            f"{server.base}/v1/jobs", files=files, data={"video_upload": url}, headers=AUTH_A
        )
        assert job.status_code == 202, job.text
        assert job.json()["video_sha256"] == hashlib.sha256(video).hexdigest()


@pytest.mark.slow
def test_trickling_clients_of_one_lab_never_give_another_lab_a_503(
    tmp_path: Path, redis_url: str, checkpoint: Path, recording: Path
) -> None:
    """Lab A's stalled uploads fill its per-lab cap and get 503 beyond it; lab B still uploads
    (direct and tus) and previews; a trickle below the minimum rate is cut off with 408."""
    settings = _server_settings(
        tmp_path,
        redis_url,
        checkpoint,
        max_concurrent_uploads=4,
        max_uploads_per_lab=2,
        upload_min_rate_bps=4096,
        upload_rate_grace_s=45.0,  # longer than the loop below may take on a loaded machine
        upload_idle_timeout_s=90.0,
    )
    partial = multipart(job_parts(recording, (recording / "video.mp4").read_bytes()), close=False)
    probe_body = multipart([("video", "v.mp4", b"x"), ("protocol", None, THREE_STEPS)])
    with serve_in_subprocess(settings) as server:
        stalled = [RawUpload(server.port) for _ in range(2)]
        for s in stalled:
            s.send(partial[:1000])
        deadline = time.monotonic() + 40
        while True:  # until lab A's cap is seen full
            for i, s in enumerate(stalled):
                if s.answered():  # a probe took its slot before the server saw it: start again
                    s.close()
                    stalled[i] = RawUpload(server.port)
                    stalled[i].send(partial[:1000])
            probe = RawUpload(server.port)
            probe.send(probe_body)
            probe.finish()
            status, _, body = probe.response()
            probe.close()
            if status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 503 and "your lab already has 2 uploads" in body["error"], body
        assert "max_uploads_per_lab" in body["error"]
        files, data = sf.upload(recording)
        r = httpx.post(f"{server.base}/v1/jobs", files=files, data=data, headers=AUTH_B, timeout=60)
        assert r.status_code == 202, r.text
        created = httpx.post(
            f"{server.base}/v1/uploads", headers={**AUTH_B, **TUS, "Upload-Length": "10"}
        )
        patched = httpx.patch(
            server.base + created.headers["location"],
            content=b"0123456789",
            headers={**AUTH_B, **TUS, **OFFSET_TYPE, "Upload-Offset": "0"},
        )
        assert patched.status_code == 204
        preview = httpx.post(
            f"{server.base}/v1/protocol/preview",
            files={"protocol": ("p.txt", THREE_STEPS)},
            headers=AUTH_B,
        )
        assert preview.status_code == 200
        assert httpx.get(f"{server.base}/v1/healthz").status_code == 200
        # the stalled uploads send too little: cut off for their rate, not left to hold slots
        for s in stalled:
            status, _, body = s.response()
            assert status == 408 and "came slower than 4 KiB/s" in body["error"], body
            s.close()
        assert list(server.tmp_dir.iterdir()) == []

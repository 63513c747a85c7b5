"""Media links without the lab token, and what every answer carries: signed job-scoped URLs
(expired, altered, other-job and other-file links refused), no ``?token=``, browser security
headers, ``Cache-Control: private`` on lab data, no /docs."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from fastapi.testclient import TestClient

from services.api import JobService, create_app
from services.api.links import SECRET_FILE, LinkSigner
from tests import service_fixtures as sf
from tests.service_fixtures import AUTH_A, AUTH_B, TOKENS

checkpoint, recording, runner, make_env = sf.checkpoint, sf.recording, sf.runner, sf.make_env

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}


def _job_with_links(env: Any, recording: Path, protocol: str | None = None) -> dict[str, Any]:
    """Submit a job (not processed) and return GET /v1/jobs/{id} with its links."""
    posted = env.post(recording, protocol=protocol)
    assert posted.status_code == 202, posted.text
    body = env.client.get(f"/v1/jobs/{posted.json()['job_id']}", headers=AUTH_A)
    assert body.status_code == 200, body.text
    return body.json()


def _with_query(link: str, **changes: str) -> str:
    """``link`` with some of its query parameters replaced."""
    parts = urlsplit(link)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return f"{parts.path}?{urlencode(query)}"


def test_query_token_is_refused_with_the_fix(make_env: Any, recording: Path) -> None:
    env = make_env()
    job_id = _job_with_links(env, recording)["job_id"]
    token = TOKENS["lab-a"]
    for path in (
        "/v1/jobs",
        f"/v1/jobs/{job_id}",
        f"/v1/jobs/{job_id}/video",
        f"/v1/jobs/{job_id}/alignment.vtt",
        f"/jobs/{job_id}",
    ):
        for query in (f"token={token}", f"access_token={token}", "token="):
            # refused even when a valid header comes along: the URL already leaked the token
            r = env.client.get(f"{path}?{query}", headers=AUTH_A)
            assert r.status_code == 401, (path, query, r.status_code)
            assert "Authorization: Bearer" in r.json()["error"], r.json()
            assert r.headers["www-authenticate"] == "Bearer"


def test_signed_links_open_the_job_media_without_the_token(make_env: Any, recording: Path) -> None:
    env = make_env()
    job = _job_with_links(env, recording)
    links, job_id = job["links"], job["job_id"]
    assert set(links) == {"expires_at", "video", "json", "csv", "vtt"}
    assert 0 < links["expires_at"] - time.time() <= env.settings.link_ttl_s
    assert TOKENS["lab-a"] not in json.dumps(job)
    video = (recording / "video.mp4").read_bytes()

    full = env.client.get(links["video"])  # no Authorization header
    assert full.status_code == 200 and full.content == video
    assert full.headers["cache-control"].startswith("private")
    part = env.client.get(links["video"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == video[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(video)}"
    # the alignment links pass auth: the job simply has no result yet
    for key in ("json", "csv", "vtt"):
        r = env.client.get(links[key])
        assert r.status_code == 409 and "no alignment yet" in r.json()["error"], key
    # the bearer header still works on the same routes
    assert env.client.get(f"/v1/jobs/{job_id}/video", headers=AUTH_A).status_code == 200
    assert env.client.get(f"/v1/jobs/{job_id}/video").status_code == 401


def test_expired_altered_and_misdirected_links_get_403(make_env: Any, recording: Path) -> None:
    env = make_env()
    first = _job_with_links(env, recording)
    second = _job_with_links(env, recording, protocol="1. Add water.\n2. Mix.\n")
    link = first["links"]["video"]
    sig = parse_qs(urlsplit(link).query)["sig"][0]
    other_sig = ("0" if sig[0] != "0" else "1") + sig[1:]  # its first character changed
    exp = int(parse_qs(urlsplit(link).query)["exp"][0])
    an_hour_ago = time.time() - 3600 - env.settings.link_ttl_s
    expired = LinkSigner(_secret_of(env), env.settings.link_ttl_s, clock=lambda: an_hour_ago)
    expired_links = expired.links("lab-a", first["job_id"])
    cases = {
        "expired": (expired_links["video"], "expired"),
        "altered signature": (_with_query(link, sig=other_sig), "invalid link signature"),
        "later expiry": (_with_query(link, exp=str(exp + 86400)), "invalid link signature"),
        "other lab": (_with_query(link, lab="lab-b"), "invalid link signature"),
        "other job": (
            link.replace(first["job_id"], second["job_id"]),
            "invalid link signature",
        ),
        "other resource": (link.replace("/video?", "/alignment.vtt?"), "invalid link signature"),
        "no expiry": (link.split("&exp=")[0] + f"&sig={sig}", "incomplete"),
        "bad expiry": (_with_query(link, exp="soon"), "not a number"),
    }
    for name, (url, why) in cases.items():
        r = env.client.get(url)
        assert r.status_code == 403, (name, r.status_code, r.text)
        assert why in r.json()["error"] and "GET /v1/jobs/" in r.json()["error"], (name, r.json())
    # the second job's own link opens the second job only
    assert env.client.get(second["links"]["video"]).status_code == 200
    # lab B's valid token does not turn lab A's job into B's, with or without a link
    assert env.client.get(f"/v1/jobs/{first['job_id']}", headers=AUTH_B).status_code == 404


def _secret_of(env: Any) -> bytes:
    """The link secret the service generated under its archive."""
    return (env.settings.archive_path / SECRET_FILE).read_text().strip().encode()


def test_link_secret_is_private_and_shared_by_replicas(make_env: Any, recording: Path) -> None:
    env = make_env()
    job = _job_with_links(env, recording)
    path = env.settings.archive_path / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # a second replica on the same archive accepts the first one's links
    replica = TestClient(create_app(JobService(env.settings)))
    assert replica.get(job["links"]["video"]).status_code == 200
    # a configured secret replaces the file; links of another secret are refused
    configured = env.settings.replace(link_secret="s" * 40)
    other = TestClient(create_app(JobService(configured)))
    assert other.get(job["links"]["video"]).status_code == 403
    # a lab whose token the operator removed: its links stop working at once
    only_b = env.settings.replace(lab_tokens=f"lab-b:{TOKENS['lab-b']}")
    revoked = TestClient(create_app(JobService(only_b))).get(job["links"]["video"])
    assert revoked.status_code == 403 and "no longer configured" in revoked.json()["error"]
    with pytest.raises(ValueError, match="at least 32"):
        LinkSigner.from_settings(env.settings.replace(link_secret="short"))


def test_every_answer_carries_the_security_headers(make_env: Any, recording: Path) -> None:
    env = make_env()
    job = _job_with_links(env, recording)
    job_id = job["job_id"]
    answers = {
        "job list": (env.client.get("/v1/jobs", headers=AUTH_A), 200),
        "job": (env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A), 200),
        "alignment": (env.client.get(job["links"]["json"]), 409),
        "video": (env.client.get(job["links"]["video"]), 200),
        "no token": (env.client.get("/v1/jobs"), 401),
        "query token": (env.client.get(f"/v1/jobs?token={TOKENS['lab-a']}"), 401),
        "bad link": (env.client.get(_with_query(job["links"]["vtt"], sig="0")), 403),
        "viewer": (env.client.get(f"/jobs/{job_id}"), 200),
        "index": (env.client.get("/"), 200),
        "script": (env.client.get("/static/viewer.js"), 200),
        "unknown": (env.client.get("/nope"), 404),
    }
    for name, (r, status) in answers.items():
        assert r.status_code == status, (name, r.status_code)
        for header, value in SECURITY_HEADERS.items():
            assert r.headers.get(header) == value, (name, header, r.headers.get(header))
        if name in ("job list", "job", "alignment", "no token", "query token", "bad link"):
            assert r.headers["cache-control"] == "private, no-store", (name, r.headers)
    assert answers["video"][0].headers["cache-control"] == "private, max-age=3600"
    # the pages keep their own (stricter) policy in their <meta> CSP
    assert "script-src 'self'" in answers["viewer"][0].text


def test_docs_and_metrics_are_not_public(make_env: Any) -> None:
    env = make_env()
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/metrics"):
        assert env.client.get(path).status_code == 404, path

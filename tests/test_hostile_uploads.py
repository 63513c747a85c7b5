"""Hostile uploads against the real ingress (FastAPI app, real Redis, real probe): lying
durations, playlists, oversize and chunked bodies, broken media and forms, queue full, other
labs' and path-like ids, stalled and slow uploads.

Every refused upload must get its status and a message naming the problem and the fix, queue
nothing, leave no temp file, keep the ingress's memory and temp disk bounded (both sampled while
the request runs), and leave the service answering. The streaming tests run uvicorn in a
subprocess, so the RSS sampled is the serving process's alone.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from services.settings import ServiceSettings
from tests import service_fixtures as sf
from tests.conftest import free_port
from tests.media_fixtures import encode_video
from tests.service_fixtures import AUTH_A, AUTH_B, TOKENS, make_settings, upload

checkpoint, recording, runner, make_env = sf.checkpoint, sf.recording, sf.runner, sf.make_env

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
LIMITS = {
    "max_video_bytes": 2 * MiB,
    "max_protocol_bytes": 4096,
    "max_annotations_bytes": 4096,
    "max_options_bytes": 1024,
}
RSS_GROWTH_BOUND = 128 * MiB  # in-process: the test's own objects share the process
SERVER_RSS_GROWTH_BOUND = 48 * MiB  # the uvicorn subprocess alone
BOUNDARY = "hostileboundary7MA4YWxkTrZu0gW"


# ---- building requests -----------------------------------------------------------------------
def multipart(parts: list[tuple[str, str | None, bytes]], *, close: bool = True) -> bytes:
    """A multipart/form-data body of (field, filename or None, data) parts."""
    out = bytearray()
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    if close:
        out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


CONTENT_TYPE = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def job_parts(recording: Path, video: bytes, name: str = "video.mp4") -> list:
    """Parts of an otherwise valid submission carrying ``video``."""
    return [
        ("video", name, video),
        ("protocol", "protocol.txt", (recording / "protocol.txt").read_bytes()),
    ]


def in_pieces(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """``data`` as a chunked body (no Content-Length)."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


# ---- measuring -------------------------------------------------------------------------------
def folder_bytes(folder: Path) -> int:
    """Bytes of the files in ``folder`` now (files vanish while we look: that is fine)."""
    total = 0
    for p in folder.iterdir():
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            continue
    return total


@dataclass
class Peaks:
    """Peak RSS growth of a process and peak size of a temp folder while a block ran."""

    rss_start: int = 0
    rss_peak: int = 0
    tmp_peak: int = 0
    samples: int = 0

    @property
    def rss_growth(self) -> int:
        """Peak RSS above the start."""
        return self.rss_peak - self.rss_start


@contextmanager
def watch(pid: int, tmp_dir: Path, every_s: float = 0.005) -> Iterator[Peaks]:
    """Sample ``pid``'s RSS and ``tmp_dir``'s size in a thread while the block runs."""
    proc = psutil.Process(pid)
    peaks = Peaks(rss_start=proc.memory_info().rss)
    peaks.rss_peak = peaks.rss_start
    stop = threading.Event()

    def take() -> None:
        peaks.rss_peak = max(peaks.rss_peak, proc.memory_info().rss)
        peaks.tmp_peak = max(peaks.tmp_peak, folder_bytes(tmp_dir))
        peaks.samples += 1

    def sample() -> None:
        while True:
            take()
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()
        take()  # and one after the block, however fast it was


# ---- media -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The hostile media files, by name."""
    d = tmp_path_factory.mktemp("hostile")
    mp4 = encode_video(d / "clip.mp4", seconds=4).read_bytes()
    return {
        "huge.mkv": encode_video(
            d / "huge.mkv", fmt="matroska", pts_ms=[0, 3_600_000_000]
        ).read_bytes(),
        "long-audio.mkv": encode_video(
            d / "long-audio.mkv", fmt="matroska", seconds=10, audio_seconds=30
        ).read_bytes(),
        "body.ts": encode_video(d / "body.ts", fmt="mpegts").read_bytes(),
        "audio.m4a": encode_video(
            d / "audio.m4a", fmt="mp4", seconds=0, audio_seconds=3
        ).read_bytes(),
        "truncated.mp4": mp4[: len(mp4) // 2],
    }


@pytest.fixture(scope="module", autouse=True)
def _warm_imports(recording: Path) -> None:
    """Import the probe's and parsers' libraries once, so RSS growth measures the request only."""
    from biovl_core.io import parse_annotations
    from biovl_core.protocol import parse_protocol
    from biovl_core.video import probe

    probe(recording / "video.mp4")
    parse_protocol((recording / "protocol.txt").read_text(), "protocol.txt")
    parse_annotations((recording / "annotations.csv").read_bytes(), filename="annotations.csv")


# ---- the refused uploads ---------------------------------------------------------------------
def _post(env: Any, parts: list, headers: dict[str, str] = AUTH_A, **kw: Any) -> httpx.Response:
    return env.client.post(
        "/v1/jobs", content=multipart(parts, **kw), headers={**headers, **CONTENT_TYPE}
    )


def _hls_playlist(
    env: Any, recording: Path, media: dict[str, bytes], ts_body: bool
) -> httpx.Response:
    """lab-a uploads an HLS playlist naming lab-b's archived video (optionally + an MPEG-TS body)."""
    (other,) = env.service.archive.iter_jobs("lab-b")
    target = other.video_path()
    assert target.is_file()
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:30,\n{target}\n#EXT-X-ENDLIST\n"
    data = playlist.encode() + (media["body.ts"] if ts_body else b"")
    return _post(env, job_parts(recording, data, "upload.m3u8"))


def _lab_b_job(env: Any, recording: Path, media: dict[str, bytes]) -> None:
    assert env.post(recording, headers=AUTH_B).status_code == 202


def _fill_queue(env: Any, recording: Path, media: dict[str, bytes]) -> None:
    assert env.post(recording).status_code == 202


Part = tuple[str, str | None, bytes]
Attack = Callable[[Any, Path, dict[str, bytes]], httpx.Response]


def with_recording(*extra: Part) -> Attack:
    """An attack: the generated recording's video and protocol, plus ``extra`` parts."""
    return lambda env, rec, m: _post(
        env, job_parts(rec, (rec / "video.mp4").read_bytes()) + list(extra)
    )


def with_parts(*parts: Part) -> Attack:
    """An attack of exactly these parts."""
    return lambda env, rec, m: _post(env, list(parts))


@dataclass
class Case:
    """One hostile upload: settings, an optional setup, the attack and the answer it must get."""

    attack: Attack
    status: int
    needles: tuple[str, ...]
    setup: Callable[[Any, Path, dict[str, bytes]], None] | None = None
    changes: dict[str, Any] = field(default_factory=dict)


THREE_STEPS = b"1. Add water.\n2. Add primer.\n3. Mix.\n"
TWELVE_STEPS = "".join(f"{i}. Step {i}.\n" for i in range(1, 13)).encode()
CASES = {
    "mkv-1000-hours": Case(
        lambda env, rec, m: _post(env, job_parts(rec, m["huge.mkv"], "huge.mkv")),
        422,
        ("lasts 1000.0 h", "max_video_duration_s", "split the recording"),
    ),
    "mkv-audio-longer-than-video": Case(
        # 10 s of video give at most 10 segments (1 s each); the 30 s of audio would give 30
        lambda env, rec, m: _post(
            env, [("video", "a.mkv", m["long-audio.mkv"]), ("protocol", None, TWELVE_STEPS)]
        ),
        422,
        ("12 steps but only 2 segments", "even 1 s segments give only 10", "merge steps"),
    ),
    "segments-over-max-segments": Case(
        with_recording(("options", None, b'{"segment_seconds": 0.5}')),
        422,
        ("makes 60 segments", "max_segments", "use longer segments"),
        changes={"max_segments": 50},
    ),
    "chunked-oversize-no-content-length": Case(
        lambda env, rec, m: env.client.post(
            "/v1/jobs",
            content=in_pieces(multipart(job_parts(rec, b"\0" * (3 * MiB)))),
            headers={**AUTH_A, **CONTENT_TYPE},
        ),
        413,
        ("'video'", "limit of 2097152 bytes", "re-encoded at a lower bitrate"),
    ),
    "oversize-with-content-length": Case(
        lambda env, rec, m: _post(env, job_parts(rec, b"\0" * (4 * MiB))),
        413,
        ("request body is", "the limit is", "max_video_bytes"),
    ),
    "oversize-video-inside-the-total": Case(
        lambda env, rec, m: _post(env, job_parts(rec, b"\0" * (2 * MiB + 1))),
        413,
        ("'video'", "limit of 2097152 bytes", "max_video_bytes"),
    ),
    "hls-playlist-naming-another-labs-video": Case(
        lambda env, rec, m: _hls_playlist(env, rec, m, ts_body=False),
        # the temp file never carries the upload's name, so FFmpeg does not even see a playlist
        415,
        ("'upload.m3u8' cannot be read as a video", "Upload the complete"),
        setup=_lab_b_job,
    ),
    "non-video": Case(
        lambda env, rec, m: _post(env, job_parts(rec, b"just some text, not a video\n" * 50)),
        415,
        ("cannot be read as a video", "Upload the complete"),
    ),
    "truncated-mp4": Case(
        lambda env, rec, m: _post(env, job_parts(rec, m["truncated.mp4"])),
        415,
        ("truncated", "Upload the complete"),
    ),
    "truncated-recording": Case(
        lambda env, rec, m: _post(env, job_parts(rec, (rec / "video.mp4").read_bytes()[:200_000])),
        415,
        ("cannot be read as a video", "truncated", "Upload the complete"),
    ),
    "audio-only": Case(
        lambda env, rec, m: _post(env, job_parts(rec, m["audio.m4a"], "voice.m4a")),
        415,
        ("no video stream", "not an audio-only"),
    ),
    "empty-video": Case(
        lambda env, rec, m: _post(env, job_parts(rec, b"")),
        422,
        ("is empty (0 bytes)", "pick the recording file again"),
    ),
    "oversize-protocol-file": Case(
        with_parts(("video", "v.mp4", b"x"), ("protocol", "p.txt", b"1. Mix.\n" * 1000)),
        413,
        ("'protocol'", "limit of 4096 bytes", "one step per line"),
    ),
    "oversize-protocol-text": Case(
        with_parts(("protocol", None, b"1. Mix.\n" * 1000)),
        413,
        ("'protocol'", "limit of 4096 bytes", "max_protocol_bytes"),
    ),
    "oversize-annotations": Case(
        with_recording(("annotations", "a.csv", b"step,start,end\n" + b"1,0,1\n" * 2000)),
        413,
        ("'annotations'", "limit of 4096 bytes", "step,start,end"),
    ),
    "oversize-options": Case(
        with_parts(("options", None, b'{"method": "' + b"n" * 2000 + b'"}')),
        413,
        ("'options'", "max_options_bytes"),
    ),
    "protocol-not-utf8": Case(
        lambda env, rec, m: _post(
            env,
            [
                ("video", "v.mp4", (rec / "video.mp4").read_bytes()),
                ("protocol", "p.txt", b"\xff\xfe\x00bad"),
            ],
        ),
        422,
        ("not UTF-8", "save it as UTF-8"),
    ),
    "protocol-empty": Case(
        with_parts(("video", "v.mp4", b"x"), ("protocol", None, b"  \n")),
        422,
        ("protocol is empty",),
    ),
    "protocol-too-many-steps": Case(
        lambda env, rec, m: _post(
            env,
            [
                ("video", "v.mp4", (rec / "video.mp4").read_bytes()),
                ("protocol", None, "".join(f"{i}. Step {i}.\n" for i in range(1, 41)).encode()),
            ],
        ),
        422,
        ("40 steps but only 6 segments", "even 1 s segments give only 30", "method 'uniform'"),
    ),
    "annotations-garbage": Case(
        with_recording(("annotations", "a.csv", b"\x00\x01,\x02\n")),
        422,
        ("annotations: a.csv: contains NUL bytes", "write a CSV with header step,start,end"),
    ),
    "annotations-bad-times": Case(
        with_recording(("annotations", "a.csv", b"step,start,end\n1,abc,3\n")),
        422,
        ("start 'abc' is not a number", "write seconds"),
    ),
    "options-not-json": Case(
        with_recording(("options", None, b"{method: nw")),
        422,
        ("options is not valid JSON",),
    ),
    "options-operator-key": Case(
        with_recording(("options", None, b'{"checkpoint": "/etc/passwd"}')),
        422,
        ("cannot be set per job", "allowed:"),
    ),
    "options-bad-method-param": Case(
        with_recording(
            (
                "options",
                None,
                b'{"method": "drop_dtw", "method_params": {"drop_percentile": 900}}',
            )
        ),
        422,
        ("drop_percentile must be in [0, 100]",),
    ),
    "options-per-segment-list-of-wrong-length": Case(
        with_recording(
            ("options", None, b'{"method": "drop_dtw", "method_params": {"drop_cost": [0.1, 0.2]}}')
        ),
        422,
        ("method_params.drop_cost has 2 values for 6 segments", "give one per segment"),
    ),
    "multipart-cut-off": Case(
        lambda env, rec, m: _post(
            env, job_parts(rec, (rec / "video.mp4").read_bytes()), close=False
        ),
        400,
        ("ended before its closing boundary", "send it again"),
    ),
    "unknown-field": Case(
        with_parts(("callback_url", None, b"http://169.254.169.254/")),
        400,
        ("unexpected form field 'callback_url'", "'video'"),
    ),
    "duplicate-video": Case(
        with_parts(("video", "a.mp4", b"x"), ("video", "b.mp4", b"y")),
        400,
        ("sends 'video' twice", "send each field once"),
    ),
    "not-multipart": Case(
        lambda env, rec, m: env.client.post(
            "/v1/jobs",
            content=b'{"video": "/etc/passwd"}',
            headers={**AUTH_A, "Content-Type": "application/json"},
        ),
        415,
        ("takes multipart/form-data", "curl -F video=@"),
    ),
    "queue-full": Case(
        with_parts(("video", "v.mp4", b"\0" * MiB), ("protocol", None, THREE_STEPS)),
        503,
        ("queue is full", "retry in 7 s"),
        setup=_fill_queue,
        changes={"max_queue_depth": 1, "retry_after_s": 7},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_upload_is_refused_clearly_and_cheaply(
    name: str, make_env: Any, recording: Path, media: dict[str, bytes]
) -> None:
    case = CASES[name]
    env = make_env(**{**LIMITS, **case.changes})
    if case.setup is not None:
        case.setup(env, recording, media)
    archive = env.service.archive
    depth, jobs = env.queue.depth(), len(list(archive.iter_jobs()))
    with watch(os.getpid(), archive.tmp_dir) as peaks:
        r = case.attack(env, recording, media)
    assert r.status_code == case.status, r.text
    message = r.json()["error"]
    for needle in case.needles:
        assert needle in message, (needle, message)
    if case.status == 503:
        assert r.headers["retry-after"] == "7"
    # nothing queued or archived, no temp file left, memory and temp disk bounded
    assert env.queue.depth() == depth and len(list(archive.iter_jobs())) == jobs
    assert list(archive.tmp_dir.iterdir()) == []
    assert peaks.samples > 0 and peaks.rss_growth < RSS_GROWTH_BOUND, peaks
    assert peaks.tmp_peak <= LIMITS["max_video_bytes"] + LIMITS["max_annotations_bytes"], peaks
    # and the service still answers
    assert env.client.get("/v1/healthz").status_code == 200
    assert env.client.get("/v1/jobs", headers=AUTH_A).status_code == 200


def test_mkv_with_long_audio_is_timed_by_its_video_and_stored_by_its_container(
    make_env: Any, media: dict[str, bytes]
) -> None:
    env = make_env(**LIMITS)
    parts = [
        ("video", "named-like-an.mp4", media["long-audio.mkv"]),
        ("protocol", None, b"1. Add water.\n2. Mix.\n"),
    ]
    r = _post(env, parts)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["duration_s"] == pytest.approx(10.0, abs=0.15)
    jf = env.service.archive.job("lab-a", body["job_id"])
    assert jf.video_path().name == "video.mkv"  # from the probe, not the upload's name
    assert jf.record()["video_filename"] == "named-like-an.mp4"
    assert env.queue.depth() == 1


def test_playlist_before_an_mpegts_body_is_read_as_that_body_alone(
    make_env: Any, recording: Path, media: dict[str, bytes]
) -> None:
    """An HLS playlist naming lab-b's 30 s video, followed by a 2 s MPEG-TS body: the probe reads
    it as MPEG-TS (its own bytes only) and the archive stores it as .ts, never as a playlist."""
    env = make_env(**LIMITS)
    _lab_b_job(env, recording, media)
    (other,) = env.service.archive.iter_jobs("lab-b")
    playlist = (
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:30,\n{other.video_path()}\n#EXT-X-ENDLIST\n"
    )
    r = _post(
        env,
        [
            ("video", "upload.m3u8", playlist.encode() + media["body.ts"]),
            ("protocol", None, b"1. Add water.\n"),
        ],
    )
    assert r.status_code == 202, r.text
    assert r.json()["duration_s"] == pytest.approx(2.0, abs=0.2)  # not lab-b's 30 s
    jf = env.service.archive.job("lab-a", r.json()["job_id"])
    assert jf.video_path().name == "video.ts"


def test_other_labs_job_ids_answer_exactly_like_unknown_ones(
    make_env: Any, recording: Path
) -> None:
    env = make_env(**LIMITS)
    job_id = env.post(recording).json()["job_id"]
    unknown = "0" * 40
    for suffix in ("", "/alignment.json", "/alignment.csv", "/alignment.vtt", "/video"):
        theirs = env.client.get(f"/v1/jobs/{job_id}{suffix}", headers=AUTH_B)
        nobody = env.client.get(f"/v1/jobs/{unknown}{suffix}", headers=AUTH_B)
        assert theirs.status_code == nobody.status_code == 404, suffix
        assert theirs.json()["error"].replace(job_id, "X") == nobody.json()["error"].replace(
            unknown, "X"
        )
    assert env.client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).status_code == 200


PATH_LIKE_IDS = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%5C..%5Cetc%5Cpasswd",
    "%2E%2E",
    "..",
    "%00",
    "0" * 39 + "%00",
    "A" * 40,
    "0" * 41,
    "lab-a%2Fjobs%2F" + "0" * 40,
]


@pytest.mark.parametrize("job_id", PATH_LIKE_IDS)
def test_path_like_job_ids_never_reach_the_filesystem(
    make_env: Any, recording: Path, job_id: str
) -> None:
    env = make_env(**LIMITS)
    real = env.post(recording).json()["job_id"]
    (env.service.archive.root / "passwd").write_text("root:x:0:0\n")
    for suffix in ("", "/alignment.json", "/video"):
        r = env.client.get(f"/v1/jobs/{job_id}{suffix}", headers=AUTH_A)
        assert r.status_code == 404, (job_id, suffix, r.status_code, r.text[:200])
        assert "root:" not in r.text
    assert env.client.get(f"/v1/jobs/{real}", headers=AUTH_A).status_code == 200


def test_stale_upload_temps_are_removed_at_start_after_a_grace_period(make_env: Any) -> None:
    env = make_env(**LIMITS)
    tmp = env.service.archive.tmp_dir
    stale, fresh = tmp / "killed-upload.part", tmp / "live-upload.part"
    stale.write_bytes(b"\0" * 1000)
    fresh.write_bytes(b"\0" * 1000)
    hour_ago = time.time() - 3600 - 60
    os.utime(stale, (hour_ago, hour_ago))
    from services.api import JobService

    JobService(env.settings)  # an ingress (re)starting on the same archive
    assert not stale.exists()
    assert fresh.exists()  # may belong to an upload another replica is receiving


# ---- the ingress as its own process: streaming, memory, stalls and slots ----------------------
SERVER = """
import json, sys, uvicorn
from services.api import JobService, create_app
from services.settings import ServiceSettings
settings = ServiceSettings.from_dict(json.loads(sys.argv[1]))
uvicorn.run(create_app(JobService(settings)), host="127.0.0.1", port=int(sys.argv[2]),
            log_level="warning")
"""


@dataclass
class Server:
    """A uvicorn process serving the app on 127.0.0.1."""

    proc: subprocess.Popen
    port: int
    settings: ServiceSettings

    @property
    def base(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def tmp_dir(self) -> Path:
        """The archive's upload temp folder."""
        return self.settings.archive_path / "tmp"


@contextmanager
def serve_in_subprocess(settings: ServiceSettings) -> Iterator[Server]:
    """Run the ingress in its own uvicorn process until the block ends."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BIOVL_DEVICE": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, json.dumps(settings.to_dict()), str(port)], env=env
    )
    server = Server(proc, port, settings)
    try:
        deadline = time.monotonic() + 240  # a loaded machine starts it slowly
        while True:
            try:
                if httpx.get(f"{server.base}/v1/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the ingress did not start (exit code {proc.poll()})")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        from services.redis_conn import connect

        r = connect(settings.redis_url)
        keys = list(r.scan_iter(f"{settings.redis_prefix}:*"))
        if keys:
            r.delete(*keys)


class RawUpload:
    """A chunked POST /v1/jobs written by hand, so a test controls pace and can stop mid-body."""

    def __init__(self, port: int, token: str = TOKENS["lab-a"]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sent = 0
        head = (
            "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: {CONTENT_TYPE['Content-Type']}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        self.sock.sendall(head.encode())

    def answered(self) -> bool:
        """True when the server has started its answer (or closed the connection)."""
        import select

        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def send(self, data: bytes) -> bool:
        """Send one chunk; False when the server stopped reading and answered or hung up."""
        if self.answered():
            return False
        try:
            self.sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return False
        self.sent += len(data)
        return True

    def finish(self) -> None:
        """The last chunk."""
        self.sock.sendall(b"0\r\n\r\n")

    def response(self) -> tuple[int, dict[str, str], dict[str, Any]]:
        """(status, headers, JSON body) of the answer."""
        resp = http.client.HTTPResponse(self.sock)
        resp.begin()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(body)

    def close(self) -> None:
        """Hang up."""
        self.sock.close()


def hold_every_slot(
    port: int, count: int, first_bytes: bytes, timeout_s: float = 60.0
) -> tuple[list[RawUpload], tuple[int, dict, dict]]:
    """Open ``count`` uploads that send ``first_bytes`` and then stall, until a small complete
    upload is refused with 503 while none of them has been answered: (the stalled uploads, the
    refusal). An upload reaches its slot a moment after its first bytes, so one overtaken by a
    probe and refused is replaced."""
    probe_body = multipart([("video", "v.mp4", b"x"), ("protocol", None, THREE_STEPS)])
    held: list[RawUpload] = []
    deadline = time.monotonic() + timeout_s
    while True:
        for answered_upload in [u for u in held if u.answered()]:
            answered_upload.close()
            held.remove(answered_upload)
        while len(held) < count:
            held.append(RawUpload(port))
            assert held[-1].send(first_bytes)
        time.sleep(1.0)
        if any(u.answered() for u in held):
            continue
        probe = RawUpload(port)
        probe.send(probe_body)
        probe.finish()
        answer = probe.response()
        probe.close()
        if answer[0] == 503 and not any(u.answered() for u in held):
            return held, answer
        assert time.monotonic() < deadline, f"the upload slots never filled; last answer {answer}"


def _server_settings(
    tmp_path: Path, redis_url: str, checkpoint: Path, **changes: Any
) -> ServiceSettings:
    return make_settings(tmp_path, redis_url, checkpoint, **{**LIMITS, **changes})


@pytest.mark.slow
def test_chunked_oversize_upload_is_stopped_while_reading_with_bounded_memory_and_disk(
    tmp_path: Path, redis_url: str, checkpoint: Path, recording: Path
) -> None:
    """A 256 MiB chunked body against an 8 MiB video limit: 413 after about the limit is read."""
    limit = 8 * MiB
    settings = _server_settings(tmp_path, redis_url, checkpoint, max_video_bytes=limit)
    head = multipart(job_parts(recording, b""), close=False)
    head = head[
        : head.index(b'filename="video.mp4"\r\n\r\n') + len(b'filename="video.mp4"\r\n\r\n')
    ]
    piece = os.urandom(64 * 1024)
    total = 256 * MiB
    with serve_in_subprocess(settings) as server:

        def stream_video(upload: RawUpload, size: int) -> None:
            upload.send(head)
            while upload.sent < size and upload.send(piece):
                pass

        warm = RawUpload(server.port)  # the first upload loads the parser and its modules
        stream_video(warm, 2 * limit)
        assert warm.response()[0] == 413
        warm.close()
        with watch(server.proc.pid, server.tmp_dir, every_s=0.002) as peaks:
            big = RawUpload(server.port)
            stream_video(big, total)
            status, _, body = big.response()
            big.close()
        assert status == 413, body
        assert "'video'" in body["error"] and f"limit of {limit} bytes" in body["error"]
        # stopped while reading: the answer came long before the body ended (socket buffers
        # hold a few MiB more than the server read)
        assert big.sent < 64 * MiB, big.sent
        # Samples before and after the upload at least (on a quiet machine the 413 comes within
        # milliseconds); freed memory stays in a CPython process's RSS, so the last sample
        # still holds the growth the upload caused.
        assert peaks.samples >= 2 and peaks.rss_growth < SERVER_RSS_GROWTH_BOUND, peaks
        assert peaks.tmp_peak <= limit, peaks
        assert list(server.tmp_dir.iterdir()) == []
        r = httpx.get(f"{server.base}/v1/jobs", headers=AUTH_A)
        assert r.status_code == 200 and r.json()["jobs"] == []
        print(
            f"\n256 MiB chunked upload vs {limit // MiB} MiB limit: client sent "
            f"{big.sent / MiB:.1f} MiB before the 413, server RSS +{peaks.rss_growth / MiB:.1f} "
            f"MiB, temp peak {peaks.tmp_peak / MiB:.1f} MiB ({peaks.samples} samples)"
        )


@pytest.mark.slow
def test_stalled_uploads_hold_a_bounded_number_of_slots_and_time_out(
    tmp_path: Path, redis_url: str, checkpoint: Path, recording: Path
) -> None:
    """Two stalled uploads fill the slots: a third gets 503 + Retry-After, status polls answer,
    the stalled ones get 408 after the idle timeout and free their slots and temp files; so does
    a client that hangs up mid-upload."""
    settings = _server_settings(
        tmp_path, redis_url, checkpoint, max_concurrent_uploads=2, upload_idle_timeout_s=3.0
    )
    partial = multipart(job_parts(recording, (recording / "video.mp4").read_bytes()), close=False)
    with serve_in_subprocess(settings) as server:
        stalled, (status, headers, body) = hold_every_slot(server.port, 2, partial[: 200 * 1024])
        assert status == 503 and headers["retry-after"] == str(settings.retry_after_s)
        assert "2 uploads are already in progress" in body["error"] and "retry in" in body["error"]
        assert httpx.get(f"{server.base}/v1/jobs", headers=AUTH_A, timeout=10).status_code == 200
        assert not any(s.answered() for s in stalled)  # still in flight
        for s in stalled:
            status, _, body = s.response()
            assert status == 408 and "sent no data for 3 s" in body["error"], body
            s.close()
        assert list(server.tmp_dir.iterdir()) == []
        gone = RawUpload(server.port)  # a client that hangs up mid-upload leaves nothing behind
        assert gone.send(partial[: 300 * 1024])
        time.sleep(0.5)
        gone.close()
        deadline = time.monotonic() + 10
        while list(server.tmp_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(server.tmp_dir.iterdir()) == []
        files, data = upload(recording)
        r = httpx.post(f"{server.base}/v1/jobs", files=files, data=data, headers=AUTH_A, timeout=60)
        assert r.status_code == 202, r.text  # the slots were given back


@pytest.mark.slow
def test_serve_ingress_answers_status_polls_while_slow_uploads_are_in_flight(
    ray_cluster: dict[str, Any], redis_url: str, checkpoint: Path, recording: Path, tmp_path: Path
) -> None:
    """On real Ray Serve: more slow uploads than Ray's default max_ongoing_requests (5) are in
    flight, and a status poll still answers; one upload over the slots gets 503."""
    from ray import serve

    from services.serve.app import build_app

    uploads = 6
    settings = _server_settings(
        tmp_path,
        redis_url,
        checkpoint,
        worker_replicas=0,
        max_concurrent_uploads=uploads,
        max_uploads_per_lab=uploads,  # one lab here: its cap is the replica's
        http_port=int(ray_cluster["port"]),  # type: ignore[arg-type]
    )
    assert settings.ingress_max_ongoing_requests > uploads
    serve.run(build_app(settings), name="biovl-hostile", route_prefix="/")
    port = int(ray_cluster["port"])  # type: ignore[arg-type]
    partial = multipart(job_parts(recording, (recording / "video.mp4").read_bytes()), close=False)
    slow: list[RawUpload] = []
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=AUTH_A, timeout=30
        ) as client:
            job_id = client.post("/v1/jobs", files=upload(recording)[0]).json()["job_id"]
            slow, (status, _, body) = hold_every_slot(port, uploads, partial[: 100 * 1024])
            assert status == 503 and "uploads are already in progress" in body["error"], body
            poll = client.get(f"/v1/jobs/{job_id}")
            assert poll.status_code == 200 and poll.json()["status"] == "queued"
            assert client.get("/v1/jobs").status_code == 200
            assert not any(s.answered() for s in slow)  # the uploads are still in flight
    finally:
        for s in slow:
            s.close()
        serve.delete("biovl-hostile")
        from services.redis_conn import connect

        r = connect(redis_url)
        keys = list(r.scan_iter(f"{settings.redis_prefix}:*"))
        if keys:
            r.delete(*keys)


def test_ingress_concurrency_is_the_same_in_code_and_serve_configs() -> None:
    """The Ingress's max_ongoing_requests comes from one setting, and both serve configs say it."""
    import yaml
    from ray.serve._private.build_app import build_app as build_serve_app

    from services.serve.app import build_app

    want = ServiceSettings().ingress_max_ongoing_requests
    assert want > ServiceSettings().max_concurrent_uploads + 5  # room beside the uploads
    built = build_serve_app(build_app(ServiceSettings(worker_replicas=0)), name="biovl")
    (ingress,) = [d for d in built.deployments if d.name == "Ingress"]
    assert ingress.max_ongoing_requests == want
    config = yaml.safe_load((ROOT / "deploy" / "serve_config.yaml").read_text())
    (yaml_ingress,) = [
        d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress"
    ]
    assert yaml_ingress["max_ongoing_requests"] == want

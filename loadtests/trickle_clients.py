"""The trickle scenario of loadtests/edge_soak.py: lab-a's slow clients, lab-b's ordinary work and
a health check, side by side for a bounded time against one base URL (Serve's port or the edge).

Every loop is bounded by the run's deadline, and each client by its own socket timeout.
"""

from __future__ import annotations

import socket
import ssl
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

BOUNDARY = "tricklebound7MA4YWxkTrZu0gW"
TUS = {"Tus-Resumable": "1.0.0"}


def _connect(base: str) -> socket.socket:
    scheme, rest = base.split("://")
    host, port = rest.split(":")
    sock = socket.create_connection((host, int(port)), timeout=120)
    if scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        sock = ctx.wrap_socket(sock)
    return sock


def _status(sock: socket.socket) -> int:
    """The status of an answer that has started (0 when the server closed without one)."""
    try:
        line = sock.recv(64).split(b"\r\n", 1)[0]
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (OSError, ValueError, IndexError):
        return 0


def _answered(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def _slow_request(base: str, head: str, first: bytes, every_s: float, until: float) -> int:
    """Send ``head`` and ``first``, then one byte every ``every_s`` until answered or ``until``."""
    sock = _connect(base)
    try:
        sock.sendall(head.encode() + first)
        while time.monotonic() < until:
            if _answered(sock):
                return _status(sock)
            try:
                sock.sendall(b"x")
            except OSError:
                return _status(sock)
            time.sleep(every_s)
        return -1  # still open at the end of the run
    finally:
        sock.close()


def _trickler(base: str, token: str, kind: str, until: float, codes: Counter) -> None:
    auth = f"Authorization: Bearer {token}\r\n"
    host = "Host: 127.0.0.1\r\n"
    while time.monotonic() < until:
        if kind == "direct":
            head = (
                f"POST /v1/jobs HTTP/1.1\r\n{host}{auth}Content-Type: multipart/form-data; "
                f"boundary={BOUNDARY}\r\nContent-Length: 10000000\r\n\r\n"
            )
            first = (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; '
                'filename="v.mp4"\r\n\r\n'
            ).encode()
        elif kind == "tus":
            r = httpx.post(
                base + "/v1/uploads",
                headers={"Authorization": f"Bearer {token}", **TUS, "Upload-Length": "10000000"},
                verify=False,
                timeout=30,
            )
            codes[f"create {r.status_code}"] += 1
            if r.status_code != 201:
                time.sleep(1)
                continue
            head = (
                f"PATCH {r.headers['location']} HTTP/1.1\r\n{host}{auth}Tus-Resumable: 1.0.0\r\n"
                "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
                "Content-Length: 10000000\r\n\r\n"
            )
            first = b""
        else:
            head = (
                f"POST /v1/protocol/preview HTTP/1.1\r\n{host}{auth}Content-Type: "
                f"multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 100000\r\n\r\n"
            )
            first = (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="protocol"\r\n\r\n'
            ).encode()
        try:
            codes[f"{kind} {_slow_request(base, head, first, 2.0, until)}"] += 1
        except OSError:
            codes[f"{kind} connect-error"] += 1
            time.sleep(1)


def _lab_b(base: str, token: str, video: bytes, until: float, codes: Counter) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    protocol = b"1. Add water.\n2. Mix.\n"
    seed = 0
    with httpx.Client(base_url=base, headers=headers, verify=False, timeout=60) as client:
        while time.monotonic() < until:
            seed += 1
            files = {
                "video": ("v.mp4", video, "video/mp4"),
                "protocol": ("p.txt", protocol + f"3. Label tube {seed}.\n".encode()),
            }
            codes[f"direct {client.post('/v1/jobs', files=files).status_code}"] += 1
            r = client.post("/v1/uploads", headers={**TUS, "Upload-Length": str(len(video))})
            codes[f"create {r.status_code}"] += 1
            if r.status_code == 201:
                p = client.patch(
                    r.headers["location"],
                    content=video,
                    headers={
                        **TUS,
                        "Content-Type": "application/offset+octet-stream",
                        "Upload-Offset": "0",
                    },
                )
                codes[f"patch {p.status_code}"] += 1
                gone = client.delete(r.headers["location"], headers=TUS)
                codes[f"delete {gone.status_code}"] += 1
            preview = client.post("/v1/protocol/preview", files={"protocol": ("p.txt", protocol)})
            codes[f"preview {preview.status_code}"] += 1
            time.sleep(1.0)


def _health(base: str, until: float, latencies: list[float], codes: Counter) -> None:
    while time.monotonic() < until:
        t0 = time.monotonic()
        try:
            code = httpx.get(base + "/v1/healthz", verify=False, timeout=10).status_code
        except httpx.TransportError:
            code = 0
        latencies.append(time.monotonic() - t0)
        codes[f"healthz {code}"] += 1
        time.sleep(0.25)


def run_trickle(base: str, tokens: dict[str, str], seconds: float, tricklers: int) -> dict:
    """Run the scenario for ``seconds``; lab-b's and the health check's figures."""
    from biovl_core.synthetic import make_recording

    rec = make_recording(Path(tempfile.mkdtemp(prefix="trickle-")), "pcr", seed=1, duration_s=20)
    video = (rec / "video.mp4").read_bytes()
    until = time.monotonic() + seconds
    lab_a: Counter = Counter()
    lab_b: Counter = Counter()
    health: Counter = Counter()
    latencies: list[float] = []
    kinds = ("direct", "tus", "preview")
    threads = [
        threading.Thread(
            target=_trickler, args=(base, tokens["lab-a"], kinds[i % 3], until, lab_a), daemon=True
        )
        for i in range(tricklers)
    ]
    threads.append(
        threading.Thread(target=_lab_b, args=(base, tokens["lab-b"], video, until, lab_b))
    )
    threads.append(threading.Thread(target=_health, args=(base, until, latencies, health)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 180)
    ordered = sorted(latencies)
    return {
        "base": base,
        "seconds": seconds,
        "tricklers_lab_a": tricklers,
        "lab_a_codes": dict(lab_a),
        "lab_b_codes": dict(lab_b),
        "lab_b_503": sum(n for k, n in lab_b.items() if k.endswith(" 503")),
        "healthz_codes": dict(health),
        "healthz_n": len(latencies),
        "healthz_median_s": round(statistics.median(ordered), 3) if ordered else None,
        "healthz_p99_s": round(ordered[int(0.99 * (len(ordered) - 1))], 3) if ordered else None,
        "healthz_max_s": round(ordered[-1], 3) if ordered else float("inf"),
    }

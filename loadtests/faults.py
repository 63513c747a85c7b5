"""Fault injection against the real queue, workers and API: kills mid-job, a Redis outage, a
full archive disk; prints lost / duplicated / dead-lettered / slowest take-over as JSON.

    python loadtests/faults.py [--kills 20] [--outage-s 15] [--disk-full-s 60] [--out DIR]

What runs, all real: a private redis-server (AOF on, a free port; never the shared one), the
archive on a tmpfs mounted for the run (needs root; without it the disk-full phase is
skipped), two standalone ``python -m services worker`` processes with ``jobs_in_flight`` jobs
each, and the API app (``services.api``) in this process, probed over HTTP semantics with
Starlette's test client (server errors come back as responses, as a lab would see them).

1. kills: jobs are kept coming (8 outstanding); ``--kills`` times a worker process running
   jobs is SIGKILLed after a random 1-6 s and restarted. For each job running there, the
   take-over is the time from the kill to its claim by another consumer (Redis server time).
2. Redis outage: redis-server is SIGKILLed while jobs run, restarted after ``--outage-s``;
   a prober sends GET /v1/jobs/{id}, POST /v1/jobs and /v1/healthz every 0.5 s throughout.
3. disk full: the tmpfs is filled while jobs run and freed after ``--disk-full-s``.

Settings only the current code knows (re-claim slots, faults) are passed only when the code
under test has them, so the same script measures an older checkout (``--code ROOT``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The run's own redis-server (AOF on), to kill and restart on the same port and data."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it answers."""
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--dir", str(self.folder), "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL it."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Workers:
    """Standalone worker processes, killed and restarted by name."""

    def __init__(self, code: Path, config: Path, logs: Path) -> None:
        self.code, self.config, self.logs = code, config, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started: dict[str, float] = {}
        self._seq = 0

    def spawn(self) -> str:
        """Start one more worker process; returns its consumer name."""
        self._seq += 1
        name = f"w{self._seq}"
        env = dict(os.environ, PYTHONPATH=str(self.code), BIOVL_DEVICE="cpu", OMP_NUM_THREADS="1")
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "services", "worker", "--config", str(self.config)]
            + ["--consumer", name],
            cwd=self.code,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.started[name] = time.monotonic()
        return name

    def kill(self, name: str) -> None:
        """SIGKILL one worker process."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        """Stop them all."""
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def owned_by(worker: str | None, name: str) -> bool:
    """True when consumer ``worker`` is one of process ``name``'s slots."""
    return bool(worker) and (worker == name or str(worker).startswith(name + "-"))


class Run:
    """One fault-injection run: service, recordings, workers, prober."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        from fastapi.testclient import TestClient

        from biovl_core.synthetic import make_recording
        from services.api import JobService, create_app
        from services.settings import ServiceSettings
        from tests.fixtures_embed import make_tiny_clip_checkpoint, tiny_cfg

        self.args, self.root = args, root
        self.redis = Server(root / "redis")
        self.redis.start()
        self.archive = root / "archive"
        self.tmpfs = mount_tmpfs(self.archive, args.tmpfs_mb)
        checkpoint = make_tiny_clip_checkpoint(root / "tiny.pt", seed=0)
        cfg = tiny_cfg(checkpoint, segment_seconds=0.5, batch_size=8).to_dict()
        known = {f.name for f in dataclasses.fields(ServiceSettings)}
        wanted: dict[str, Any] = {
            "archive_dir": str(self.archive),
            "redis_url": self.redis.url,
            "lab_tokens": "lab-a:token-a-0123456789",
            "pipeline": cfg,
            "jobs_in_flight": args.jobs_in_flight,
            "worker_metrics_port": 0,
            "claim_block_ms": 500,
            "min_free_archive_bytes": 1024 * 1024,
        }
        self.settings = ServiceSettings(**{k: v for k, v in wanted.items() if k in known})
        self.config = root / "service.yaml"
        import yaml

        self.config.write_text(yaml.safe_dump({"service": self.settings.to_dict()}))
        self.service = JobService(self.settings)
        self.client = TestClient(create_app(self.service), raise_server_exceptions=False)
        self.auth = {"Authorization": "Bearer token-a-0123456789"}
        self.queue = self.service.queue
        recs = root / "recordings"
        self.recordings = [
            make_recording(recs / f"r{i}", "pcr", seed=i, duration_s=240, size=(96, 72), fps=4)
            for i in range(args.recordings)
        ]
        self.posted: list[str] = []
        self._variant = 0
        (root / "logs").mkdir(exist_ok=True)
        self.workers = Workers(args.code, self.config, root / "logs")
        self.codes: dict[str, dict[str, int]] = {}

    # ---- jobs ----------------------------------------------------------------------------
    def post(self) -> str | None:
        """POST one new job (a recording and a protocol variant not used before)."""
        n = self._variant
        self._variant += 1
        rec = self.recordings[n % len(self.recordings)]
        text = (rec / "protocol.txt").read_text() + f"\n{n // len(self.recordings)}. Note it.\n"
        files = {
            "video": ("video.mp4", (rec / "video.mp4").read_bytes(), "video/mp4"),
            "protocol": ("protocol.txt", text.encode(), "text/plain"),
        }
        r = self.client.post("/v1/jobs", files=files, headers=self.auth)
        self.count("submit", r.status_code)
        if r.status_code != 202:
            return None
        self.posted.append(r.json()["job_id"])
        return self.posted[-1]

    def count(self, what: str, code: int) -> None:
        """Tally an HTTP answer a lab got."""
        tally = self.codes.setdefault(what, {})
        tally[str(code)] = tally.get(str(code), 0) + 1

    def statuses(self) -> dict[str, dict[str, str]]:
        """Every posted job's status hash (empty ones while Redis is away)."""
        try:
            with self.queue.r.pipeline(transaction=False) as p:
                for job_id in self.posted:
                    p.hgetall(self.queue.status_key(job_id))
                return dict(zip(self.posted, p.execute(), strict=True))
        except Exception:
            return {}

    def wait_all_done(self, timeout_s: float) -> float:
        """Wait until every posted job succeeded or is dead; returns the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            st = self.statuses()
            if st and all(s.get("status") in ("succeeded", "dead") for s in st.values()):
                break
            time.sleep(0.5)
        return time.monotonic() - start

    def tally(self, first: int = 0) -> dict[str, Any]:
        """lost / duplicated / dead-lettered / attempts charged over the jobs posted since the
        ``first``-th (one phase's)."""
        jobs = self.posted[first:]
        st = self.statuses()
        lost = duplicated = charged = dead = 0
        for job_id in jobs:
            versions = self.service.archive.job("lab-a", job_id).versions()
            status = st.get(job_id, {}).get("status")
            duplicated += len(versions) > 1
            lost += not versions and status != "dead"
            dead += status == "dead"
            charged += max(0, int(st.get(job_id, {}).get("attempts", 1) or 1) - 1)
        return {
            "jobs": len(jobs),
            "lost": lost,
            "duplicated": duplicated,
            "dead_lettered": dead,
            "extra_attempts_charged": charged,
        }

    def running_on(self, name: str, st: dict[str, dict[str, str]]) -> list[str]:
        """Jobs running on worker process ``name``."""
        return [
            j
            for j, s in st.items()
            if s.get("status") == "running" and owned_by(s.get("worker"), name)
        ]

    # ---- phases --------------------------------------------------------------------------
    def kills(self) -> dict[str, Any]:
        """Kill a worker process mid-job ``--kills`` times; measure each take-over."""
        first = len(self.posted)
        rng = random.Random(0)
        for _ in range(2):
            self.workers.spawn()
        killed: dict[str, tuple[float, str]] = {}  # job -> (server time of the kill, process)
        takeovers: list[float] = []
        pending: list[tuple[str, float, str]] = []  # (job, kill time, process) not yet taken over
        next_kill = time.monotonic() + rng.uniform(3, 6)
        kills = 0
        deadline = time.monotonic() + self.args.phase_timeout_s
        while time.monotonic() < deadline:
            st = self.statuses()
            outstanding = [j for j, s in st.items() if s.get("status") not in ("succeeded", "dead")]
            if kills < self.args.kills and len(outstanding) < 8:
                self.post()
            for entry in list(pending):
                job, at, name = entry
                s = st.get(job, {})
                if s.get("worker") and not owned_by(s["worker"], name) and s.get("started_at"):
                    if float(s["started_at"]) >= at:
                        takeovers.append(float(s["started_at"]) - at)
                        pending.remove(entry)
                elif s.get("status") in ("succeeded", "dead"):
                    pending.remove(entry)
            if kills < self.args.kills and time.monotonic() >= next_kill:
                busy = [n for n in self.workers.procs if self.running_on(n, st)]
                if busy:
                    name = rng.choice(busy)
                    jobs = self.running_on(name, st)
                    self.workers.kill(name)
                    at = self.queue.now()
                    kills += 1
                    for job in jobs:
                        killed[job] = (at, name)
                        pending.append((job, at, name))
                    self.workers.spawn()
                    next_kill = time.monotonic() + rng.uniform(1, 6)
            if kills >= self.args.kills and not pending and not outstanding:
                break
            time.sleep(0.1)
        out = self.tally(first)
        out.update(
            kills=kills,
            jobs_killed_mid_job=len(killed),
            not_taken_over=len(pending),
            takeover_s={
                "n": len(takeovers),
                "median": round(statistics.median(takeovers), 1) if takeovers else None,
                "max": round(max(takeovers), 1) if takeovers else None,
            },
            lease_s=self.settings.visibility_timeout_s,
        )
        return out

    def probe(self, stop: threading.Event, what: str) -> None:
        """GET a job, POST a job and GET /v1/healthz every 0.5 s until ``stop``."""
        job = self.posted[-1] if self.posted else "0" * 40
        while not stop.is_set():
            got = self.client.get(f"/v1/jobs/{job}", headers=self.auth)
            self.count(f"{what}: GET /v1/jobs/{{id}}", got.status_code)
            self.post()
            self.count(f"{what}: GET /v1/healthz", self.client.get("/v1/healthz").status_code)
            stop.wait(0.5)

    def fault(self, what: str, start: Any, end: Any, hold_s: float) -> dict[str, Any]:
        """Post jobs, inject a fault while some run, hold it, end it; wait for every job."""
        first = len(self.posted)
        for _ in range(8):
            self.post()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = self.statuses()
            if sum(1 for s in st.values() if s.get("status") == "running") >= 2:
                break
            time.sleep(0.2)
        self.codes.pop("submit", None)
        stop = threading.Event()
        prober = threading.Thread(target=self.probe, args=(stop, what), daemon=True)
        start()
        prober.start()
        time.sleep(hold_s)
        end()
        stop.set()
        prober.join()
        waited = self.wait_all_done(self.args.phase_timeout_s)
        out = self.tally(first)
        out["seconds_to_finish_after_fault"] = round(waited, 1)
        out["answers"] = {k: v for k, v in self.codes.items() if k.startswith(what)}
        out["answers"]["POST /v1/jobs"] = self.codes.pop("submit", {})
        out["bare_500s"] = sum(v.get("500", 0) for v in out["answers"].values())
        return out

    def close(self) -> None:
        """Stop the workers and the server, unmount the tmpfs."""
        self.workers.stop()
        self.redis.kill()
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.archive)], capture_output=True)


def mount_tmpfs(path: Path, size_mb: int) -> bool:
    """Mount a tmpfs for the archive (True), or leave a plain folder (False: not root)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def fill(folder: Path) -> Path:
    """Fill ``folder``'s filesystem; returns the filler file."""
    filler = folder / "filler.bin"
    with open(filler, "ab") as fh:
        try:
            fh.write(b"\0" * shutil.disk_usage(folder).free)
            fh.flush()
        except OSError:
            pass
    return filler


def main(argv: list[str] | None = None) -> int:
    """Run the three phases and print their numbers as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--outage-s", type=float, default=15.0)
    parser.add_argument("--disk-full-s", type=float, default=60.0)
    parser.add_argument("--jobs-in-flight", type=int, default=4)
    parser.add_argument("--recordings", type=int, default=12)
    parser.add_argument("--tmpfs-mb", type=int, default=384)
    parser.add_argument("--phase-timeout-s", type=float, default=900.0)
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout under test")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    parser.add_argument("--phases", default="kills,redis,disk")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(args.code), str(REPO)]
    os.environ.setdefault("BIOVL_DEVICE", "cpu")
    root = Path(tempfile.mkdtemp(prefix="biovl-faults-"))
    run = Run(args, root)
    result: dict[str, Any] = {"code": str(args.code)}
    try:
        phases = args.phases.split(",")
        if "kills" in phases:
            result["kills"] = run.kills()
            print(json.dumps({"kills": result["kills"]}), flush=True)
        if "redis" in phases:
            if not run.workers.procs:
                run.workers.spawn()
            result["redis_outage"] = run.fault(
                "redis", run.redis.kill, run.redis.start, args.outage_s
            )
            print(json.dumps({"redis_outage": result["redis_outage"]}), flush=True)
        if "disk" in phases and run.tmpfs:
            filler: list[Path] = []
            result["disk_full"] = run.fault(
                "disk",
                lambda: filler.append(fill(run.archive)),
                lambda: filler[0].unlink(),
                args.disk_full_s,
            )
            print(json.dumps({"disk_full": result["disk_full"]}), flush=True)
    finally:
        run.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise SystemExit(main())

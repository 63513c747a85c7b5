"""Bounded load test: labs POST recordings and poll them; prints throughput and p50/p95 latencies.

    python loadtests/run.py                       # starts a local service (Ray Serve) itself
    python loadtests/run.py --url http://127.0.0.1:8000 --tokens lab1:TOKEN1,lab2:TOKEN2

Only 127.0.0.1 / localhost targets are accepted. The scenario is bounded twice: a fixed number of
jobs per lab and a wall-clock limit. Driver: asyncio + httpx (``loadtests/locustfile.py`` is the
same scenario for Locust, for runs against a long-lived service).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Stats:
    """Latencies (s) by kind and job outcomes."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    video_s: float = 0.0

    def add(self, kind: str, seconds: float) -> None:
        """Record one latency."""
        self.latencies.setdefault(kind, []).append(seconds)

    def count(self, outcome: str) -> None:
        """Record one job outcome."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def make_uploads(
    folder: Path, count: int, duration_s: float
) -> list[dict[str, tuple[str, bytes, str]]]:
    """``count`` distinct generated recordings as multipart file dicts."""
    from biovl_core.synthetic_video import make_recording

    uploads = []
    for i in range(count):
        rec = make_recording(
            folder / f"rec{i}", "pcr", seed=i, duration_s=duration_s, size=(160, 120)
        )
        uploads.append(
            {
                "video": ("video.mp4", (rec / "video.mp4").read_bytes(), "video/mp4"),
                "protocol": ("protocol.txt", (rec / "protocol.txt").read_bytes(), "text/plain"),
            }
        )
    return uploads


async def lab_session(
    client: httpx.AsyncClient,
    token: str,
    uploads: list[dict[str, tuple[str, bytes, str]]],
    stats: Stats,
    deadline: float,
    poll_s: float,
) -> None:
    """One lab: submit its recordings one after another, polling each until it finishes."""
    headers = {"Authorization": f"Bearer {token}"}
    for files in uploads:
        if time.monotonic() > deadline:
            stats.count("not_started")
            continue
        t0 = time.monotonic()
        r = await client.post("/v1/jobs", files=files, headers=headers)
        stats.add("POST /v1/jobs", time.monotonic() - t0)
        if r.status_code != 202:
            stats.count(f"rejected_{r.status_code}")
            continue
        url = r.json()["urls"]["self"]
        while True:
            if time.monotonic() > deadline:
                stats.count("timed_out")
                break
            t1 = time.monotonic()
            g = await client.get(url, headers=headers)
            stats.add("GET /v1/jobs/{id}", time.monotonic() - t1)
            body = g.json()
            if body["status"] in ("succeeded", "dead"):
                stats.count(body["status"])
                if body["status"] == "succeeded":
                    stats.add("job end to end", time.monotonic() - t0)
                    stats.video_s += float(body["result"]["duration_s"] or 0)
                break
            await asyncio.sleep(poll_s)


async def run_scenario(
    base_url: str,
    tokens: dict[str, str],
    uploads_per_lab: list[list[dict[str, tuple[str, bytes, str]]]],
    limit_s: float,
    poll_s: float,
) -> tuple[Stats, float]:
    """All labs concurrently; returns (stats, wall seconds)."""
    stats = Stats()
    start = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        await asyncio.gather(
            *(
                lab_session(client, token, ups, stats, start + limit_s, poll_s)
                for token, ups in zip(tokens.values(), uploads_per_lab, strict=False)
            )
        )
    return stats, time.monotonic() - start


def report(stats: Stats, wall_s: float) -> None:
    """Print throughput and latency percentiles."""
    done = stats.outcomes.get("succeeded", 0)
    print(f"\nwall time            {wall_s:8.1f} s")
    print(f"jobs                 {stats.outcomes}")
    print(
        f"throughput           {done / wall_s * 60:8.2f} jobs/min   {stats.video_s / wall_s:6.2f} video-s/s"
    )
    print(f"{'latency':<20} {'n':>5} {'p50 (s)':>9} {'p95 (s)':>9} {'max (s)':>9}")
    for kind, values in stats.latencies.items():
        print(
            f"{kind:<20} {len(values):>5} {percentile(values, 0.5):>9.3f} "
            f"{percentile(values, 0.95):>9.3f} {max(values):>9.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start a local service if no --url, run the scenario, print the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running service on 127.0.0.1 (default: start one)")
    parser.add_argument("--tokens", help="lab:token,... for --url")
    parser.add_argument("--labs", type=int, default=3)
    parser.add_argument("--jobs-per-lab", type=int, default=3)
    parser.add_argument("--video-seconds", type=float, default=40.0)
    parser.add_argument("--limit-s", type=float, default=300.0, help="wall-clock bound")
    parser.add_argument("--poll-s", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=8000, help="port of the service started here")
    args = parser.parse_args(argv)

    stack = None
    if args.url:
        host = urlparse(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            parser.error(f"refusing to load-test {host}: only 127.0.0.1 / localhost targets")
        if not args.tokens:
            parser.error("--url needs --tokens lab:token,...")
        tokens = dict(item.split(":", 1) for item in args.tokens.split(","))
        base_url = args.url
    else:
        import os

        from services.run_local import start_local_stack

        tokens = {f"lab{i + 1}": secrets.token_urlsafe(12) for i in range(args.labs)}
        os.environ["BIOVL_LAB_TOKENS"] = ",".join(f"{k}:{v}" for k, v in tokens.items())
        var = Path(tempfile.mkdtemp(prefix="biovl-load-"))
        stack = start_local_stack(var, args.port)
        base_url = stack.base_url
    try:
        with tempfile.TemporaryDirectory() as tmp:
            n = len(tokens) * args.jobs_per_lab
            print(f"generating {n} recordings of {args.video_seconds:g} s ...", flush=True)
            uploads = make_uploads(Path(tmp), n, args.video_seconds)
            per_lab = [uploads[i :: len(tokens)] for i in range(len(tokens))]
            print(
                f"{len(tokens)} labs x {args.jobs_per_lab} jobs against {base_url}, limit {args.limit_s:g} s"
            )
            stats, wall = asyncio.run(
                run_scenario(base_url, tokens, per_lab, args.limit_s, args.poll_s)
            )
        report(stats, wall)
        return 0 if stats.outcomes.get("succeeded", 0) == n else 1
    finally:
        if stack is not None:
            stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())

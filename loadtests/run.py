"""Bounded load test: labs POST recordings and poll them; prints throughput, p50/p95 latencies and
how busy the CPUs were.

    python loadtests/run.py --labs 6              # three phases on local services (Ray Serve) it starts:
                                                  # "today", jobs_in_flight=1, jobs_in_flight=auto
    python loadtests/run.py --phases 1,2,4,auto   # any list of phases, side by side
    python loadtests/run.py --url http://127.0.0.1:8000 --tokens lab1:TOKEN1,lab2:TOKEN2

A phase is a ``jobs_in_flight`` setting (a number or ``auto``, torch threads ``auto``), or
``today``: the service as it ran before ``services/concurrency.py``, one job in flight per worker
and the Embedder on one torch thread (Ray's OMP_NUM_THREADS=1 in replicas that reserve no CPUs).
Each phase starts a fresh service (its own archive, so nothing is deduplicated across phases),
runs one warm-up job, then the measured scenario: a fixed number of jobs per lab, bounded by a
wall-clock limit. CPU busy % is the whole machine's (``/proc/stat`` through psutil: every process,
other users included) and the service's own share (the CPU time of the processes this run
started, over wall time x cores). Driver: asyncio + httpx (``loadtests/locustfile.py`` is the same
scenario for Locust, for runs against a long-lived service).

Debian's Prometheus scrapes the service's metrics port (``--metrics-port``) every second through
the run; at the end ``loadtests/plot.py`` draws throughput, queue depth and stage latency over
the phases from the dashboard's own queries into ``artifacts/loadtest.png`` (``--png``;
``--no-png`` runs without Prometheus).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCRAPE_S = 1.0  # Prometheus scrapes the service this often during the run (the picture's step)


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


class CpuMeter:
    """CPU busy % over a run: the whole machine's, and that of this process's children (the
    service it started), sampled every ``interval_s`` so short-lived children are counted too."""

    def __init__(self, interval_s: float = 0.5, exclude: frozenset[int] = frozenset()) -> None:
        self.interval_s = interval_s
        self.exclude = exclude  # children that are not the service (the Prometheus server)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, name="cpu-meter", daemon=True)
        self._first: dict[int, float] = {}  # CPU seconds of each child when first seen
        self._last: dict[int, float] = {}
        self._names: dict[int, str] = {}
        self._started = False  # children first seen after the start count from zero

    def _sample_children(self) -> None:
        for proc in psutil.Process().children(recursive=True):
            if proc.pid in self.exclude:
                continue
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            used = times.user + times.system
            self._first.setdefault(proc.pid, 0.0 if self._started else used)
            self._last[proc.pid] = used
            if proc.pid not in self._names:
                try:
                    self._names[proc.pid] = proc.name()  # Ray workers: ray::ServeReplica:...
                except psutil.Error:
                    self._names[proc.pid] = str(proc.pid)

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample_children()

    def __enter__(self) -> CpuMeter:
        self._sample_children()  # processes alive now: only their time from here on counts
        self._started = True
        self._machine = psutil.cpu_times()
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_children()
        self.wall_s = time.monotonic() - self._t0
        end = psutil.cpu_times()
        total = sum(end) - sum(self._machine)
        idle = (end.idle + getattr(end, "iowait", 0.0)) - (
            self._machine.idle + getattr(self._machine, "iowait", 0.0)
        )
        self.machine_busy_pct = 100.0 * (1.0 - idle / total) if total > 0 else float("nan")
        by_name: dict[str, float] = {}
        for pid, last in self._last.items():
            name = self._names.get(pid, str(pid))
            by_name[name] = by_name.get(name, 0.0) + last - self._first.get(pid, 0.0)
        cores = psutil.cpu_count() or 1
        self.service_busy_pct = 100.0 * sum(by_name.values()) / (self.wall_s * cores)
        self.by_process_pct = {
            name: 100.0 * used / (self.wall_s * cores)
            for name, used in sorted(by_name.items(), key=lambda kv: -kv[1])
        }


@dataclass
class PhaseResult:
    """One phase's setting, stats and CPU figures."""

    setting: str
    stats: Stats
    wall_s: float
    machine_busy_pct: float
    service_busy_pct: float
    by_process_pct: dict[str, float] = field(default_factory=dict)
    plan: str = ""
    window: tuple[float, float] = (0.0, 0.0)  # Unix time span of the measured scenario

    @property
    def jobs_per_min(self) -> float:
        """Succeeded jobs per wall minute."""
        return self.stats.outcomes.get("succeeded", 0) / self.wall_s * 60


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
    from biovl_core.synthetic import make_recording

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


def report(result: PhaseResult) -> None:
    """Print one phase: throughput, CPU busy % and latency percentiles."""
    stats, wall_s = result.stats, result.wall_s
    done = stats.outcomes.get("succeeded", 0)
    print(f"\n--- phase {result.setting}: {result.plan}")
    print(f"wall time            {wall_s:8.1f} s")
    print(f"jobs                 {stats.outcomes}")
    print(
        f"throughput           {done / wall_s * 60:8.2f} jobs/min   {stats.video_s / wall_s:6.2f} video-s/s"
    )
    print(
        f"CPU busy             {result.machine_busy_pct:8.1f} % machine   "
        f"{result.service_busy_pct:6.1f} % by the service"
    )
    top = [f"{name} {pct:.0f}%" for name, pct in result.by_process_pct.items() if pct >= 1.0]
    print(f"CPU by process       {', '.join(top[:6])}")
    print(f"{'latency':<20} {'n':>5} {'p50 (s)':>9} {'p95 (s)':>9} {'max (s)':>9}")
    for kind, values in stats.latencies.items():
        print(
            f"{kind:<20} {len(values):>5} {percentile(values, 0.5):>9.3f} "
            f"{percentile(values, 0.95):>9.3f} {max(values):>9.3f}"
        )


def summary_table(results: list[PhaseResult], labs: int, jobs_per_lab: int) -> str:
    """The phases side by side as a Markdown table (pasted into docs/BENCHMARKS.md)."""
    base = results[0].jobs_per_min or float("nan")
    lines = [
        f"{labs} labs x {jobs_per_lab} jobs, {psutil.cpu_count()} cores",
        "",
        "| phase (jobs in flight per worker) | jobs/min | x first | video-s/s | CPU busy (machine) "
        "| CPU busy (service) | job p50 (s) | job p95 (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        e2e = r.stats.latencies.get("job end to end", [])
        lines.append(
            f"| {r.setting} | {r.jobs_per_min:.1f} | {r.jobs_per_min / base:.2f} "
            f"| {r.stats.video_s / r.wall_s:.1f} | {r.machine_busy_pct:.0f} % "
            f"| {r.service_busy_pct:.0f} % | {percentile(e2e, 0.5):.1f} | {percentile(e2e, 0.95):.1f} |"
        )
    return "\n".join(lines)


Uploads = list[dict[str, tuple[str, bytes, str]]]


def measure(
    base_url: str,
    tokens: dict[str, str],
    uploads: Uploads,
    args: argparse.Namespace,
    setting: str,
    plan: str = "",
) -> PhaseResult:
    """One warm-up job (uploads[0], not counted), then the scenario on the rest, CPU metered."""
    warm_lab = next(iter(tokens.values()))
    warm_stats, _ = asyncio.run(
        run_scenario(base_url, {"warm": warm_lab}, [uploads[:1]], args.limit_s, args.poll_s)
    )
    if warm_stats.outcomes.get("succeeded", 0) != 1:
        raise RuntimeError(f"the warm-up job did not succeed: {warm_stats.outcomes}")
    timed = uploads[1:]
    per_lab = [timed[i :: len(tokens)] for i in range(len(tokens))]
    print(
        f"{len(tokens)} labs x {args.jobs_per_lab} jobs against {base_url} "
        f"(phase {setting}), limit {args.limit_s:g} s",
        flush=True,
    )
    started = time.time()
    with CpuMeter(exclude=args.exclude_pids) as meter:
        stats, wall = asyncio.run(
            run_scenario(base_url, tokens, per_lab, args.limit_s, args.poll_s)
        )
    return PhaseResult(
        setting,
        stats,
        wall,
        meter.machine_busy_pct,
        meter.service_busy_pct,
        meter.by_process_pct,
        plan,
        (started, time.time()),
    )


PHASE_PRESETS: dict[str, dict[str, str]] = {
    "today": {"jobs_in_flight": "1", "torch_threads": "1"},
}
"""Named phases: the settings they stand for (any other phase is a ``jobs_in_flight`` value)."""


def phase_settings(phase: str) -> dict[str, str]:
    """The service settings of one phase."""
    return PHASE_PRESETS.get(phase, {"jobs_in_flight": phase})


def run_local_phase(
    setting: str, tokens: dict[str, str], uploads: Uploads, args: argparse.Namespace
) -> PhaseResult:
    """Start a fresh local service with the phase's settings, measure it, stop it."""
    from services.concurrency import plan_concurrency
    from services.run_local import start_local_stack

    var = Path(tempfile.mkdtemp(prefix="biovl-load-"))
    stack = start_local_stack(
        var,
        args.port,
        quiet=True,
        worker_metrics_port=args.metrics_port,
        **phase_settings(setting),
    )
    try:
        plan = plan_concurrency(stack.settings).describe()
        print(plan, flush=True)
        return measure(stack.base_url, tokens, uploads, args, setting, plan)
    finally:
        stack.stop()


def picture(prom: Any, results: list[PhaseResult], args: argparse.Namespace, labs: int) -> None:
    """The PNG of throughput, queue depth and stage latency over the phases (loadtests/plot.py)."""
    from loadtests.plot import Window, write_png

    time.sleep(3 * SCRAPE_S)  # the last scrapes after the last phase
    windows = [Window(r.setting, *r.window) for r in results]
    title = (
        f"make loadtest: {labs} labs x {args.jobs_per_lab} jobs of {args.video_seconds:g} s video, "
        f"{psutil.cpu_count()} cores"
    )
    path = write_png(prom, windows, args.png, title, step_s=SCRAPE_S)
    print(f"picture: {path}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run each phase (or the given --url), print the reports and the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running service on 127.0.0.1 (default: start one)")
    parser.add_argument("--tokens", help="lab:token,... for --url")
    parser.add_argument("--labs", type=int, default=6)
    parser.add_argument("--jobs-per-lab", type=int, default=3)
    parser.add_argument("--video-seconds", type=float, default=40.0)
    parser.add_argument("--limit-s", type=float, default=300.0, help="wall-clock bound per phase")
    parser.add_argument("--poll-s", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=8000, help="port of the service started here")
    parser.add_argument(
        "--phases",
        default="today,1,auto",
        help='phases side by side: "today" or a jobs_in_flight setting (default "today,1,auto")',
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9464,
        help="the service's metrics port on 127.0.0.1, scraped by Prometheus for the picture",
    )
    parser.add_argument(
        "--png",
        type=Path,
        default=ROOT / "artifacts" / "loadtest.png",
        help="where the picture of throughput, queue depth and stage latency goes",
    )
    parser.add_argument("--no-png", action="store_true", help="no Prometheus, no picture")
    args = parser.parse_args(argv)
    args.exclude_pids = frozenset()
    if not args.no_png:
        from loadtests.prom import PrometheusUnavailable, find_tool

        try:
            find_tool("prometheus")
        except PrometheusUnavailable as exc:
            parser.error(f"{exc} (or pass --no-png)")

    if args.url:
        host = urlparse(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            parser.error(f"refusing to load-test {host}: only 127.0.0.1 / localhost targets")
        if not args.tokens:
            parser.error("--url needs --tokens lab:token,...")
        tokens = dict(item.split(":", 1) for item in args.tokens.split(","))
    else:
        tokens = {f"lab{i + 1}": secrets.token_urlsafe(12) for i in range(args.labs)}
        os.environ["BIOVL_LAB_TOKENS"] = ",".join(f"{k}:{v}" for k, v in tokens.items())
    n = len(tokens) * args.jobs_per_lab
    results: list[PhaseResult] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        prom = None
        if not args.no_png:
            from loadtests.prom import Prometheus

            target = f"127.0.0.1:{args.metrics_port}"
            prom = stack.enter_context(
                Prometheus.scraping([target], Path(tmp) / "prometheus", interval_s=SCRAPE_S)
            )
            args.exclude_pids = frozenset({prom.proc.pid})
        print(f"generating {n + 1} recordings of {args.video_seconds:g} s ...", flush=True)
        uploads = make_uploads(Path(tmp), n + 1, args.video_seconds)
        if args.url:
            results.append(measure(args.url, tokens, uploads, args, "as deployed"))
        else:
            for setting in [p.strip() for p in args.phases.split(",") if p.strip()]:
                results.append(run_local_phase(setting, tokens, uploads, args))
        for r in results:
            report(r)
        print("\n" + summary_table(results, len(tokens), args.jobs_per_lab))
        if prom is not None:
            picture(prom, results, args, len(tokens))
    return 0 if all(r.stats.outcomes.get("succeeded", 0) == n for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

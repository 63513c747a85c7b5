"""The ``biovl realign`` command line: its options, the run from parsed arguments, the printed summary."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from services import metrics
from services.realign.run import DEFAULT_BATCH, realign_archive
from services.settings import ServiceSettings, load_settings

log = logging.getLogger("biovl.realign")

DESCRIPTION = "re-align every archived recording with the current model and aligner"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``realign`` options (shared by ``python -m services realign`` and ``biovl realign``)."""
    parser.add_argument("--archive", help="archive folder (default: the service's archive_dir)")
    parser.add_argument(
        "--ray",
        default="auto",
        help="auto (join a reachable cluster, else run here) | local | a cluster ADDRESS",
    )
    parser.add_argument("--method", help="aligner method for every job (default: configured)")
    parser.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help="recordings per align_batch call"
    )
    parser.add_argument("--dry-run", action="store_true", help="only report what would be done")
    parser.add_argument("--limit", type=int, default=None, help="re-align at most N recordings")
    parser.add_argument("--actors", type=int, default=None, help="embedding actors (Ray)")
    parser.add_argument("--json", help="also write the summary as JSON to this file")
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="serve /metrics on this port while running"
    )
    parser.add_argument(
        "--metrics-linger-s",
        type=float,
        default=0.0,
        help="with --metrics-port, keep serving this long after the run (a scrape interval or "
        "two), so Prometheus sees the final counts of a run that ends between scrapes",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--groups",
        action="store_true",
        help="then co-align each (lab, protocol) group; a new version where spans change",
    )


def cmd_realign(args: argparse.Namespace) -> int:
    """Run the re-aligner from parsed arguments; 0 when nothing failed, 1 otherwise."""
    settings = load_settings(getattr(args, "config", None))
    root = args.archive or getattr(args, "archive_dir", None) or settings.archive_dir
    if getattr(args, "metrics_port", 0):
        metrics.serve_metrics(args.metrics_port)
    try:
        return _run_and_report(args, settings, root)
    finally:
        if getattr(args, "metrics_port", 0) and getattr(args, "metrics_linger_s", 0) > 0:
            time.sleep(args.metrics_linger_s)


def _run_and_report(args: argparse.Namespace, settings: ServiceSettings, root: str) -> int:
    """The run itself and its printed summary; 0 when nothing failed, 1 otherwise."""
    summary = realign_archive(
        root,
        settings.pipeline_config(),
        use_ray=args.ray,
        progress=not args.quiet,
        method=args.method,
        batch=args.batch,
        dry_run=args.dry_run,
        limit=args.limit,
        actors=args.actors or settings.embedder_replicas,
        embed_num_gpus=settings.embedder_num_gpus,
        embed_resources=settings.deployment_resources.get("Embedder"),
        align_num_gpus=settings.aligner_num_gpus,
        groups=args.groups,
    )
    if summary.dry_run:
        print(
            f"realign (dry run): {summary.total} recordings: {summary.planned} to re-align "
            f"({summary.from_cache} from cached embeddings, {summary.embedded} to decode + "
            f"embed), {summary.skipped} skipped"
        )
        print(summary.table())
        return 0
    mode = "ray" if summary.ray else "local"
    print(
        f"realign ({mode}): {summary.total} recordings: {summary.done} done, "
        f"{summary.skipped} skipped, {summary.failed} failed; {summary.embedded} embedded, "
        f"{summary.from_cache} from cached embeddings; {summary.spans_changed} step spans moved "
        f"in {summary.recordings_changed} recordings; {summary.align_calls} align_batch call(s); "
        f"{summary.seconds:.1f}s"
    )
    print(summary.table())
    if summary.groups is not None:
        g = summary.groups
        print(
            f"groups: {g['groups']} co-aligned ({g['recordings']} recordings): {g['written']} new "
            f"versions ({g['spans_changed']} step spans moved), {g['unchanged']} unchanged, "
            f"{g['failed']} failed"
        )
    for o in summary.outcomes:
        if o.outcome == "failed":
            print(f"failed {o.lab}/{o.job_id}: {o.reason}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return 1 if summary.failed or (summary.groups or {}).get("failed") else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m services.realign [options]``."""
    parser = argparse.ArgumentParser(prog="biovl realign", description=DESCRIPTION)
    parser.add_argument("--config", help="service YAML (default: $BIOVL_SERVICE_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return cmd_realign(args)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

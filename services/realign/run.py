"""One ``biovl realign`` run: lock the archive, plan, run the stages here or on Ray, count
each outcome (metrics, progress bar) into the summary."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from tqdm import tqdm

from biovl_core.config import PipelineConfig
from services import metrics
from services.archive import Archive
from services.realign.groups import GroupPass, plan_groups, run_groups
from services.realign.plan import ModelIdentity, Plan, plan
from services.realign.report import RealignSummary, RecordingOutcome
from services.realign.runners import ray_connection, run_local, run_lock, run_ray
from services.runner import LocalRunner

log = logging.getLogger("biovl.realign")

DEFAULT_BATCH = 256  # recordings per align_batch call (and per write batch)
STAGES = ("embed", "align", "write")
OnOutcome = Callable[[RecordingOutcome], None]


def realign_archive(
    archive_root: str | Path,
    cfg: PipelineConfig,
    *,
    use_ray: str = "local",
    progress: bool = True,
    method: str | None = None,
    batch: int = DEFAULT_BATCH,
    dry_run: bool = False,
    limit: int | None = None,
    actors: int = 1,
    embed_num_gpus: float = 0.0,
    embed_resources: dict[str, float] | None = None,
    align_num_gpus: float = 0.0,
    runner: LocalRunner | None = None,
    on_outcome: OnOutcome | None = None,
    groups: bool = False,
) -> RealignSummary:
    """Re-align every archived recording whose latest alignment is not current; see the package doc.

    ``method`` overrides the aligner method for every job (else ``cfg.method`` + the job's own
    options); ``use_ray`` is "local", "auto" or a cluster address; ``embed_resources`` are Ray
    custom resources of the embedding actors (the service's Embedder placement). ``groups``: then
    co-align every (lab, protocol) group (``realign/groups.py``), a new version where spans change.
    """
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    started = time.perf_counter()
    archive = Archive(archive_root)
    cfg = _run_config(cfg, archive, method)
    runner = runner or LocalRunner()
    summary = RealignSummary(dry_run=dry_run)
    t0 = time.perf_counter()
    ident = ModelIdentity.of(runner.embedder(cfg))
    with run_lock(archive) if not dry_run else nullcontext():
        the_plan = plan(archive, cfg, ident, method=method, limit=limit)
        summary.total, summary.planned = the_plan.total, len(the_plan.tasks)
        summary.stage_seconds["read"] = time.perf_counter() - t0
        for rec in the_plan.settled:
            _count(summary, rec, on_outcome)
        if dry_run:
            _dry_run_report(summary, the_plan, cfg)
        else:
            ray_options = {
                "actors": actors,
                "embed_num_gpus": embed_num_gpus,
                "embed_resources": embed_resources,
                "align_num_gpus": align_num_gpus,
            }
            _run_tasks(summary, the_plan, runner, use_ray, batch, ray_options, progress, on_outcome)
            if groups:
                summary.groups = _run_group_pass(archive, cfg, ident, method, use_ray)
    summary.seconds = time.perf_counter() - started
    return summary


def _run_config(cfg: PipelineConfig, archive: Archive, method: str | None) -> PipelineConfig:
    """The run's base config: the embedding cache in the archive unless the config names another
    folder, and ``method`` (without its old parameters) when one is forced."""
    if not cfg.cache_dir:
        cfg = cfg.replace(cache_dir=str(archive.root / "embeddings"))
    return cfg.replace(method=method, method_params={}) if method is not None else cfg


def _run_tasks(
    summary: RealignSummary,
    the_plan: Plan,
    runner: LocalRunner,
    use_ray: str,
    batch: int,
    ray_options: dict[str, Any],
    progress: bool,
    on_outcome: OnOutcome | None,
) -> None:
    """Run the planned tasks through the stages (on Ray when reachable), counting each outcome."""
    tasks, ident = the_plan.tasks, the_plan.identity
    if tasks:
        log.info(
            "realign: %d of %d recordings to re-align with %s (%s), config %s",
            len(tasks),
            the_plan.total,
            ident.model_id,
            ident.weights,
            tasks[0].config_key,
        )
    interactive = sys.stderr.isatty()
    with (
        tqdm(
            total=len(tasks),
            unit="rec",
            desc="realign",
            file=sys.stderr,
            disable=not (progress and tasks),
            mininterval=0.1 if interactive else 10.0,  # a log file gets a line every 10 s
        ) as bar,
        ray_connection(use_ray if tasks else "local") as on_ray,
    ):
        summary.ray = on_ray
        if on_ray:
            rows = run_ray(tasks, ident, batch, **ray_options)
        else:
            rows = run_local(tasks, ident, runner, batch)
        failed = 0
        for row in rows:
            rec = RecordingOutcome.of(row)
            for stage in STAGES:
                summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + float(
                    row[f"{stage}_s"]
                )
            summary.align_calls += int(row["align_calls"])
            _count(summary, rec, on_outcome)
            if rec.outcome == "failed":
                failed += 1
                log.warning("realign %s/%s failed: %s", rec.lab, rec.job_id, rec.reason)
            bar.update(1)
            bar.set_postfix(failed=failed, refresh=False)


def _run_group_pass(
    archive: Archive, cfg: PipelineConfig, ident: ModelIdentity, method: str | None, use_ray: str
) -> dict[str, Any]:
    """Co-align every group of the archive (on Ray when reachable); the pass's counts."""
    start = time.perf_counter()
    rows = plan_groups(archive, cfg, ident, method)
    counts = GroupPass(groups=len({r["group"] for r in rows}))
    with ray_connection(use_ray if rows else "local") as on_ray:
        counts.ray = on_ray
        for rec in run_groups(rows, ident, on_ray):
            counts.add(rec)
            if rec.outcome == "failed":
                log.warning("co-align %s/%s failed: %s", rec.lab, rec.job_id, rec.reason)
    log.info("group pass: %s in %.1fs", counts, time.perf_counter() - start)
    return dataclasses.asdict(counts)


def _count(summary: RealignSummary, rec: RecordingOutcome, on_outcome: OnOutcome | None) -> None:
    """Add one outcome to the summary, the metrics (real runs) and the caller's callback."""
    summary.add(rec)
    if not summary.dry_run:
        metrics.REALIGN_RECORDINGS.labels(outcome=rec.outcome).inc()
    if on_outcome is not None:
        on_outcome(rec)


def _dry_run_report(summary: RealignSummary, the_plan: Plan, cfg: PipelineConfig) -> None:
    """Log what a real run would do: per task, embeddings cached or to compute."""
    from biovl_core.embed import EmbeddingCache

    ident = the_plan.identity
    cached = 0
    for task in the_plan.tasks:
        tcfg = json.loads(task.config)
        cache = EmbeddingCache(tcfg["cache_dir"] or cfg.cache_dir)
        sha = task.video_sha256
        hit = (
            bool(sha)
            and cache.get(
                sha,
                ident.model_key,
                tcfg["segment_seconds"],
                ident.frames_per_segment,
                PipelineConfig.from_dict(tcfg).sampling_key(),
            )
            is not None
        )
        cached += int(hit)
    log.info(
        "dry run: %d recordings to re-align (%d from cached embeddings, %d to decode + embed), "
        "%d skipped",
        len(the_plan.tasks),
        cached,
        len(the_plan.tasks) - cached,
        summary.skipped,
    )
    summary.from_cache, summary.embedded = cached, len(the_plan.tasks) - cached

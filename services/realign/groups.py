"""The group pass of ``biovl realign --groups``: every (lab, protocol) group co-aligned at once
(``biovl_core.group.coalign`` over its members' cached embeddings and annotations), a new
version written only where a recording's spans change (a version whose boundaries the worker
refined off the grid stands while its grid labels do: ``refined_on_same_grid``).

It runs after the per-recording pass, which leaves every recording with current embeddings in
the cache. Under Ray the rows are grouped by Ray Data (``groupby("group").map_groups``: one
group's recordings in one call, wherever it runs); locally the same two functions run here.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biovl_core.align import TEXT_METHOD, GroupContext, GroupMember, coalign
from biovl_core.config import PipelineConfig
from biovl_core.pipeline import resolve_method
from services.archive import Archive, JobFiles
from services.groups import map_spans, protocol_groups
from services.realign.plan import ModelIdentity, experiment_of, job_config, realign_key
from services.realign.report import RecordingOutcome, error_text, spans_changed
from services.realign.stages import Batch, columns, outputs, rows_of
from services.runner import annotate_payload

log = logging.getLogger("biovl.realign")

WORKER_NAME = "realign-group"
NO_EMBEDDINGS = "group: no cached embeddings for the current model"


@dataclass
class GroupPass:
    """What the group pass did: groups co-aligned, recordings in them, versions written."""

    groups: int = 0
    recordings: int = 0
    written: int = 0
    unchanged: int = 0
    failed: int = 0
    spans_changed: int = 0
    ray: bool = False  # ran as a Ray Data pipeline

    def add(self, rec: RecordingOutcome) -> None:
        """Count one member's outcome."""
        self.recordings += 1
        if rec.outcome == "done":
            self.written += 1
            self.spans_changed += rec.spans_changed or 0
        elif rec.outcome == "failed":
            self.failed += 1
        else:
            self.unchanged += 1


def plan_groups(
    archive: Archive, cfg: PipelineConfig, ident: ModelIdentity, method: str | None = None
) -> list[dict[str, Any]]:
    """One row per member of every group of two or more aligned recordings that use the group's
    text method; ``group`` = lab / protocol key / segment length (groups never cross labs)."""
    rows: list[dict[str, Any]] = []
    for (lab, key), recordings in protocol_groups(archive).items():
        members = []
        for rec in recordings:
            latest = rec.jf.latest_alignment()
            sha = rec.record.get("video_sha256")
            job_cfg = job_config(cfg, rec.record, method)
            grouped = resolve_method(job_cfg) == TEXT_METHOD  # as the worker's align_in_group
            if latest is None or not sha or not grouped or not job_cfg.cache_dir:
                continue
            spans, corrected = rec.annotation()
            members.append(
                {
                    "group": f"{lab}/{key}/{job_cfg.segment_seconds:g}",
                    "protocol_key": key,
                    "lab": lab,
                    "job_id": rec.jf.job_id,
                    "dir": str(rec.jf.dir),
                    "experiment": experiment_of(rec.record),
                    "config": json.dumps(job_cfg.to_dict()),
                    "config_key": realign_key(job_cfg, ident),
                    "previous_version": latest[0],
                    "video_sha256": str(sha),
                    "duration_s": float(latest[1].get("duration_s") or 0.0),
                    "title": str(latest[1].get("title") or ""),
                    "steps": json.dumps(rec.steps),
                    "annotation": json.dumps(spans),
                    "corrected": bool(corrected),
                }
            )
        rows.extend(members)
    sizes: dict[str, int] = {}
    for r in rows:
        sizes[r["group"]] = sizes.get(r["group"], 0) + 1
    return [r for r in rows if sizes[r["group"]] >= 2]


def _annotation(row: dict[str, Any], steps: list[str]) -> tuple[tuple[Any, ...] | None, bool]:
    """A member's annotation over ``steps`` (None where its steps do not all match)."""
    spans = json.loads(str(row["annotation"]))
    if spans is None:
        return None, False
    try:
        mapped = map_spans([None if s is None else tuple(s) for s in spans], _steps(row), steps)
    except ValueError:
        return None, False
    return tuple(mapped), bool(row["corrected"])


def _steps(row: dict[str, Any]) -> list[str]:
    return [str(s) for s in json.loads(str(row["steps"]))]


def coalign_stage(batch: Batch, identity: dict[str, Any]) -> Batch:
    """All rows of ONE group -> the same rows + payload, csv, vtt, error (``map_groups``)."""
    from biovl_core.align import align
    from biovl_core.embed import EmbeddingCache

    ident = ModelIdentity.from_dict(identity)
    rows = rows_of(batch)
    outs: list[dict[str, Any]] = [{"payload": "", "csv": "", "vtt": "", "error": ""} for _ in rows]
    frames: dict[int, np.ndarray] = {}
    times: dict[int, np.ndarray | None] = {}  # the embedded frames' times, where cached
    cfg = PipelineConfig.from_dict(json.loads(str(rows[0]["config"]))) if rows else None
    cache = EmbeddingCache(cfg.cache_dir) if cfg is not None and cfg.cache_dir else None
    for i, row in enumerate(rows):
        emb = None
        if cache is not None:
            key = (str(row["video_sha256"]), ident.model_key, cfg.segment_seconds)
            emb = cache.get(*key, ident.frames_per_segment, cfg.sampling_key())
            times[i] = cache.get_frame_times(*key, ident.frames_per_segment, cfg.sampling_key())
        if emb is None:
            outs[i]["error"] = NO_EMBEDDINGS  # the per-recording pass could not embed it
        else:
            frames[i] = emb
    present = sorted(frames)
    by_steps: dict[tuple[str, ...], list[int]] = {}
    for i in present:
        by_steps.setdefault(tuple(_steps(rows[i])), []).append(i)
    for steps_v, idx in by_steps.items():
        steps = list(steps_v)
        try:
            texts = cache.get_texts(ident.model_key, steps, ident.prompt_templates)
            if texts is None:
                raise RuntimeError("the step texts are not in the embedding cache")
            members = [_annotation(rows[i], steps) for i in present]
            durations = [float(rows[i]["duration_s"]) or 1e9 for i in present]
            aligned = coalign(
                [frames[i] for i in present],
                texts,
                [a for a, _ in members],
                durations,
                cfg.segment_seconds,
            )
        except Exception as exc:  # this step list fails, the group's others go on
            log.debug("co-align failed:\n%s", traceback.format_exc())
            for i in idx:
                outs[i]["error"] = f"group: {error_text(exc)}"
            continue
        group = [
            GroupMember(str(rows[i]["job_id"]), str(rows[i]["video_sha256"]), a, c)
            for i, (a, c) in zip(present, members, strict=True)
        ]
        context = GroupContext(str(rows[0]["protocol_key"]), tuple(group))
        for n, i in enumerate(present):
            if i not in idx:
                continue
            sim = np.ascontiguousarray(texts @ frames[i].T, dtype=np.float32)
            dur = float(rows[i]["duration_s"])
            baseline = align(sim, method="uniform", duration_s=dur)
            others = [m for j, m in enumerate(group) if j != n]
            info = context.info(others, applied=aligned[n].method != TEXT_METHOD)
            row = {**rows[i], "sim": sim, "steps": steps, "timings": "{}"}
            row["frame_times"] = times.get(i)
            outs[i].update(outputs(row, aligned[n], baseline, identity, group=info))
    return columns([{**row, **out} for row, out in zip(rows, outs, strict=True)])


def write_coaligned(row: dict[str, Any], model_key: str) -> RecordingOutcome:
    """Commit one co-aligned result as a new version where its spans changed."""
    jf = JobFiles(str(row["lab"]), str(row["job_id"]), Path(str(row["dir"])))
    previous = int(row["previous_version"])
    rec = RecordingOutcome(
        jf.lab, jf.job_id, "failed", str(row["experiment"]), previous_version=previous
    )
    if row["error"] and row["error"] != NO_EMBEDDINGS:
        rec.reason = str(row["error"])
        return rec
    latest = jf.latest_alignment()
    rec.outcome, rec.version = "skipped", previous
    if row["error"]:
        rec.reason = "no_embeddings"
        return rec
    if latest is None or latest[0] != previous:
        rec.reason = "taken"  # a newer version appeared meanwhile; the next night looks again
        return rec
    payload = json.loads(str(row["payload"]))
    same = refined_on_same_grid(latest[1], payload)
    rec.spans_changed = 0 if same else spans_changed(latest[1], payload)
    if not rec.spans_changed:
        rec.reason = "unchanged"
        return rec
    payload["service"] = {
        "job_id": jf.job_id,
        "lab": jf.lab,
        "config_key": str(row["config_key"]),
        "model_key": model_key,
        "worker": WORKER_NAME,
        "previous_version": previous,
        "embedded": False,
        "finished_at": time.time(),
    }
    payload = annotate_payload(payload, jf)
    rec.version = jf.write_result(payload, str(row["csv"]), str(row["vtt"]))
    rec.outcome, rec.reason, rec.miou = "done", "group", payload.get("miou")
    return rec


def refined_on_same_grid(latest: dict[str, Any], payload: dict[str, Any]) -> bool:
    """The latest version's boundaries were refined off the grid (the worker's
    ``PipelineConfig.refine_boundaries``) on the grid labels this pass finds again: it stands,
    since this pass decodes no frames to refine with and would only put the grid back."""
    refined = (latest.get("group") or {}).get("refined") is not None
    return refined and latest.get("labels") == payload.get("labels")


def write_stage(batch: Batch, model_key: str = "") -> Batch:
    """Co-aligned columns -> outcome columns (``RecordingOutcome.row``)."""
    outcomes = []
    for row in rows_of(batch):
        try:
            rec = write_coaligned(row, model_key)
        except Exception as exc:  # e.g. disk full: this recording fails, its last version stands
            rec = RecordingOutcome(
                str(row["lab"]), str(row["job_id"]), "failed", reason=f"write: {error_text(exc)}"
            )
        outcomes.append(rec.row())
    return columns(outcomes)


def run_groups(
    rows: list[dict[str, Any]], ident: ModelIdentity, on_ray: bool
) -> Iterator[RecordingOutcome]:
    """The group pass over planned member rows: Ray Data grouped by group, or here."""
    identity = ident.to_dict()
    if on_ray:
        import ray.data

        ds = ray.data.from_items(rows)
        ds = ds.groupby("group").map_groups(
            coalign_stage, fn_kwargs={"identity": identity}, batch_format="numpy"
        )
        ds = ds.map_batches(
            write_stage, fn_kwargs={"model_key": ident.model_key}, batch_format="numpy"
        )
        for out in ds.iter_rows():
            yield RecordingOutcome.of(out)
        return
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for members in groups.values():
        done = write_stage(coalign_stage(columns(members), identity), ident.model_key)
        yield from (RecordingOutcome.of(out) for out in rows_of(done))

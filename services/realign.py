"""``biovl realign``: re-align every archived recording with the current model and aligner.

The nightly job. Four stages with one small interface each (a batch is a dict of columns, as in
Ray Data), run in-process or as a Ray Data pipeline when a cluster is reachable:

    read   the driver lists the archive, loads the current model identity and skips every
           recording whose latest alignment already has the current config key (model
           fingerprint + aligner method + params + aligner version): reruns are idempotent
    embed  ``SimilarityStage``: step x segment similarity from the embedding cache (no decode,
           no embed) when the model is unchanged, else decode + embed (and fill the cache);
           an actor pool under Ray, so each actor loads the model once (lazily: never, when
           every embedding is cached)
    align  ``align_stage``: every alignment of a batch through ONE ``align_batch`` call
           (numba on CPU, the CuPy kernel on GPU), grouped by aligner config
    write  ``write_stage``: the result as a NEW version through the archive's atomic write
           (the JSON commit marker last), never touching earlier versions

A crash leaves no partial version (a version exists once its JSON is committed); the next run
skips what was committed and completes the rest. One failing recording is reported and counted,
it never stops the others. See docs/REALIGN.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import logging
import math
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from biovl_core import __version__
from biovl_core.config import PipelineConfig
from services import metrics
from services.archive import Archive, JobFiles
from services.settings import SAFE_OPTION_KEYS, load_settings
from services.worker import (
    LocalRunner,
    annotate_payload,
    config_key,
    payload_spans,
    result_payload,
)

log = logging.getLogger("biovl.realign")

DEFAULT_BATCH = 256  # recordings per align_batch call (and per write batch)
EMBED_BATCH = 4  # recordings per call of an embedding actor
RAY_MODES = ("auto", "local")
OUTCOMES = ("done", "skipped", "failed")
SPAN_TOLERANCE_S = 1e-6
REACHABILITY_TIMEOUT_S = 5.0
WORKER_NAME = "realign"

Batch = dict[str, Any]


# ---- model identity and the config key ------------------------------------------------------
@dataclass(frozen=True)
class ModelIdentity:
    """What decides the embeddings: enough for cache lookups without loading the model."""

    model_id: str
    weights: str
    model_key: str  # Embedder.cache_key(): architecture + weight fingerprint + preprocessing
    frames_per_segment: int
    prompt_templates: tuple[str, ...]

    @classmethod
    def of(cls, embedder: Any) -> ModelIdentity:
        """The identity of a loaded embedder."""
        return cls(
            embedder.model_id,
            embedder.weights,
            embedder.cache_key(),
            int(embedder.frames_per_segment),
            tuple(embedder.prompt_templates),
        )


def realign_key(cfg: PipelineConfig, ident: ModelIdentity) -> str:
    """The worker's ``config_key``: a result either of them wrote counts as current for both."""
    return config_key(cfg, ident.model_id, ident.weights, ident.model_key)


def job_config(base: PipelineConfig, record: dict[str, Any], method: str | None) -> PipelineConfig:
    """The job's pipeline config: ``base`` + the lab's safe per-job options (``method`` wins)."""
    options = {k: v for k, v in (record.get("options") or {}).items() if k in SAFE_OPTION_KEYS}
    if method is not None:
        options.pop("method", None)
        options.pop("method_params", None)
    return base.replace(**options) if options else base


# ---- results ----------------------------------------------------------------------------------
@dataclass
class RecordingOutcome:
    """What happened to one archived recording."""

    lab: str
    job_id: str
    outcome: str  # done | skipped | failed
    experiment: str = "unspecified"
    reason: str = ""  # skipped: current | no_result | limit | taken; failed: the error
    version: int | None = None  # the new version (done) or the current one (skipped: current)
    previous_version: int | None = None
    embedded: bool = False  # decoded + embedded (not from the cache)
    spans_changed: int | None = None  # steps whose span moved vs the previous version
    miou: float | None = None  # of the current alignment, where annotations exist


@dataclass
class RealignSummary:
    """The run's totals, per-experiment figures and per-recording outcomes."""

    total: int = 0
    planned: int = 0  # recordings the read stage found to re-align
    done: int = 0
    skipped: int = 0
    failed: int = 0
    embedded: int = 0
    from_cache: int = 0
    spans_changed: int = 0
    recordings_changed: int = 0
    align_calls: int = 0
    dry_run: bool = False
    ray: bool = False
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    outcomes: list[RecordingOutcome] = field(default_factory=list)

    def add(self, rec: RecordingOutcome) -> None:
        """Count one recording's outcome."""
        self.outcomes.append(rec)
        setattr(self, rec.outcome, getattr(self, rec.outcome) + 1)
        if rec.outcome == "done":
            self.embedded += int(rec.embedded)
            self.from_cache += int(not rec.embedded)
            self.spans_changed += rec.spans_changed or 0
            self.recordings_changed += int(bool(rec.spans_changed))

    def miou_score(self) -> Any:
        """``metrics.aggregate`` over the current alignments that have annotations, or None."""
        from biovl_core.metrics import aggregate

        rows = [
            {"name": o.job_id, "experiment": o.experiment, "miou": o.miou}
            for o in self.outcomes
            if o.miou is not None
        ]
        return aggregate(rows) if rows else None

    def by_experiment(self) -> dict[str, dict[str, Any]]:
        """Per experiment: done, skipped, failed, steps moved, mIoU % (mean over videos)."""
        table: dict[str, dict[str, Any]] = {}
        for o in self.outcomes:
            row = table.setdefault(
                o.experiment, {"done": 0, "skipped": 0, "failed": 0, "spans_changed": 0}
            )
            row[o.outcome] += 1
            row["spans_changed"] += o.spans_changed or 0
        score = self.miou_score()
        for name, row in table.items():
            stats = score.by_experiment.get(name) if score else None
            row["miou_pct"] = stats.mean if stats else None
            row["miou_n"] = stats.n if stats else 0
        return dict(sorted(table.items()))

    def table(self) -> str:
        """A fixed-width table: one row per experiment, then the totals."""
        rows = self.by_experiment()
        total = {
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "spans_changed": self.spans_changed,
        }
        score = self.miou_score()
        total["miou_pct"] = score.overall.mean if score else None
        total["miou_n"] = score.overall.n if score else 0
        width = max([10, *(len(n) for n in rows)])
        lines = [
            f"{'experiment':<{width}}  {'done':>5}  {'skipped':>7}  {'failed':>6}  "
            f"{'steps moved':>11}  {'mIoU %':>6}  {'n':>3}"
        ]
        for name, row in [*rows.items(), ("all", total)]:
            miou = "-" if row["miou_pct"] is None else f"{row['miou_pct']:.1f}"
            lines.append(
                f"{name:<{width}}  {row['done']:>5}  {row['skipped']:>7}  {row['failed']:>6}  "
                f"{row['spans_changed']:>11}  {miou:>6}  {row['miou_n']:>3}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        d = dataclasses.asdict(self)
        score = self.miou_score()
        d["miou"] = score.to_dict() if score else None
        d["by_experiment"] = self.by_experiment()
        return d


# ---- batches ------------------------------------------------------------------------------
def _rows(batch: Batch) -> list[dict[str, Any]]:
    """Columns (lists or numpy arrays, as Ray Data hands them over) -> one dict per row."""
    names = list(batch)
    n = len(batch[names[0]]) if names else 0
    return [{k: batch[k][i] for k in names} for i in range(n)]


def _batch(rows: list[dict[str, Any]], names: Sequence[str]) -> Batch:
    """One dict per row -> columns (plain lists: str, bytes)."""
    return {k: [r[k] for r in rows] for k in names}


def _loads(value: Any) -> dict[str, Any]:
    return json.loads(value.decode("utf-8") if isinstance(value, bytes) else str(value))


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ---- read -----------------------------------------------------------------------------------
@dataclass
class Plan:
    """The read stage's result: rows to process and recordings already settled."""

    tasks: list[dict[str, Any]]
    settled: list[RecordingOutcome]
    identity: ModelIdentity
    total: int


def experiment_of(record: dict[str, Any]) -> str:
    """The experiment a job belongs to: the record's ``experiment``, else the protocol title."""
    return str(record.get("experiment") or record.get("title") or "unspecified")


def spans_changed(old: dict[str, Any], new: dict[str, Any]) -> int:
    """How many steps' spans differ between two alignment JSONs (all of them if K differs)."""
    a, b = payload_spans(old), payload_spans(new)
    if len(a) != len(b):
        return max(len(a), len(b))
    moved = 0
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None):
            moved += 1
        elif x is not None and y is not None:
            moved += int(max(abs(x[0] - y[0]), abs(x[1] - y[1])) > SPAN_TOLERANCE_S)
    return moved


def annotation_miou(jf: JobFiles, payload: dict[str, Any]) -> float | None:
    """mIoU of an alignment JSON against the job's annotations (None without annotations)."""
    return annotate_payload(dict(payload), jf).get("miou")


def plan(
    archive: Archive,
    cfg: PipelineConfig,
    ident: ModelIdentity,
    *,
    method: str | None = None,
    limit: int | None = None,
    with_miou: bool = True,
) -> Plan:
    """List the archive; one task per recording whose latest alignment is not current."""
    tasks: list[dict[str, Any]] = []
    settled: list[RecordingOutcome] = []
    total = 0
    for jf in archive.iter_jobs():
        total += 1
        out = RecordingOutcome(jf.lab, jf.job_id, "skipped")
        try:
            record = jf.record()
            out.experiment = experiment_of(record)
            latest = jf.latest_alignment()
            if latest is None:
                out.reason = "no_result"  # never aligned: the queue owns it (`requeue`)
                settled.append(out)
                continue
            version, payload = latest
            job_cfg = job_config(cfg, record, method)
            key = realign_key(job_cfg, ident)
            if payload.get("service", {}).get("config_key") == key:
                out.reason, out.version = "current", version
                out.miou = annotation_miou(jf, payload) if with_miou else None
                settled.append(out)
                continue
            if limit is not None and len(tasks) >= limit:
                out.reason = "limit"
                settled.append(out)
                continue
            task = {
                "lab": jf.lab,
                "job_id": jf.job_id,
                "dir": str(jf.dir),
                "experiment": out.experiment,
                "config": job_cfg.to_dict(),
                "config_key": key,
                "previous_version": version,
                "video": record["video"],
                "protocol_filename": record.get("protocol_filename") or "protocol.txt",
                "video_sha256": record.get("video_sha256"),
                "duration_s": record.get("duration_s"),
            }
            tasks.append(task)
        except Exception as exc:  # an unreadable job is one failure, not the end of the run
            out.outcome, out.reason = "failed", f"read: {_error(exc)}"
            settled.append(out)
    return Plan(tasks, settled, ident, total)


# ---- embed --------------------------------------------------------------------------------
class SimilarityStage:
    """Embed stage: similarity [K, N] per recording; the cache first, the model only on a miss.

    A callable class, so Ray Data runs it as an actor pool (one model per actor, loaded on the
    first cache miss); locally it is called in-process with an already loaded embedder.
    """

    def __init__(self, identity: dict[str, Any], runner: LocalRunner | None = None) -> None:
        from biovl_core.cache import EmbeddingCache

        self.identity = ModelIdentity(
            **{**identity, "prompt_templates": tuple(identity["prompt_templates"])}
        )
        self.runner = runner or LocalRunner()
        self._caches: dict[str, EmbeddingCache] = {}

    def _cache(self, cache_dir: str) -> Any:
        from biovl_core.cache import EmbeddingCache

        if cache_dir not in self._caches:
            self._caches[cache_dir] = EmbeddingCache(cache_dir)
        return self._caches[cache_dir]

    def _embedder(self, cfg: PipelineConfig) -> Any:
        embedder = self.runner.embedder(cfg)
        if embedder.cache_key() != self.identity.model_key:
            raise RuntimeError(
                f"this worker loaded model {embedder.cache_key()} but the run was planned for "
                f"{self.identity.model_key}: the weights differ between machines; give every "
                "node the same checkpoint"
            )
        return embedder

    def similarity(self, task: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """(similarity float32 [K, N], state) of one task."""
        from biovl_core.pipeline import recording_similarity, timed
        from biovl_core.protocol import parse_protocol
        from biovl_core.video import probe, video_sha256

        cfg = PipelineConfig.from_dict(task["config"])
        folder = Path(task["dir"])
        video = folder / task["video"]
        protocol = parse_protocol(
            (folder / "protocol.txt").read_text(encoding="utf-8"),
            filename=task["protocol_filename"],
        )
        steps = list(protocol.steps)
        ident = self.identity
        timings: dict[str, float] = {}
        sim: np.ndarray | None = None
        if cfg.cache_dir:
            cache = self._cache(cfg.cache_dir)
            with timed(timings, "cache"):
                sha = task.get("video_sha256") or video_sha256(video)
                seg = cache.get(sha, ident.model_key, cfg.segment_seconds, ident.frames_per_segment)
                txt = cache.get_texts(ident.model_key, steps, ident.prompt_templates)
            if seg is not None:
                if txt is None:  # new step texts: embed the texts only, never the video
                    txt = cache.texts(self._embedder(cfg), steps)
                duration = task.get("duration_s")
                duration = float(duration) if duration else probe(video).duration_s
                sim = np.ascontiguousarray(txt @ seg.T, dtype=np.float32)
                embedded = False
        if sim is None:
            rec = recording_similarity(video, steps, cfg, self._embedder(cfg))
            sim, duration, sha, embedded = rec.similarity, rec.duration_s, rec.video_sha256, True
            timings.update(rec.timings)
        state = {
            "steps": steps,
            "title": protocol.title,
            "duration_s": float(duration),
            "video_sha256": sha,
            "embedded": embedded,
            "shape": list(sim.shape),
            "timings": timings,
        }
        return sim, state

    def __call__(self, batch: Batch) -> Batch:
        """Columns task -> task, state, sim (a failed row: state.error, empty sim)."""
        out = []
        for row in _rows(batch):
            start = time.perf_counter()
            try:
                sim, state = self.similarity(_loads(row["task"]))
                blob = sim.tobytes()
            except Exception as exc:  # one bad recording must not stop the batch
                log.debug("similarity failed:\n%s", traceback.format_exc())
                state, blob = {"error": f"embed: {_error(exc)}"}, b""
            state["embed_s"] = time.perf_counter() - start
            out.append({"task": row["task"], "state": json.dumps(state), "sim": blob})
        return _batch(out, ("task", "state", "sim"))


# ---- align --------------------------------------------------------------------------------
def _result(
    task: dict[str, Any],
    state: dict[str, Any],
    sim: np.ndarray,
    alignment: Any,
    baseline: Any,
    ident: dict[str, Any],
) -> Any:
    """An ``AlignmentResult`` exactly as ``pipeline.align_video`` builds it."""
    from biovl_core.pipeline import step_scores
    from biovl_core.result import AlignmentResult

    cfg = task["config"]
    return AlignmentResult(
        steps=list(state["steps"]),
        spans=list(alignment.spans),
        step_scores=step_scores(sim, alignment.labels),
        labels=np.asarray(alignment.labels),
        similarity=sim,
        segment_seconds=float(cfg["segment_seconds"]),
        duration_s=float(state["duration_s"]),
        method=alignment.method,
        score=float(alignment.score),
        model_id=ident["model_id"],
        weights=ident["weights"],
        video_sha256=state["video_sha256"],
        title=state["title"],
        aligner_version=__version__,
        config=cfg,
        timings=dict(state.get("timings", {})),
        baseline_spans=list(baseline.spans),
    )


def _align_group(
    sims: list[np.ndarray],
    durations: list[float],
    cfg: PipelineConfig,
    steps: list[list[str]],
) -> tuple[list[Any], list[Any], int]:
    """(alignments, uniform baselines, DP align_batch calls) for recordings sharing one config.

    All of them go through one ``align_batch`` call (the baselines through another, which is no
    DP); if it fails (one infeasible recording), each is retried alone so the error lands on
    the recording that caused it.
    """
    from biovl_core.align import align_batch
    from biovl_core.pipeline import aligner_params, resolve_method

    def batched(method: str) -> tuple[list[Any], int]:
        shared = cfg.method_params if method != "uniform" else {}
        per = [  # what differs per recording: its step texts, for methods that use them
            {k: v for k, v in aligner_params(method, shared, st).items() if k not in shared}
            for st in steps
        ]

        def run(s: list[np.ndarray], d: list[float], p: list[dict[str, Any]]) -> list[Any]:
            return align_batch(
                s,
                segment_seconds=cfg.segment_seconds,
                method=method,
                backend=cfg.backend,
                duration_s=d,
                per_video=p,
                **shared,
            )

        try:
            return run(sims, durations, per), 1
        except Exception:
            out: list[Any] = []
            for s, d, p in zip(sims, durations, per, strict=True):
                try:
                    out.extend(run([s], [d], [p]))
                except Exception as exc:
                    out.append(exc)
            return out, 1 + len(sims)

    aligned, calls = batched(resolve_method(cfg))
    baselines, _ = batched("uniform")
    return aligned, baselines, calls


def align_stage(batch: Batch, identity: dict[str, Any]) -> Batch:
    """Columns task, state, sim -> task, state, out (payload, CSV, WebVTT as one JSON)."""
    from biovl_core.formats import to_csv, to_webvtt

    rows = _rows(batch)
    parsed = [(_loads(r["task"]), _loads(r["state"])) for r in rows]
    outs: list[dict[str, Any]] = [{} for _ in rows]
    groups: dict[str, list[int]] = {}
    for i, (task, state) in enumerate(parsed):
        if "error" in state:
            continue
        cfg = task["config"]
        gkey = json.dumps(
            [cfg["method"], cfg["method_params"], cfg["segment_seconds"], cfg["backend"]],
            sort_keys=True,
        )
        groups.setdefault(gkey, []).append(i)
    calls = 0
    start = time.perf_counter()
    for idx in groups.values():
        cfg = PipelineConfig.from_dict(parsed[idx[0]][0]["config"])
        sims = [
            np.frombuffer(rows[i]["sim"], dtype=np.float32).reshape(parsed[i][1]["shape"])
            for i in idx
        ]
        durations = [float(parsed[i][1]["duration_s"]) for i in idx]
        steps = [list(parsed[i][1]["steps"]) for i in idx]
        aligned, baselines, n_calls = _align_group(sims, durations, cfg, steps)
        calls += n_calls
        for i, sim, a, b in zip(idx, sims, aligned, baselines, strict=True):
            task, state = parsed[i]
            bad = a if isinstance(a, Exception) else b if isinstance(b, Exception) else None
            if bad is not None:
                state["error"] = f"align: {_error(bad)}"
                continue
            try:
                result = _result(task, state, sim, a, b, identity)
                outs[i] = {
                    "payload": result_payload(result, {}),
                    "csv": to_csv(result),
                    "vtt": to_webvtt(result),
                }
            except Exception as exc:
                state["error"] = f"align: {_error(exc)}"
    elapsed = time.perf_counter() - start
    out_rows = []
    for r, (_, state), out in zip(rows, parsed, outs, strict=True):
        state["align_s"] = elapsed / max(1, len(rows))
        state["align_calls"] = calls if r is rows[0] else 0
        out_rows.append({"task": r["task"], "state": json.dumps(state), "out": json.dumps(out)})
    return _batch(out_rows, ("task", "state", "out"))


# ---- write --------------------------------------------------------------------------------
def write_one(
    task: dict[str, Any], state: dict[str, Any], out: dict[str, Any], model_key: str = ""
) -> RecordingOutcome:
    """Commit one result as a new version (unless a current one appeared meanwhile)."""
    jf = JobFiles(task["lab"], task["job_id"], Path(task["dir"]))
    rec = RecordingOutcome(
        task["lab"],
        task["job_id"],
        "failed",
        experiment=task["experiment"],
        previous_version=task["previous_version"],
        embedded=bool(state.get("embedded")),
    )
    if "error" in state:
        rec.reason = state["error"]
        return rec
    key = task["config_key"]
    latest = jf.latest_alignment()
    if latest is not None and latest[1].get("service", {}).get("config_key") == key:
        rec.outcome, rec.reason, rec.version = "skipped", "taken", latest[0]
        return rec
    payload = out["payload"]
    payload["service"] = {
        "job_id": task["job_id"],
        "lab": task["lab"],
        "config_key": key,
        "model_key": model_key,
        "worker": WORKER_NAME,
        "previous_version": task["previous_version"],
        "embedded": rec.embedded,
        "finished_at": time.time(),
    }
    payload = annotate_payload(payload, jf)
    rec.version = jf.write_result(payload, out["csv"], out["vtt"])
    rec.outcome = "done"
    try:
        old = jf.alignment_path(task["previous_version"]).read_text(encoding="utf-8")
        rec.spans_changed = spans_changed(json.loads(old), payload)
    except (OSError, ValueError, KeyError) as exc:  # the new version stands regardless
        log.warning("%s/%s: previous version unreadable (%s)", task["lab"], task["job_id"], exc)
    rec.miou = payload.get("miou")
    if "annotations_error" in payload:  # bad annotations spoil the score, not the result
        log.warning(
            "%s/%s: annotations unusable (%s)",
            task["lab"],
            task["job_id"],
            payload["annotations_error"],
        )
    return rec


def write_stage(batch: Batch, model_key: str = "") -> Batch:
    """Columns task, state, out -> outcome (one ``RecordingOutcome`` as JSON per row)."""
    outcomes = []
    for row in _rows(batch):
        task, state, out = _loads(row["task"]), _loads(row["state"]), _loads(row["out"])
        start = time.perf_counter()
        try:
            rec = write_one(task, state, out, model_key)
        except Exception as exc:  # e.g. disk full: this recording fails, its last version stands
            rec = RecordingOutcome(
                task["lab"],
                task["job_id"],
                "failed",
                task["experiment"],
                f"write: {_error(exc)}",
                previous_version=task["previous_version"],
                embedded=bool(state.get("embedded")),
            )
        extra = {
            "embed_s": state.get("embed_s", 0.0),
            "align_s": state.get("align_s", 0.0),
            "write_s": time.perf_counter() - start,
            "align_calls": state.get("align_calls", 0),
        }
        outcomes.append({"outcome": json.dumps({"rec": dataclasses.asdict(rec), **extra})})
    return _batch(outcomes, ("outcome",))


# ---- progress -------------------------------------------------------------------------------
class Progress:
    """Recordings done / total with rate and ETA: a tqdm bar on a terminal, else log lines."""

    def __init__(
        self, total: int, enabled: bool, every_s: float = 10.0, stream: IO[str] | None = None
    ) -> None:
        self.total, self.enabled, self.every_s = total, enabled, every_s
        self.stream = stream or sys.stderr
        self.n = self.failed = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if enabled and total and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="rec", desc="realign", file=self.stream)

    def line(self) -> str:
        """``n/total recordings, rate rec/s, ETA``."""
        elapsed = max(1e-9, time.monotonic() - self.start)
        rate = self.n / elapsed
        eta = (self.total - self.n) / rate if rate > 0 else math.inf
        eta_s = "?" if math.isinf(eta) else f"{eta:.0f}s"
        return (
            f"realign: {self.n}/{self.total} recordings ({self.failed} failed), "
            f"{rate:.2f} rec/s, ETA {eta_s}"
        )

    def update(self, rec: RecordingOutcome) -> None:
        """One recording finished."""
        self.n += 1
        self.failed += int(rec.outcome == "failed")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(failed=self.failed)
        elif self.enabled and (
            time.monotonic() - self.last >= self.every_s or self.n == self.total
        ):
            self.last = time.monotonic()
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()


# ---- runners ------------------------------------------------------------------------------
def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _identity_dict(ident: ModelIdentity) -> dict[str, Any]:
    d = dataclasses.asdict(ident)
    d["prompt_templates"] = list(ident.prompt_templates)
    return d


def run_local(
    tasks: list[dict[str, Any]], ident: ModelIdentity, runner: LocalRunner, batch: int
) -> Iterator[dict[str, Any]]:
    """The four stages in this process, ``batch`` recordings at a time."""
    stage = SimilarityStage(_identity_dict(ident), runner)
    for chunk in _chunks(tasks, batch):
        b: Batch = {"task": [json.dumps(t) for t in chunk]}
        b = stage(b)
        b = align_stage(b, _identity_dict(ident))
        b = write_stage(b, ident.model_key)
        for row in b["outcome"]:
            yield json.loads(row)


def run_ray(
    tasks: list[dict[str, Any]],
    ident: ModelIdentity,
    batch: int,
    *,
    actors: int,
    embed_num_gpus: float,
    align_num_gpus: float,
) -> Iterator[dict[str, Any]]:
    """The same stages as a Ray Data pipeline: read -> embed (actor pool) -> align -> write."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    identity = _identity_dict(ident)
    ds = ray.data.from_items([{"task": json.dumps(t)} for t in tasks])
    ds = ds.map_batches(
        SimilarityStage,
        fn_constructor_kwargs={"identity": identity},
        batch_size=EMBED_BATCH,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors)),
        num_gpus=embed_num_gpus,
        num_cpus=1,
    )
    ds = ds.map_batches(
        align_stage, fn_kwargs={"identity": identity}, batch_size=batch, num_gpus=align_num_gpus
    )
    ds = ds.map_batches(write_stage, fn_kwargs={"model_key": ident.model_key}, batch_size=batch)
    for row in ds.iter_rows():
        yield json.loads(row["outcome"])


def _reachable(address: str, timeout_s: float = REACHABILITY_TIMEOUT_S) -> bool:
    """True when ``host:port`` accepts a TCP connection (``ray://`` addresses: not checked)."""
    if "://" in address:
        return True
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


@contextmanager
def ray_connection(use_ray: str) -> Iterator[bool]:
    """Yields True when the run goes through Ray: ``local`` never, ``auto`` if a cluster answers.

    An already initialised Ray (a test's cluster, a notebook) is used as is and left running.
    """
    if use_ray == "local":
        yield False
        return
    import ray

    if ray.is_initialized():
        yield True
        return
    address = None if use_ray == "auto" else use_ray
    target = address or os.environ.get("RAY_ADDRESS") or ""
    if target and not _reachable(target):  # ray.init would retry for minutes
        if address is not None:
            raise RuntimeError(
                f"cannot reach the Ray cluster at {address!r} (no answer on its GCS port); "
                "check the address, or pass --ray local"
            )
        log.info("RAY_ADDRESS=%s does not answer; running in this process", target)
        yield False
        return
    try:
        ray.init(address=address or "auto", log_to_driver=False)
    except ConnectionError as exc:
        if address is not None:
            raise RuntimeError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc
        log.info("no Ray cluster reachable (%s); running in this process", exc)
        yield False
        return
    try:
        yield True
    finally:
        ray.shutdown()


@contextmanager
def run_lock(archive: Archive) -> Iterator[None]:
    """One realign at a time per archive (an flock on ``tmp/realign.lock``)."""
    path = archive.root / "tmp" / "realign.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another realign holds {path}; wait for it to finish (or remove a stale lock "
                "only if no realign process is running)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _add_cache_dir(cfg: PipelineConfig, archive: Archive) -> PipelineConfig:
    """The embedding cache lives in the archive unless the config names another folder."""
    return cfg if cfg.cache_dir else cfg.replace(cache_dir=str(archive.root / "embeddings"))


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
    align_num_gpus: float = 0.0,
    runner: LocalRunner | None = None,
    on_outcome: Callable[[RecordingOutcome], None] | None = None,
) -> RealignSummary:
    """Re-align every archived recording whose latest alignment is not current; see module doc.

    ``method`` overrides the aligner method for every job (else ``cfg.method`` + the job's own
    options); ``use_ray`` is "local", "auto" or a cluster address.
    """
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    started = time.perf_counter()
    archive = Archive(archive_root)
    cfg = _add_cache_dir(cfg, archive)
    if method is not None:
        cfg = cfg.replace(method=method, method_params={})
    runner = runner or LocalRunner()
    summary = RealignSummary(dry_run=dry_run)
    t0 = time.perf_counter()
    ident = ModelIdentity.of(runner.embedder(cfg))
    lock = run_lock(archive) if not dry_run else _nothing()
    with lock:
        the_plan = plan(archive, cfg, ident, method=method, limit=limit)
        summary.total, summary.planned = the_plan.total, len(the_plan.tasks)
        summary.stage_seconds["read"] = time.perf_counter() - t0
        for rec in the_plan.settled:
            _count(summary, rec, on_outcome)
        if dry_run:
            _dry_run_report(summary, the_plan, cfg)
            summary.seconds = time.perf_counter() - started
            return summary
        bar = Progress(len(the_plan.tasks), progress)
        if the_plan.tasks:
            log.info(
                "realign: %d of %d recordings to re-align with %s (%s), config %s",
                len(the_plan.tasks),
                the_plan.total,
                ident.model_id,
                ident.weights,
                the_plan.tasks[0]["config_key"],
            )
        try:
            with ray_connection(use_ray if the_plan.tasks else "local") as on_ray:
                summary.ray = on_ray
                if on_ray:
                    rows = run_ray(
                        the_plan.tasks,
                        ident,
                        batch,
                        actors=actors,
                        embed_num_gpus=embed_num_gpus,
                        align_num_gpus=align_num_gpus,
                    )
                else:
                    rows = run_local(the_plan.tasks, ident, runner, batch)
                for row in rows:
                    rec = RecordingOutcome(**row["rec"])
                    for stage in ("embed", "align", "write"):
                        summary.stage_seconds[stage] = (
                            summary.stage_seconds.get(stage, 0.0) + row[f"{stage}_s"]
                        )
                    summary.align_calls += row["align_calls"]
                    _count(summary, rec, on_outcome)
                    if rec.outcome == "failed":
                        log.warning("realign %s/%s failed: %s", rec.lab, rec.job_id, rec.reason)
                    bar.update(rec)
        finally:
            bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _count(
    summary: RealignSummary,
    rec: RecordingOutcome,
    on_outcome: Callable[[RecordingOutcome], None] | None,
) -> None:
    summary.add(rec)
    if not summary.dry_run:
        metrics.REALIGN_RECORDINGS.labels(outcome=rec.outcome).inc()
    if on_outcome is not None:
        on_outcome(rec)


def _dry_run_report(summary: RealignSummary, the_plan: Plan, cfg: PipelineConfig) -> None:
    """Log what a real run would do: per task, embeddings cached or to compute."""
    from biovl_core.cache import EmbeddingCache

    ident = the_plan.identity
    cached = 0
    for task in the_plan.tasks:
        tcfg = task["config"]
        cache = EmbeddingCache(tcfg["cache_dir"] or cfg.cache_dir)
        sha = task.get("video_sha256")
        hit = (
            bool(sha)
            and cache.get(sha, ident.model_key, tcfg["segment_seconds"], ident.frames_per_segment)
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


# ---- command line ---------------------------------------------------------------------------
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
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_realign(args: argparse.Namespace) -> int:
    """Run the re-aligner from parsed arguments; 0 when nothing failed, 1 otherwise."""
    settings = load_settings(getattr(args, "config", None))
    root = args.archive or getattr(args, "archive_dir", None) or settings.archive_dir
    if getattr(args, "metrics_port", 0):
        metrics.serve_metrics(args.metrics_port)
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
        align_num_gpus=settings.aligner_num_gpus,
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
    for o in summary.outcomes:
        if o.outcome == "failed":
            print(f"failed {o.lab}/{o.job_id}: {o.reason}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return 1 if summary.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m services.realign [options]``."""
    parser = argparse.ArgumentParser(prog="biovl realign", description=__doc__.split("\n")[0])
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


if __name__ == "__main__":
    raise SystemExit(main())

"""The three pipeline stages of ``biovl realign`` over batches of numpy columns (as Ray Data hands
them over): similarity (cache first, the model on a miss), align (one ``align_batch`` per config
group) and write (a new archive version)."""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from biovl_core.config import PipelineConfig
from services.archive import JobFiles
from services.realign.plan import ModelIdentity, Task
from services.realign.report import RecordingOutcome, error_text, spans_changed
from services.runner import LocalRunner, annotate_payload, result_payload

log = logging.getLogger("biovl.realign")

WORKER_NAME = "realign"

Batch = dict[str, np.ndarray]


def rows_of(batch: Batch) -> list[dict[str, Any]]:
    """Columns -> one dict per row."""
    names = list(batch)
    n = len(batch[names[0]]) if names else 0
    return [{k: batch[k][i] for k in names} for i in range(n)]


def columns(rows: list[dict[str, Any]]) -> Batch:
    """One dict per row -> numpy columns; arrays and lists (similarities, step texts) go into
    object columns, one per row, whatever their shapes."""
    out: Batch = {}
    for name in rows[0] if rows else ():
        values = [r[name] for r in rows]
        if any(isinstance(v, np.ndarray | list | tuple) for v in values):
            col = np.empty(len(values), dtype=object)
            for i, v in enumerate(values):
                col[i] = v
            out[name] = col
        else:
            out[name] = np.asarray(values)
    return out


# ---- similarity ---------------------------------------------------------------------------
class SimilarityStage:
    """Similarity [K, N] per recording; the cache first, the model only on a miss.

    A callable class, so Ray Data runs it as an actor pool (one model per actor, loaded on the
    first cache miss); locally it is called in-process with an already loaded embedder.
    """

    def __init__(self, identity: dict[str, Any], runner: LocalRunner | None = None) -> None:
        from biovl_core.embed import EmbeddingCache

        self.identity = ModelIdentity.from_dict(identity)
        self.runner = runner or LocalRunner()
        self._caches: dict[str, EmbeddingCache] = {}

    def _cache(self, cache_dir: str) -> Any:
        from biovl_core.embed import EmbeddingCache

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

    def similarity(self, task: Task) -> dict[str, Any]:
        """The similarity columns of one task: sim float32 [K, N], steps, title, duration_s,
        video_sha256, embedded, timings, frame_times (float64 [N, k], the embedded frames)."""
        from biovl_core.pipeline import recording_similarity, timed
        from biovl_core.protocol import parse_protocol
        from biovl_core.video import probe, video_sha256

        cfg = task.pipeline_config()
        folder = Path(task.dir)
        video = folder / task.video
        protocol = parse_protocol(
            (folder / "protocol.txt").read_text(encoding="utf-8"),
            filename=task.protocol_filename,
        )
        steps = list(protocol.steps)
        ident = self.identity
        timings: dict[str, float] = {}
        sim: np.ndarray | None = None
        times: np.ndarray | None = None
        if cfg.cache_dir:
            cache = self._cache(cfg.cache_dir)
            with timed(timings, "cache"):
                sha = task.video_sha256 or video_sha256(video)
                key = (sha, ident.model_key, cfg.segment_seconds, ident.frames_per_segment)
                seg = cache.get(*key, cfg.sampling_key())
                times = cache.get_frame_times(*key, cfg.sampling_key())
                txt = cache.get_texts(ident.model_key, steps, ident.prompt_templates)
            if seg is not None:
                if txt is None:  # new step texts: embed the texts only, never the video
                    txt = cache.texts(self._embedder(cfg), steps)
                duration = task.duration_s or probe(video).duration_s
                if times is None:  # an entry made before frame times were kept
                    times = _planned_frame_times(video, cfg, ident.frames_per_segment)
                sim = np.ascontiguousarray(txt @ seg.T, dtype=np.float32)
                embedded = False
        if sim is None:
            rec = recording_similarity(
                video, steps, cfg, self._embedder(cfg), video_sha256=task.video_sha256 or None
            )
            sim, duration, sha, embedded = rec.similarity, rec.duration_s, rec.video_sha256, True
            times = rec.frame_times
            timings.update(rec.timings)
        return {
            "sim": sim,
            "steps": steps,
            "title": protocol.title,
            "duration_s": float(duration),
            "video_sha256": sha,
            "embedded": embedded,
            "timings": json.dumps(timings),
            "frame_times": np.zeros((0, 0)) if times is None else np.asarray(times),
        }

    def __call__(self, batch: Batch) -> Batch:
        """Task columns -> the same + sim, steps, title, embedded, timings, error, embed_s
        (a failed row: its error, an empty sim)."""
        out = []
        for row in rows_of(batch):
            start = time.perf_counter()
            task = Task.of(row)
            done: dict[str, Any] = {"error": ""}
            try:
                done.update(self.similarity(task))
            except Exception as exc:  # one bad recording must not stop the batch
                log.debug("similarity failed:\n%s", traceback.format_exc())
                done = {
                    "sim": np.zeros((0, 0), dtype=np.float32),
                    "frame_times": np.zeros((0, 0)),
                    "steps": [],
                    "title": "",
                    "embedded": False,
                    "timings": "{}",
                    "error": f"embed: {error_text(exc)}",
                }
            done["embed_s"] = time.perf_counter() - start
            out.append({**task.row(), **done})
        return columns(out)


# ---- align --------------------------------------------------------------------------------
def _align_group(
    sims: list[np.ndarray],
    durations: list[float],
    cfg: PipelineConfig,
    steps: list[list[str]],
) -> tuple[list[Any], list[Any], int]:
    """(alignments, uniform baselines, DP align_batch calls) for recordings sharing one config:
    one ``align_batch`` call each (the baselines are no DP), retried recording by recording
    when one fails so the error lands on the recording that caused it."""
    from biovl_core.align import align_batch_or_each
    from biovl_core.pipeline import aligner_params, resolve_method

    def batched(method: str) -> tuple[list[Any], int]:
        shared = cfg.method_params if method != "uniform" else {}
        per = [  # what differs per recording: its step texts, for methods that use them
            {k: v for k, v in aligner_params(method, shared, st).items() if k not in shared}
            for st in steps
        ]
        return align_batch_or_each(
            sims,
            duration_s=durations,
            per_video=per,
            segment_seconds=cfg.segment_seconds,
            method=method,
            backend=cfg.backend,
            **shared,
        )

    aligned, calls = batched(resolve_method(cfg))
    baselines, _ = batched("uniform")
    return aligned, baselines, calls


def _planned_frame_times(video: Path, cfg: PipelineConfig, k: int) -> np.ndarray | None:
    """The frame times the sampling rule gives (the container's index, no decoding); None where
    the video cannot be read (the cached embeddings still align)."""
    from biovl_core.errors import VideoError
    from biovl_core.pipeline import sample_plan_for
    from biovl_core.video import probe

    try:
        return sample_plan_for(video, probe(video), cfg, k).frame_times
    except VideoError as exc:
        log.warning("%s: no frame times (%s)", video, exc)
        return None


def _frame_times(row: dict[str, Any]) -> np.ndarray | None:
    """A row's frame times [N, k] (None where unknown: an empty array)."""
    times = row.get("frame_times")
    return None if times is None or not np.size(times) else np.asarray(times, dtype=np.float64)


def outputs(
    row: dict[str, Any],
    alignment: Any,
    baseline: Any,
    ident: dict[str, Any],
    group: dict[str, Any] | None = None,
) -> dict:
    """payload (alignment JSON text), csv and vtt of one aligned row (``group``: its group info)."""
    from biovl_core.io import to_csv, to_webvtt
    from biovl_core.pipeline import alignment_result

    config = json.loads(str(row["config"]))
    result = alignment_result(
        [str(s) for s in row["steps"]],
        row["sim"],
        alignment,
        baseline,
        segment_seconds=float(config["segment_seconds"]),
        duration_s=float(row["duration_s"]),
        model_id=ident["model_id"],
        weights=ident["weights"],
        video_sha256=str(row["video_sha256"]),
        title=str(row["title"]),
        config=config,
        timings=json.loads(str(row["timings"])),
        group=group,
        frame_times=_frame_times(row),
    )
    payload = json.dumps(result_payload(result, {}))
    return {"payload": payload, "csv": to_csv(result), "vtt": to_webvtt(result)}


def align_stage(batch: Batch, identity: dict[str, Any]) -> Batch:
    """Similarity columns -> task columns + embedded, error, embed_s, payload, csv, vtt,
    align_s, align_calls."""
    rows = rows_of(batch)
    outs: list[dict[str, Any]] = [{"payload": "", "csv": "", "vtt": ""} for _ in rows]
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row["error"]:
            continue
        cfg = json.loads(str(row["config"]))
        gkey = json.dumps(
            [cfg["method"], cfg["method_params"], cfg["segment_seconds"], cfg["backend"]],
            sort_keys=True,
        )
        groups.setdefault(gkey, []).append(i)
    calls = 0
    start = time.perf_counter()
    for idx in groups.values():
        cfg = Task.of(rows[idx[0]]).pipeline_config()
        sims = [np.asarray(rows[i]["sim"], dtype=np.float32) for i in idx]
        durations = [float(rows[i]["duration_s"]) for i in idx]
        steps = [[str(s) for s in rows[i]["steps"]] for i in idx]
        aligned, baselines, n_calls = _align_group(sims, durations, cfg, steps)
        calls += n_calls
        for i, sim, a, b in zip(idx, sims, aligned, baselines, strict=True):
            bad = a if isinstance(a, Exception) else b if isinstance(b, Exception) else None
            if bad is not None:
                rows[i]["error"] = f"align: {error_text(bad)}"
                continue
            try:
                outs[i] = outputs({**rows[i], "sim": sim}, a, b, identity)
            except Exception as exc:
                rows[i]["error"] = f"align: {error_text(exc)}"
    elapsed = time.perf_counter() - start
    kept = (*Task.__dataclass_fields__, "embedded", "error", "embed_s")
    out_rows = []
    for n, (row, out) in enumerate(zip(rows, outs, strict=True)):
        out_rows.append(
            {
                **{k: row[k] for k in kept},
                **out,
                "align_s": elapsed / max(1, len(rows)),
                "align_calls": calls if n == 0 else 0,
            }
        )
    return columns(out_rows)


# ---- write --------------------------------------------------------------------------------
def write_one(task: Task, row: dict[str, Any], model_key: str = "") -> RecordingOutcome:
    """Commit one result as a new version (unless a current one appeared meanwhile)."""
    jf = JobFiles(task.lab, task.job_id, Path(task.dir))
    rec = RecordingOutcome(
        task.lab,
        task.job_id,
        "failed",
        experiment=task.experiment,
        previous_version=task.previous_version,
        embedded=bool(row["embedded"]),
    )
    if row["error"]:
        rec.reason = str(row["error"])
        return rec
    latest = jf.latest_alignment()
    if latest is not None and latest[1].get("service", {}).get("config_key") == task.config_key:
        rec.outcome, rec.reason, rec.version = "skipped", "taken", latest[0]
        return rec
    payload = json.loads(str(row["payload"]))
    payload["service"] = {
        "job_id": task.job_id,
        "lab": task.lab,
        "config_key": task.config_key,
        "model_key": model_key,
        "worker": WORKER_NAME,
        "previous_version": task.previous_version,
        "embedded": rec.embedded,
        "finished_at": time.time(),
    }
    payload = annotate_payload(payload, jf)
    rec.version = jf.write_result(payload, str(row["csv"]), str(row["vtt"]))
    rec.outcome = "done"
    try:
        old = jf.alignment_path(task.previous_version).read_text(encoding="utf-8")
        rec.spans_changed = spans_changed(json.loads(old), payload)
    except (OSError, ValueError, KeyError) as exc:  # the new version stands regardless
        log.warning("%s/%s: previous version unreadable (%s)", task.lab, task.job_id, exc)
    rec.miou = payload.get("miou")
    if "annotations_error" in payload:  # bad annotations spoil the score, not the result
        log.warning(
            "%s/%s: annotations unusable (%s)",
            task.lab,
            task.job_id,
            payload["annotations_error"],
        )
    return rec


def write_stage(batch: Batch, model_key: str = "") -> Batch:
    """Aligned columns -> outcome columns (``RecordingOutcome.row``) + embed_s, align_s,
    write_s, align_calls."""
    outcomes = []
    for row in rows_of(batch):
        task = Task.of(row)
        start = time.perf_counter()
        try:
            rec = write_one(task, row, model_key)
        except Exception as exc:  # e.g. disk full: this recording fails, its last version stands
            rec = RecordingOutcome(
                task.lab,
                task.job_id,
                "failed",
                task.experiment,
                f"write: {error_text(exc)}",
                previous_version=task.previous_version,
                embedded=bool(row["embedded"]),
            )
        outcomes.append(
            {
                **rec.row(),
                "embed_s": float(row["embed_s"]),
                "align_s": float(row["align_s"]),
                "write_s": time.perf_counter() - start,
                "align_calls": int(row["align_calls"]),
            }
        )
    return columns(outcomes)

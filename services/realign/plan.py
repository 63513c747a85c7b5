"""The read stage of ``biovl realign``: the model identity, each job's config and config key, and
the plan (one ``Task`` per recording whose latest alignment is not current)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from biovl_core.config import PipelineConfig
from services.archive import Archive
from services.realign.report import RecordingOutcome, annotation_miou, error_text
from services.runner import config_key
from services.settings import SAFE_OPTION_KEYS


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelIdentity:
        """The identity from ``to_dict`` (how it travels to Ray actors)."""
        return cls(**{**data, "prompt_templates": tuple(data["prompt_templates"])})

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists, not tuples)."""
        d = dataclasses.asdict(self)
        d["prompt_templates"] = list(self.prompt_templates)
        return d


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


def experiment_of(record: dict[str, Any]) -> str:
    """The experiment a job belongs to: the record's ``experiment``, else the protocol title."""
    return str(record.get("experiment") or record.get("title") or "unspecified")


@dataclass(frozen=True)
class Task:
    """One recording to re-align, as a row of the pipeline's columns."""

    lab: str
    job_id: str
    dir: str
    experiment: str
    config: str  # PipelineConfig.to_dict() as JSON text: its method_params are free-form
    config_key: str
    previous_version: int
    video: str
    protocol_filename: str
    video_sha256: str  # "" when the record has none
    duration_s: float  # 0.0 when the record has none

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Task:
        """The task in a batch row (numpy scalars as Python values)."""
        return cls(
            lab=str(row["lab"]),
            job_id=str(row["job_id"]),
            dir=str(row["dir"]),
            experiment=str(row["experiment"]),
            config=str(row["config"]),
            config_key=str(row["config_key"]),
            previous_version=int(row["previous_version"]),
            video=str(row["video"]),
            protocol_filename=str(row["protocol_filename"]),
            video_sha256=str(row["video_sha256"]),
            duration_s=float(row["duration_s"]),
        )

    def pipeline_config(self) -> PipelineConfig:
        """The job's pipeline config."""
        return PipelineConfig.from_dict(json.loads(self.config))

    def row(self) -> dict[str, Any]:
        """The task's columns of one row."""
        return dataclasses.asdict(self)


@dataclass
class Plan:
    """The read stage's result: tasks to process and recordings already settled."""

    tasks: list[Task]
    settled: list[RecordingOutcome]
    identity: ModelIdentity
    total: int


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
    tasks: list[Task] = []
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
            task = Task(
                lab=jf.lab,
                job_id=jf.job_id,
                dir=str(jf.dir),
                experiment=out.experiment,
                config=json.dumps(job_cfg.to_dict()),
                config_key=key,
                previous_version=version,
                video=record["video"],
                protocol_filename=record.get("protocol_filename") or "protocol.txt",
                video_sha256=record.get("video_sha256") or "",
                duration_s=float(record.get("duration_s") or 0.0),
            )
            tasks.append(task)
        except Exception as exc:  # an unreadable job is one failure, not the end of the run
            out.outcome, out.reason = "failed", f"read: {error_text(exc)}"
            settled.append(out)
    return Plan(tasks, settled, ident, total)

"""What a worker runs for one job: the runner (pipeline in-process or on Serve), the config key,
and the stored alignment JSON (``result_payload``, with annotations scored by ``annotate_payload``).

``services.worker`` and ``biovl realign`` share all of it, so neither recomputes the other's result.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Protocol

from biovl_core import __version__
from biovl_core.config import PipelineConfig
from biovl_core.io import alignment_to_dict
from biovl_core.protocol import parse_protocol
from biovl_core.result import AlignmentResult
from services.archive import JobFiles

# Config fields that cannot change an alignment (where and how fast it runs).
_RUNTIME_ONLY = (
    "device",
    "batch_size",
    "cache_dir",
    "backend",
    "allow_random_weights",
    "job_deadline_s",
)


class Runner(Protocol):
    """Runs the pipeline for one job.

    A runner may also have ``remote_stages``: names of ``result.timings`` stages that its
    deployments record in ``biovl_stage_seconds`` themselves (the worker skips those).
    """

    def model_identity(self, cfg: PipelineConfig) -> tuple[str, str, str]:
        """(model_id, weights, model_key) the runner would use for ``cfg``.

        ``model_key`` is ``Embedder.cache_key()``: architecture, weight fingerprint, preprocessing.
        """

    def run(
        self,
        video: Path,
        protocol_text: str,
        protocol_name: str,
        cfg: PipelineConfig,
        progress: Any,
        group: Any = None,
        video_sha256: str | None = None,
    ) -> AlignmentResult:
        """Align the protocol to the video (with its group: ``services.groups.group_context``);
        ``video_sha256``: the archived video's hash, so the file is not read again for it."""


def config_key(cfg: PipelineConfig, model_id: str, weights: str, model_key: str) -> str:
    """Hash of everything that decides an alignment: config (minus runtime-only fields), the
    model (including its weight fingerprint) and the aligner version.

    The worker and ``biovl realign`` use the same key, so neither recomputes the other's result.
    """
    data = {k: v for k, v in cfg.to_dict().items() if k not in _RUNTIME_ONLY}
    data["model_id"], data["weights"], data["model_key"] = model_id, weights, model_key
    data["aligner_version"] = __version__
    blob = json.dumps(data, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


class LocalRunner:
    """In-process pipeline (``align_video``) with one loaded embedder per model configuration."""

    def __init__(self) -> None:
        self._embedders: dict[str, Any] = {}
        self._lock = threading.Lock()

    def embedder(self, cfg: PipelineConfig) -> Any:
        """The (cached) embedder for ``cfg``'s model fields."""
        from biovl_core.embed import load_embedder

        fields = ("embedder", "model", "pretrained", "checkpoint", "frames_per_segment")
        key = json.dumps([getattr(cfg, f) for f in fields] + [cfg.device, cfg.allow_random_weights])
        with self._lock:
            if key not in self._embedders:
                self._embedders[key] = load_embedder(cfg)
            return self._embedders[key]

    def model_identity(self, cfg: PipelineConfig) -> tuple[str, str, str]:
        """(model_id, weights, model_key) of the embedder for ``cfg``."""
        emb = self.embedder(cfg)
        return emb.model_id, emb.weights, emb.cache_key()

    def run(
        self,
        video: Path,
        protocol_text: str,
        protocol_name: str,
        cfg: PipelineConfig,
        progress: Any,
        group: Any = None,
        video_sha256: str | None = None,
    ) -> AlignmentResult:
        """``biovl_core.pipeline.align_video`` on the archived inputs."""
        from biovl_core.pipeline import align_video

        protocol = parse_protocol(protocol_text, filename=protocol_name)
        embedder = self.embedder(cfg)
        return align_video(
            video,
            protocol,
            cfg,
            embedder=embedder,
            progress=progress,
            group=group,
            video_sha256=video_sha256,
        )


def result_payload(result: AlignmentResult, service: dict[str, Any]) -> dict[str, Any]:
    """The stored alignment JSON: ``alignment_to_dict`` with the similarity matrix + service info."""
    payload = alignment_to_dict(result, include_similarity=True)
    payload["service"] = service
    return payload


def payload_spans(payload: dict[str, Any]) -> list[tuple[float, float] | None]:
    """Predicted spans of an alignment JSON, in step order."""
    steps = sorted(payload.get("steps", []), key=lambda s: s.get("index", 0))
    return [
        (float(s["start"]), float(s["end"])) if s.get("start") is not None else None for s in steps
    ]


def annotate_payload(payload: dict[str, Any], jf: JobFiles) -> dict[str, Any]:
    """Add the job's annotated spans, each step's IoU and the mIoU (ours and the uniform
    baseline's) to an alignment JSON when the job has annotations; the viewer shows them.
    An annotations file that does not match the protocol is reported, never fatal; the spans
    are the ones matched at upload (``services.groups.uploaded_spans``)."""
    from biovl_core.metrics import miou, step_ious
    from services.groups import uploaded_spans

    steps = [s["text"] for s in sorted(payload.get("steps", []), key=lambda s: s["index"])]
    try:
        gt = uploaded_spans(jf, steps)  # matched at upload, never again here
        if gt is None:
            return payload
        pred = payload_spans(payload)
        payload["annotation_spans"] = [list(g) if g is not None else None for g in gt]
        payload["step_ious"] = step_ious(pred, gt)
        payload["miou"] = miou(pred, gt)
        baseline = payload.get("baseline_spans")
        if baseline:
            payload["baseline_miou"] = miou([tuple(b) if b else None for b in baseline], gt)
    except (ValueError, OSError) as exc:  # AnnotationError is a ValueError
        payload["annotations_error"] = str(exc)
    return payload

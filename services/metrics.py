"""Prometheus metrics of the service. The names are FIXED (the Grafana dashboard and alerts use them).

Ray Serve replicas are separate processes, so with ``metrics_dir`` set every replica records in
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), one folder per role and node:

- ``<metrics_dir>/ingress``: Ingress replicas; summed and served at ``GET /metrics`` on the
  Serve HTTP port (8000): HTTP, submission (jobs_total submitted/deduplicated/rejected), upload
  and probe stages, queue gauges.
- ``<metrics_dir>/pipeline``: QueueWorker, Decoder, Embedder and Aligner replicas; summed and served at
  ``:<worker_metrics_port>/metrics`` (9464) by whichever replica of the node binds the port first:
  job outcomes, pipeline stages, embed batch sizes, queue gauges, GPU utilisation.

A standalone worker (``python -m services worker``) serves its own process on
``worker_metrics_port``. Scrape each node's 8000 (ingress) and 9464 (pipeline): no sample is
served by both, so sums over targets do not double count. Without ``metrics_dir`` each process
serves only its own registry.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.queue import JobQueue

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
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
REALIGN_RECORDINGS = Counter(
    "biovl_realign_recordings_total", "Recordings processed by the archive re-aligner.", ["outcome"]
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
    }
)

for _state in JOB_STATES:  # every state visible from the first scrape (rate() needs a zero)
    JOBS.labels(state=_state)


def multiprocess_enabled() -> bool:
    """True when values are shared through PROMETHEUS_MULTIPROC_DIR."""
    return bool(os.environ.get(MULTIPROC_ENV))


def render() -> tuple[bytes, str]:
    """(body, content type) of the Prometheus text exposition for this process or node."""
    if multiprocess_enabled():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def observe_stages(timings: dict[str, float]) -> None:
    """Record a pipeline's stage timings (unknown stage names are skipped)."""
    for stage, seconds in timings.items():
        if stage in STAGES:
            STAGE_SECONDS.labels(stage=stage).observe(seconds)


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
    """Refresh the queue gauges from ``queue`` (the ingress's /metrics and the workers' sampler)."""
    QUEUE_DEPTH.set(queue.depth())
    QUEUE_OLDEST.set(queue.oldest_pending_seconds())
    DEAD_LETTER_DEPTH.set(queue.dead_depth())


def start_sampler(sample: Callable[[], object], interval_s: float = 5.0) -> threading.Thread:
    """Run ``sample()`` every ``interval_s`` in a daemon thread (queue gauges, GPU utilisation)."""

    def loop() -> None:
        while True:
            try:
                sample()
            except Exception:  # a failed sample must not kill the process; next tick retries
                pass
            time.sleep(interval_s)

    thread = threading.Thread(target=loop, name="biovl-metrics-sampler", daemon=True)
    thread.start()
    return thread


def serve_metrics(port: int, host: str = "0.0.0.0") -> bool:
    """Serve this process's (or, in multiprocess mode, the node's) metrics at
    http://host:port/metrics with ``prometheus_client.start_http_server``; False if the port is
    taken (in multiprocess mode a sibling replica holding it serves the same sums)."""
    registry = REGISTRY
    if multiprocess_enabled():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError:
        return False
    return True

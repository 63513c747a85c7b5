"""The Serve deployments: Decoder, Embedder, Aligner (with its request batching), QueueWorker
and Ingress; defined lazily because ray is heavy to import."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import numpy as np

from services import metrics
from services.settings import ServiceSettings

log = logging.getLogger("biovl.service")


# Parameters that differ per video (the protocol's step texts): passed per request, not grouped.
_PER_VIDEO_PARAMS = ("steps",)


def _shared_params(request: dict[str, Any]) -> dict[str, Any]:
    """The request's aligner parameters that a batch must share."""
    return {k: v for k, v in request["params"].items() if k not in _PER_VIDEO_PARAMS}


def _per_video_params(request: dict[str, Any]) -> dict[str, Any]:
    """The request's own parameters (e.g. its protocol's step texts)."""
    return {k: v for k, v in request["params"].items() if k in _PER_VIDEO_PARAMS}


def _align_group_key(request: dict[str, Any]) -> Any:
    """Requests with equal keys go through one ``align_batch`` call (it takes one method)."""
    try:
        params = json.dumps(_shared_params(request), sort_keys=True)
    except (TypeError, ValueError):  # e.g. a per-segment drop_cost array: a group of its own
        params = f"unhashable-{id(request)}"
    return (
        request["method"],
        request["backend"],
        float(request["segment_seconds"]),
        params,
    )


def group_backend(requests: list[dict[str, Any]], backend: str) -> str:
    """The backend a group of requests runs on: ``align.py``'s auto rule (CuPy only for
    batches of at least ``AUTO_CUPY_MIN_CELLS`` cells, with a usable GPU) or the named one."""
    from biovl_core.align import auto_backend

    if backend != "auto":
        return backend
    return auto_backend(sum(int(np.size(r["similarity"])) for r in requests))


def align_requests(
    requests: list[dict[str, Any]],
    default_backend: str = "auto",
    used: dict[str, int] | None = None,
) -> list[Any]:
    """Align a list of single-video requests: one ``align_batch`` call per group of requests
    sharing (method, backend, segment_seconds, params). Returns one ``Alignment`` per request,
    or the exception that request raised (a failing group is retried request by request, so one
    bad request does not fail the others). ``used`` counts the groups per backend that ran."""
    from biovl_core.align import DEFAULT_METHOD, align_batch_or_each

    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(_align_group_key(r), []).append(i)
    out: list[Any] = [None] * len(requests)
    for idx in groups.values():
        first = requests[idx[0]]
        backend = group_backend([requests[i] for i in idx], first["backend"] or default_backend)
        if used is not None:
            used[backend] = used.get(backend, 0) + 1
        results, _ = align_batch_or_each(
            [requests[i]["similarity"] for i in idx],
            duration_s=[requests[i]["duration_s"] for i in idx],
            per_video=[_per_video_params(requests[i]) for i in idx],
            segment_seconds=first["segment_seconds"],
            method=first["method"] or DEFAULT_METHOD,
            backend=backend,
            **_shared_params(first),
        )
        for i, res in zip(idx, results, strict=True):
            out[i] = res
    return out


def serve_deployments() -> dict[str, Any]:
    """Define the Serve deployment classes (imported lazily: ray is heavy)."""
    from ray import serve

    @serve.deployment(name="Embedder")
    class EmbedderDeployment:
        """The embedding model; requests from concurrent jobs are batched into one forward pass."""

        def __init__(self, settings: dict[str, Any]) -> None:
            from biovl_core.embed import load_embedder
            from services.concurrency import apply_torch_threads, plan_concurrency

            self.settings = ServiceSettings.from_dict(settings)
            plan = plan_concurrency(self.settings)
            apply_torch_threads(plan.embedder_threads)
            log.info(
                "Embedder replica: %d torch thread(s); %s", plan.embedder_threads, plan.describe()
            )
            self.embedder = load_embedder(self.settings.pipeline_config())
            self.embed_frames.set_max_batch_size(self.settings.embed_max_batch_size)
            self.embed_frames.set_batch_wait_timeout_s(self.settings.embed_batch_wait_timeout_s)
            self._lock = threading.Lock()
            self._sampler: Any = None  # the DALI sampler of decode_embed, made on first use
            self.decode_embed.set_max_batch_size(self.settings.decode_max_batch_size)
            if self.settings.worker_metrics_port:
                metrics.serve_metrics(self.settings.worker_metrics_port)

        def info(self) -> dict[str, Any]:
            """Model identity and input geometry."""
            e = self.embedder
            return {
                "model_id": e.model_id,
                "weights": e.weights,
                "frames_per_segment": e.frames_per_segment,
                "input_size": e.input_size,
                "dim": e.dim,
                "cache_key": e.cache_key(),
                "prompt_templates": list(e.prompt_templates),
            }

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
        async def embed_frames(self, batches: list[np.ndarray]) -> list[np.ndarray]:
            """Concatenate the waiting requests' segments, embed once, split the rows back."""
            sizes = [len(b) for b in batches]
            frames = np.concatenate(batches, axis=0)
            metrics.EMBED_BATCH_SIZE.observe(len(frames))
            out = await asyncio.to_thread(self._embed, frames)
            return list(np.split(out, np.cumsum(sizes)[:-1], axis=0))

        def _embed(self, frames: np.ndarray) -> np.ndarray:
            with self._lock:
                return self.embedder.embed_frames(frames)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
        async def decode_embed(self, requests: list[dict[str, Any]]) -> list[np.ndarray]:
            """``fused_decode_embed``: several jobs' batches decoded (DALI on this replica's GPU)
            and embedded in one pass; only embeddings leave the GPU. Unverified on GPU."""
            start = time.perf_counter()
            out = await asyncio.to_thread(self._decode_embed, requests)
            metrics.STAGE_SECONDS.labels(stage="decode").observe(time.perf_counter() - start)
            return out

        def _decode_embed(self, requests: list[dict[str, Any]]) -> list[np.ndarray]:
            from services.serve.gpu_batch import decode_embed_batch, gpu_sampler

            with self._lock:
                if self._sampler is None:
                    self._sampler = gpu_sampler(self.settings)
                return decode_embed_batch(self._sampler, self.embedder, requests)

        async def embed_texts(self, steps: list[str]) -> np.ndarray:
            """Step texts -> embeddings."""
            return await asyncio.to_thread(self._embed_texts, steps)

        def _embed_texts(self, steps: list[str]) -> np.ndarray:
            with self._lock:
                return self.embedder.embed_texts(steps)

    @serve.deployment(name="Decoder")
    class DecoderDeployment:
        """Frame sampling: DALI (NVDEC) on a replica with a GPU share and DALI installed, else PyAV.

        One request = one batch of segments of one video on the shared archive volume.
        """

        def __init__(self, settings: dict[str, Any]) -> None:
            from biovl_core.video import choose_decoder, get_sampler

            self.settings = ServiceSettings.from_dict(settings)
            # Probed once per replica; choose_decoder itself warns when a visible GPU falls back.
            self.choice = choose_decoder(self.settings.pipeline_config().decoder)
            if self.choice.reason == "no_cuda" and self.settings.decoder_num_gpus > 0:
                log.warning(
                    "Decoder replica has a GPU share but decodes with PyAV: %s", self.choice.detail
                )
            dali = self.choice.backend == "dali"
            options = {"clips_per_run": self.settings.decoder_clips_per_run} if dali else {}
            self.sampler = get_sampler(self.choice.backend, **options)
            self._decode_batched.set_max_batch_size(self.settings.decode_max_batch_size)
            self._decode_batched.set_batch_wait_timeout_s(self.settings.decode_batch_wait_timeout_s)
            metrics.DECODER_BACKEND.labels(
                backend=self.choice.backend, reason=self.choice.reason
            ).set(1)
            # A DALI pipeline is a stateful object: one run at a time, but each run carries the
            # clips of every waiting request (_decode_batched); PyAV opens per call, no lock.
            self._lock = threading.Lock() if dali else None
            log.info(
                "Decoder replica decodes with the %s sampler (%s)",
                self.sampler.name,
                self.choice.reason,
            )
            self._calls = 0
            self._segments = 0
            if self.settings.worker_metrics_port:
                metrics.serve_metrics(self.settings.worker_metrics_port)

        async def decode(self, path: str, timestamps: np.ndarray, size: int) -> np.ndarray:
            """uint8 RGB frames [b, k, size, size, 3] shown at ``timestamps`` [b, k] (seconds)."""
            start = time.perf_counter()
            metrics.DECODE_SESSIONS.inc()  # requests in flight (DALI: clips of the shared runs)
            try:
                if self._lock is not None:  # DALI: batched with other jobs' requests
                    request = {"path": path, "timestamps": timestamps, "size": size}
                    frames = await self._decode_batched(request)
                else:
                    frames = await asyncio.to_thread(self._decode, path, timestamps, size)
            finally:
                metrics.DECODE_SESSIONS.dec()
            metrics.STAGE_SECONDS.labels(stage="decode").observe(time.perf_counter() - start)
            self._calls += 1
            self._segments += len(frames)
            return frames

        def _decode(self, path: str, timestamps: np.ndarray, size: int) -> np.ndarray:
            frames = np.asarray(self.sampler.sample(path, timestamps, size))
            metrics.observe_decode(self.sampler.last_stats)  # last_stats: this call's
            return frames

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
        async def _decode_batched(self, requests: list[dict[str, Any]]) -> list[np.ndarray]:
            """The waiting requests' clips in shared DALI runs (several NVDEC sessions)."""
            return await asyncio.to_thread(self._decode_many, requests)

        def _decode_many(self, requests: list[dict[str, Any]]) -> list[np.ndarray]:
            from services.serve.gpu_batch import decode_batch

            with self._lock:
                return decode_batch(self.sampler, requests)

        def stats(self) -> dict[str, Any]:
            """Which sampler this replica runs and what it decoded (tests, debugging)."""
            return {
                "sampler": self.sampler.name,
                "reason": self.choice.reason,
                "calls": self._calls,
                "segments": self._segments,
                "fallbacks": getattr(self.sampler, "fallbacks", 0),
            }

    @serve.deployment(name="Aligner")
    class AlignerDeployment:
        """Alignment requests from concurrent jobs, batched into one ``align_batch`` call per
        (method, params) group; backend "auto" follows align.py's rule per group (the CuPy
        wavefront kernel for batches big enough to pay for the copy on a GPU replica, else numba)."""

        def __init__(self, settings: dict[str, Any]) -> None:
            self.settings = ServiceSettings.from_dict(settings)
            self.backend = self.settings.pipeline_config().backend
            self.align_batched.set_max_batch_size(self.settings.align_max_batch_size)
            self.align_batched.set_batch_wait_timeout_s(self.settings.align_batch_wait_timeout_s)
            self._backends: dict[str, int] = {}  # backend -> request groups it solved
            self._batches = 0
            self._requests = 0
            self._max_batch = 0
            if self.settings.worker_metrics_port:
                metrics.serve_metrics(self.settings.worker_metrics_port)

        async def align(self, request: dict[str, Any]) -> Any:
            """One video's alignment (``Alignment``), or the exception its request raised."""
            start = time.perf_counter()
            out = await self.align_batched(request)
            metrics.STAGE_SECONDS.labels(stage="align").observe(time.perf_counter() - start)
            return out

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
        async def align_batched(self, requests: list[dict[str, Any]]) -> list[Any]:
            """The waiting requests, grouped by method and parameters, one kernel call per group."""
            self._batches += 1
            self._requests += len(requests)
            self._max_batch = max(self._max_batch, len(requests))
            return await asyncio.to_thread(align_requests, requests, self.backend, self._backends)

        def stats(self) -> dict[str, Any]:
            """Backends used (the most used first) and batching counters (tests, debugging)."""
            used = sorted(self._backends, key=self._backends.get, reverse=True)
            return {
                "backend": used[0] if used else None,
                "backends": dict(self._backends),
                "batches": self._batches,
                "requests": self._requests,
                "max_batch": self._max_batch,
            }

    @serve.deployment(name="QueueWorker")
    class QueueWorkerDeployment:
        """Consumes the Redis stream; decoding, embedding and aligning run on their deployments."""

        def __init__(
            self, settings: dict[str, Any], embedder: Any, decoder: Any = None, aligner: Any = None
        ) -> None:
            from services.concurrency import WorkerPool

            self.settings = ServiceSettings.from_dict(settings)
            self._runner_args = (embedder, decoder, aligner)
            self.worker: WorkerPool | None = None
            self._error: BaseException | None = None
            self._thread = threading.Thread(target=self._run, name="queue-worker", daemon=True)
            self._thread.start()

        def _run(self) -> None:
            from services.concurrency import WorkerPool, plan_concurrency
            from services.serve.remote import ServeRunner

            try:
                plan = plan_concurrency(self.settings)
                log.info("QueueWorker replica %s", plan.describe())
                runner = ServeRunner(self.settings, *self._runner_args)
                self.worker = WorkerPool(self.settings, runner, plan.jobs_in_flight)
                if self.settings.worker_metrics_port:
                    metrics.serve_metrics(self.settings.worker_metrics_port)
                metrics.start_sampler(self.worker.sample_queue)
                self.worker.run_forever()
            except BaseException as exc:  # reported by check_health, so Serve restarts us
                log.exception("queue worker stopped")
                self._error = exc

        def check_health(self) -> None:
            """Unhealthy when the worker thread died (Serve then replaces the replica)."""
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"queue worker thread stopped: {self._error!r}")

        def stats(self) -> dict[str, Any]:
            """Consumer names, one per job in flight (for tests and debugging)."""
            consumers = self.worker.consumers if self.worker else []
            return {"consumer": consumers[0] if consumers else None, "consumers": consumers}

        def __del__(self) -> None:
            if self.worker is not None:
                self.worker.stop()

    @serve.deployment(name="Ingress")
    @serve.ingress()
    class IngressDeployment:
        """The HTTP API."""

        def __init__(self, settings: dict[str, Any], _worker: Any = None) -> None:
            from services.api import JobService

            self.service = JobService(ServiceSettings.from_dict(settings))
            self._worker = _worker  # keeps the QueueWorker deployment in the application
            if self.service.settings.worker_metrics_port:  # the node's metrics, off the API port
                self.metrics = metrics.NodeMetrics(
                    self.service.queue, self.service.settings.worker_metrics_port
                )

        def __serve_build_asgi_app__(self) -> Any:
            from services.api import create_app

            return create_app(self.service)

    return {
        "Decoder": DecoderDeployment,
        "Embedder": EmbedderDeployment,
        "Aligner": AlignerDeployment,
        "QueueWorker": QueueWorkerDeployment,
        "Ingress": IngressDeployment,
    }

"""How many jobs run at once, and on how many threads: decided here, from the CPU and GPU count.

One worker process (a Serve ``QueueWorker`` replica or ``python -m services worker``) runs
``jobs_in_flight`` Worker loops side by side, each its own Redis consumer, sharing one runner.
While one job waits on the Decoder another is embedded and a third aligned, so the CPUs stay
busy; the Embedder batches the concurrent jobs' segments into one forward pass. Torch's
intra-op threads are capped so that jobs x threads stays about the core count.

Settings ``jobs_in_flight`` and ``torch_threads`` take a number or ``"auto"`` (the default);
every process logs the resolved plan once at start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.settings import ServiceSettings

log = logging.getLogger("biovl.concurrency")

MAX_JOBS_IN_FLIGHT = 32
"""Upper bound of the automatic choice: beyond it Redis connections and memory grow for nothing."""

JOBS_PER_CPU = 2
"""Automatic jobs in flight per core on a CPU node: a job spends about half its time waiting on
another deployment (decode, embed, align, archive writes), so two per core keep each core fed
(measured with ``make loadtest``, docs/BENCHMARKS.md)."""

JOBS_PER_GPU = 8
"""Automatic jobs in flight per GPU: enough concurrent jobs for the Embedder's batches to fill
(unverified, not run on a GPU)."""


@dataclass(frozen=True)
class Concurrency:
    """The resolved plan of one process: what it runs at once, and why."""

    cpus: int
    gpus: int
    jobs_in_flight: int  # Worker loops (Redis consumers) in one worker process
    torch_threads: int  # intra-op threads of one in-process embedding call
    embedder_threads: int  # intra-op threads of an Embedder replica (one batched call at a time)
    source: str  # "auto" or "settings" (per field: which ones were given)

    def describe(self) -> str:
        """One log line."""
        return (
            f"concurrency: {self.jobs_in_flight} job(s) in flight per worker process, "
            f"{self.torch_threads} torch thread(s) per in-process job, {self.embedder_threads} "
            f"per Embedder replica, from {self.cpus} CPU(s) and {self.gpus} GPU(s) ({self.source})"
        )


def cpu_count() -> int:
    """CPUs this process may use: its affinity mask, bounded by a cgroup v2 CPU quota (k8s limits)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def gpu_count() -> int:
    """GPUs visible to this process (0 with ``BIOVL_DEVICE=cpu``, without NVML, or without GPUs)."""
    from biovl_core.device import forced_device

    if forced_device() == "cpu":
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:  # no pynvml, no driver: no GPU to plan for
        return 0


def _given(value: Any, name: str) -> int | None:
    """A setting's number, or None for "auto"; refuses anything else with the fix."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(
            f"service setting {name}={value!r} is not understood: give a whole number >= 1 "
            f'or "auto" (BIOVL_{name.upper()} or the settings YAML)'
        )
    return number


def plan_concurrency(
    settings: ServiceSettings, cpus: int | None = None, gpus: int | None = None
) -> Concurrency:
    """The jobs in flight per worker process and the torch threads per job, for this machine."""
    cpus = cpu_count() if cpus is None else max(1, cpus)
    gpus = gpu_count() if gpus is None else max(0, gpus)
    jobs = _given(settings.jobs_in_flight, "jobs_in_flight")
    threads = _given(settings.torch_threads, "torch_threads")
    given = [n for n, v in (("jobs_in_flight", jobs), ("torch_threads", threads)) if v]
    if jobs is None:
        jobs = min(MAX_JOBS_IN_FLIGHT, max(JOBS_PER_CPU * cpus, JOBS_PER_GPU * gpus))
    # The Embedder deployment runs one batched forward pass at a time: it gets every core. (Ray
    # sets OMP_NUM_THREADS=1 in replicas that reserve no CPUs, which would leave torch on one.)
    embedder_threads = threads or cpus
    if threads is None:
        threads = max(1, cpus // jobs)
    source = f"settings: {', '.join(given)}" if given else "auto"
    return Concurrency(cpus, gpus, jobs, threads, embedder_threads, source)


def apply_torch_threads(threads: int) -> None:
    """Cap torch's intra-op threads in this process (when torch is installed)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(max(1, int(threads)))


FINGERPRINT_BYTES = 64 * 1024


def video_fingerprint(path: str | os.PathLike[str]) -> str:
    """Cheap identity of a video file: its size and its first and last 64 KiB. Equal files give
    equal fingerprints; two different files that collide only run one after another."""
    import hashlib

    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        digest = hashlib.sha256(str(size).encode())
        digest.update(fh.read(FINGERPRINT_BYTES))
        fh.seek(max(0, size - FINGERPRINT_BYTES))
        digest.update(fh.read(FINGERPRINT_BYTES))
    return digest.hexdigest()


class OneJobPerVideo:
    """A runner wrapper: jobs of the same recording in one process run one after another, so the
    second finds the first's embeddings in the cache instead of decoding and embedding again.
    Jobs of different recordings overlap freely."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}  # fingerprint -> (lock, users)

    def __getattr__(self, name: str) -> Any:  # remote_stages and the like
        return getattr(self.runner, name)

    def model_identity(self, cfg: Any) -> tuple[str, str, str]:
        """The wrapped runner's model identity."""
        return self.runner.model_identity(cfg)

    def run(self, video: Path, *args: Any, **kwargs: Any) -> Any:
        """The wrapped runner's ``run``, after any running job of the same recording."""
        key = video_fingerprint(video)
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                return self.runner.run(video, *args, **kwargs)
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


def reclaim_slots(settings: ServiceSettings, jobs_in_flight: int) -> int:
    """Re-claim slots beside ``jobs_in_flight`` ("auto": as many, so one process can take over
    everything a crashed one of the same size ran; 0 turns them off)."""
    value = settings.reclaim_slots
    if value is None or str(value).strip().lower() == "auto":
        return jobs_in_flight
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        raise ValueError(
            f"service setting reclaim_slots={value!r} is not understood: give a whole number "
            '>= 0 or "auto" (BIOVL_RECLAIM_SLOTS or the settings YAML)'
        ) from None


class WorkerPool:
    """``jobs_in_flight`` Worker loops in one process sharing one runner, queue and notifier,
    plus ``reclaim_slots`` loops that only take over jobs whose worker died; each is its own
    Redis consumer. Jobs of one recording take turns (``OneJobPerVideo``), so they share its
    embeddings.

    The re-claim slots poll for entries idle past the lease every ``reclaim_poll_s`` (a tenth
    of the lease, at most 1 s), so a crashed worker's job is re-claimed within about lease +
    1 s even while every ordinary slot runs a job of many minutes (for that while the process
    runs more jobs than ``jobs_in_flight``, and its ordinary slots take no new work, only dead
    workers' jobs, until it is back under: so re-claim capacity comes back as soon as any job
    ends). One of them also removes, now and then, consumers left behind by dead workers once
    their entries were taken over.

    The first keeps the base consumer name, the others get ``-2``, ``-3``, ... appended (the
    re-claim slots ``-r1``, ``-r2``, ...). ``max_jobs`` bounds the jobs of the whole pool (for
    tests and one-shot runs).
    """

    def __init__(
        self,
        settings: ServiceSettings,
        runner: Any,
        jobs_in_flight: int,
        *,
        consumer: str | None = None,
    ) -> None:
        from services.worker import Worker

        spare = reclaim_slots(settings, jobs_in_flight)
        runner = OneJobPerVideo(runner) if jobs_in_flight + spare > 1 else runner
        first = Worker(settings, runner, consumer=consumer)

        def sibling(name: str) -> Worker:
            return Worker(
                settings,
                runner,
                queue=first.queue,
                archive=first.archive,
                notifier=first.notifier,
                consumer=name,
            )

        self.workers = [first] + [
            sibling(f"{first.consumer}-{i}") for i in range(2, jobs_in_flight + 1)
        ]
        self.reclaimers = [sibling(f"{first.consumer}-r{i}") for i in range(1, spare + 1)]
        self.jobs_in_flight = jobs_in_flight
        self._busy = 0
        for w in self.workers + self.reclaimers:
            w.admit_new = self._admits_new
            w.busy = self._running
        lease = first.queue.visibility_timeout_s
        self.reclaim_poll_s = min(1.0, lease / 10)
        self.consumer_idle_s = max(60.0, 4 * lease)  # a dead consumer is removed after this
        self._tickets: int | None = None
        self._lock = threading.Lock()
        self._handled = 0

    def _admits_new(self) -> bool:
        """New work only while fewer than ``jobs_in_flight`` jobs run: after re-claims pushed the
        process over, it takes over dead workers' jobs only, until it is back under."""
        with self._lock:
            return self._busy < self.jobs_in_flight

    @contextmanager
    def _running(self) -> Iterator[None]:
        """Count a job running in one of the pool's loops."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1

    @property
    def consumers(self) -> list[str]:
        """The Redis consumer names of the pool's loops (re-claim slots last)."""
        return [w.consumer for w in self.workers + self.reclaimers]

    def _take_ticket(self) -> bool:
        """True while the pool may start another job (always, without ``max_jobs``)."""
        with self._lock:
            if self._tickets is None:
                return True
            if self._tickets <= 0:
                return False
            self._tickets -= 1
            return True

    def _loop(self, worker: Any) -> None:
        """One slot: claim and process one job at a time until stopped or out of tickets."""
        while not worker.stop_event.is_set() and self._take_ticket():
            handled = worker.run_forever(max_jobs=1)
            with self._lock:
                self._handled += handled
            if handled == 0:  # stopped while waiting for a job
                return

    def _reclaim_loop(self, worker: Any, tidies: bool) -> None:
        """One re-claim slot: take over a job whose lease ran out and run it; else wait a poll."""
        queue = worker.queue
        next_tidy = time.monotonic() + self.consumer_idle_s
        while not worker.stop_event.is_set():
            with self._lock:
                if self._tickets is not None and self._tickets <= 0:
                    return
            try:
                claim = queue.claim(worker.consumer, block_ms=0, new=False)
                if tidies and time.monotonic() >= next_tidy:
                    next_tidy = time.monotonic() + self.consumer_idle_s
                    gone = queue.remove_idle_consumers(self.consumer_idle_s)
                    if gone:
                        log.info("removed %d idle consumer(s): %s", len(gone), gone)
            except Exception as exc:  # Redis down: the next poll retries
                log.warning("re-claim poll failed: %s", exc)
                claim = None
            if claim is None:
                worker.stop_event.wait(self.reclaim_poll_s)
                continue
            if not self._take_ticket():
                return
            with self._running():
                worker.process(claim)
            with self._lock:
                self._handled += 1

    def run_forever(self, max_jobs: int | None = None) -> int:
        """Run every slot until ``stop()`` (or ``max_jobs`` over the pool); returns jobs handled.
        The re-claim slots stop with the last ordinary slot."""
        self._tickets = max_jobs
        threads = [
            threading.Thread(target=self._loop, args=(w,), name=f"worker-{w.consumer}", daemon=True)
            for w in self.workers
        ]
        spares = [
            threading.Thread(
                target=self._reclaim_loop,
                args=(w, i == 0),
                name=f"reclaim-{w.consumer}",
                daemon=True,
            )
            for i, w in enumerate(self.reclaimers)
        ]
        for t in spares:
            t.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for w in self.reclaimers:
            w.stop()
        for t in spares:
            t.join()
        self.workers[0].close()  # the shared notifier: webhook deliveries under way
        return self._handled

    def stop(self) -> None:
        """Let every slot finish its current job, then leave ``run_forever``."""
        for w in self.workers + self.reclaimers:
            w.stop()

    def sample_queue(self) -> None:
        """Refresh the queue gauges (one slot's queue speaks for all)."""
        self.workers[0].sample_queue()

"""Where ``biovl realign``'s stages run: in this process or as a Ray Data pipeline, the Ray
connection that decides between them, and the lock that keeps one run per archive."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from services.archive import Archive
from services.realign.plan import ModelIdentity, Task
from services.realign.stages import (
    Batch,
    SimilarityStage,
    align_stage,
    columns,
    rows_of,
    write_stage,
)
from services.runner import LocalRunner

log = logging.getLogger("biovl.realign")

EMBED_BATCH = 4  # recordings per call of an embedding actor
REACHABILITY_TIMEOUT_S = 5.0


def run_local(
    tasks: list[Task], ident: ModelIdentity, runner: LocalRunner, batch: int
) -> Iterator[dict[str, Any]]:
    """The stages in this process, ``batch`` recordings at a time; one outcome row per task."""
    stage = SimilarityStage(ident.to_dict(), runner)
    for i in range(0, len(tasks), batch):
        b: Batch = columns([t.row() for t in tasks[i : i + batch]])
        b = stage(b)
        b = align_stage(b, ident.to_dict())
        b = write_stage(b, ident.model_key)
        yield from rows_of(b)


def run_ray(
    tasks: list[Task],
    ident: ModelIdentity,
    batch: int,
    *,
    actors: int,
    embed_num_gpus: float,
    align_num_gpus: float,
    embed_resources: dict[str, float] | None = None,
) -> Iterator[dict[str, Any]]:
    """The same stages as a Ray Data pipeline: read -> similarity (actor pool) -> align -> write."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    identity = ident.to_dict()
    ds = ray.data.from_items([t.row() for t in tasks])
    ds = ds.map_batches(
        SimilarityStage,
        fn_constructor_kwargs={"identity": identity},
        batch_size=EMBED_BATCH,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors)),
        num_gpus=embed_num_gpus,
        num_cpus=1,
        **({"resources": embed_resources} if embed_resources else {}),
    )
    ds = ds.map_batches(
        align_stage,
        fn_kwargs={"identity": identity},
        batch_size=batch,
        batch_format="numpy",
        num_gpus=align_num_gpus,
    )
    ds = ds.map_batches(
        write_stage,
        fn_kwargs={"model_key": ident.model_key},
        batch_size=batch,
        batch_format="numpy",
    )
    yield from ds.iter_rows()


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

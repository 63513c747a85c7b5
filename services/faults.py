"""Faults of the service's environment (Redis unreachable or refusing writes, a full disk), told
apart from a job's own failure: one place decides what is a fault, how the API answers it and
how long a worker waits it out.

- ``fault_of(exc)`` -> a ``Fault`` (HTTP status 503 or 507, a message naming what is wrong and
  what to do, and Retry-After), or None for anything else.
- ``is_redis_fault`` -> True for an error that says Redis is down, loading, read-only, or
  refusing writes (``MISCONF``: its disk is full or failing); such an error is never charged
  to a job (``services.worker``).
- ``is_disk_full`` -> ENOSPC / EDQUOT.
"""

from __future__ import annotations

import errno
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis
import redis.exceptions as rexc

T = TypeVar("T")

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Redis error replies that mean "the server cannot take writes now", not "the command is wrong"
REDIS_WRITE_REFUSALS = ("MISCONF", "READONLY", "LOADING", "MASTERDOWN", "NOREPLICAS", "OOM")
REDIS_RETRY_AFTER_S = 15
DISK_RETRY_AFTER_S = 60


@dataclass(frozen=True)
class Fault:
    """How the API answers an environment fault."""

    status: int  # 503 (Redis) or 507 (the archive disk is full)
    message: str
    retry_after_s: int


def is_disk_full(exc: BaseException) -> bool:
    """True for a write refused because the disk (or the quota) is full."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def is_redis_fault(exc: BaseException) -> bool:
    """True when Redis is unreachable, loading, read-only or refusing writes (MISCONF, OOM)."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, rexc.ReadOnlyError)):
        return True
    if isinstance(exc, redis.ResponseError):
        return str(exc).upper().startswith(REDIS_WRITE_REFUSALS)
    return False


def is_fault(exc: BaseException) -> bool:
    """True for a fault of the environment (Redis, a full disk), never the job's own failure."""
    return is_disk_full(exc) or is_redis_fault(exc)


def fault_of(exc: BaseException) -> Fault | None:
    """The API's answer to ``exc`` when it is an environment fault, else None."""
    if is_disk_full(exc):
        return Fault(
            507,
            "the archive disk is full (no space left to store the upload or its results); "
            f"nothing was lost: retry in {DISK_RETRY_AFTER_S} s, and if it persists tell the "
            "operator to free space on the archive volume",
            DISK_RETRY_AFTER_S,
        )
    if is_redis_fault(exc):
        text = str(exc).split("\n")[0][:200]
        if isinstance(exc, redis.ResponseError) and text.upper().startswith("MISCONF"):
            what = "the job queue (Redis) refuses writes because it cannot save to its disk"
        elif isinstance(exc, redis.ResponseError):
            what = f"the job queue (Redis) refuses writes ({text})"
        else:
            what = f"the job queue (Redis) is unreachable ({type(exc).__name__}: {text})"
        return Fault(
            503,
            f"{what}; nothing was lost: retry in {REDIS_RETRY_AFTER_S} s, and if it persists "
            "tell the operator (GET /v1/healthz names the problem)",
            REDIS_RETRY_AFTER_S,
        )
    return None


def patiently(
    call: Callable[[], T],
    patience_s: float,
    *,
    first_wait_s: float = 0.25,
    max_wait_s: float = 5.0,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """``call()``, retried through Redis faults with a growing wait for up to ``patience_s``;
    the last fault is raised once patience runs out (any other error at once)."""
    deadline = time.monotonic() + patience_s
    wait = first_wait_s
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_redis_fault(exc) or time.monotonic() + wait > deadline:
                raise
        sleep(wait)
        wait = min(max_wait_s, wait * 2)


def redis_write_problem(client: redis.Redis, key: str) -> str | None:
    """Why Redis cannot take the queue's writes now (unreachable, MISCONF, its last save or AOF
    write failed), or None when a real write goes through."""
    try:
        client.set(key, f"{time.time():.3f}", ex=60)
        info = client.info("persistence")
    except Exception as exc:
        fault = fault_of(exc)
        return fault.message.split(";")[0] if fault else f"redis: {type(exc).__name__}: {exc}"
    for field, what in (("rdb_last_bgsave_status", "save"), ("aof_last_write_status", "AOF write")):
        if str(info.get(field, "ok")) != "ok":
            return (
                f"the job queue (Redis) cannot persist: its last {what} failed "
                f"({field}={info.get(field)}); free space on its data disk"
            )
    return None


def disk_problem(path: str | Path, min_free_bytes: int) -> str | None:
    """Why the archive volume cannot take new work (less than ``min_free_bytes`` free), or None."""
    try:
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return f"the archive volume {path} cannot be read ({exc.strerror or exc})"
    if free < min_free_bytes:
        return (
            f"the archive disk is full: {free / 2**20:.1f} MiB free, under the "
            f"{min_free_bytes / 2**20:.0f} MiB minimum (min_free_archive_bytes); free space on it"
        )
    return None


WRITE_RETRY_S = 10.0
WRITE_PATIENCE_S = 6 * 3600.0
_log = logging.getLogger("biovl.faults")


def write_later(
    write: Callable[[], object],
    what: str,
    *,
    every_s: float = WRITE_RETRY_S,
    patience_s: float = WRITE_PATIENCE_S,
) -> threading.Thread:
    """Keep retrying ``write`` in the background (e.g. a dead job's record, once a full archive
    disk has room again) every ``every_s`` for up to ``patience_s``; ``what`` names it in logs."""

    def retry() -> None:
        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline:
            time.sleep(every_s)
            try:
                write()
                _log.info("%s (after a failed write)", what)
                return
            except (OSError, ValueError) as exc:
                _log.debug("%s: still not writable: %s", what, exc)
        _log.error("%s: gave up after %.0f s", what, patience_s)

    thread = threading.Thread(target=retry, name="write-later", daemon=True)
    thread.start()
    return thread

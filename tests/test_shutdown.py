"""SIGTERM to `make run` or `biovl serve` stops every process they started (Ray's raylet, GCS,
DashboardAgent, RuntimeEnvAgent, workers, and the embedded redis-server)."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from fixtures_embed import TINY_MODEL, make_tiny_clip_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout_s: float) -> str:
    """Read the command's output (in a thread) until a line contains ``needle``."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} not printed within {timeout_s} s:\n{''.join(seen)[-3000:]}")


def _tree(pid: int) -> list[psutil.Process]:
    """The process and everything below it."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _leftovers(pids: set[int], marker: str) -> list[str]:
    """Processes still alive among ``pids``, or whose command line names ``marker``."""
    left = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.info["pid"] in pids or marker in cmd:
                left.append(f"{proc.info['pid']}: {cmd[:120]}")
        except psutil.Error:
            continue
    return left


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("command", ["make run", "biovl serve"])
def test_sigterm_leaves_no_process_behind(command: str, tmp_path: Path) -> None:
    checkpoint = make_tiny_clip_checkpoint(tmp_path / "tiny.pt", seed=0)
    var = tmp_path / "var"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS")}
    env.update(
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
        BIOVL_HTTP_PORT=str(port),
        BIOVL_LAB_TOKENS="lab-a:test-token-a",
        BIOVL_ARCHIVE_DIR=str(var / "archive"),
        BIOVL_PIPELINE=(
            f'{{"model": "{TINY_MODEL}", "pretrained": null, "checkpoint": "{checkpoint}", '
            '"device": "cpu"}'
        ),
    )
    if command == "make run":
        argv = ["make", "-o", ".venv/.installed", "run", f"PY={sys.executable}"]
        argv += [f"RUN_ARGS=--no-sample --port {port} --var-dir {var}"]
        ready = "Serving; Ctrl-C stops."
    else:
        argv = [sys.executable, "-m", "services.cli", "serve"]
        ready = "serving on http://"
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    started: set[int] = set()
    try:
        _wait_for_line(proc, ready, timeout_s=300)
        started = {p.pid for p in _tree(proc.pid)}
        names = " ".join(p.name() for p in _tree(proc.pid) if p.is_running())
        assert "raylet" in names or "ray::" in names or "gcs_server" in names, names
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _leftovers(started, str(var)):
            time.sleep(0.5)
        assert _leftovers(started, str(var)) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in _leftovers(started, str(var)):
            os.kill(int(p.split(":")[0]), signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_to_the_process_group_ends_everything(tmp_path: Path) -> None:
    """systemd's default stop: SIGTERM to every process of the group at once, Ray's included.
    ``python -m services.run_local`` still ends its embedded redis-server and every Ray process,
    without waiting out Ray's GCS reconnect timeout (a minute)."""
    checkpoint = make_tiny_clip_checkpoint(tmp_path / "tiny.pt", seed=0)
    var = tmp_path / "var"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS")}
    env.update(
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
        BIOVL_LAB_TOKENS="lab-a:test-token-a",
        BIOVL_PIPELINE=(
            f'{{"model": "{TINY_MODEL}", "pretrained": null, "checkpoint": "{checkpoint}", '
            '"device": "cpu"}'
        ),
    )
    argv = [sys.executable, "-m", "services.run_local", "--no-sample", "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--var-dir", str(var)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as under systemd
    )
    started: set[int] = set()
    try:
        out = _wait_for_line(proc, "Serving; Ctrl-C stops.", timeout_s=300)
        started = {p.pid for p in _tree(proc.pid)}
        names = " ".join(p.name() for p in _tree(proc.pid) if p.is_running())
        assert "redis-server" in names and "gcs_server" in names, names
        signalled = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
        took = time.monotonic() - signalled
        print(f"process-group SIGTERM: run_local exited {proc.returncode} after {took:.1f} s")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _leftovers(started, str(var)):
            time.sleep(0.5)
        assert _leftovers(started, str(var)) == [], out[-2000:]
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in _leftovers(started, str(var)):
            os.kill(int(p.split(":")[0]), signal.SIGKILL)

"""Where the biovl_* samples of each process end up: every Serve replica, standalone worker and
realign driver of a node in one endpoint, each counted once (real prometheus_client multiprocess
files written by separate interpreters)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from services import metrics
from services.settings import ServiceSettings
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    """This environment without any metrics folder, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (metrics.MULTIPROC_ENV, metrics.METRICS_DIR_ENV)
    }
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _python(code: str, env: dict[str, str], *args: str) -> str:
    """Run ``code`` in a fresh interpreter with ``env``; its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_serve_app_gets_a_node_folder_when_none_is_configured() -> None:
    """`biovl serve` without BIOVL_METRICS_DIR: each replica must still record into a role folder
    of one node folder (before, each served its own registry and the port showed one of them)."""
    pytest.importorskip("ray")
    from ray.serve._private.build_app import build_app as build_serve_app

    from services.serve.app import build_app

    settings = ServiceSettings(worker_metrics_port=free_port(), metrics_dir=None)
    built = build_serve_app(build_app(settings), name="biovl")
    folders = {
        d.name: Path(d.ray_actor_options["runtime_env"]["env_vars"][metrics.MULTIPROC_ENV])
        for d in built.deployments
    }
    assert set(folders) == {"Ingress", "QueueWorker", "Decoder", "Embedder", "Aligner"}
    assert folders["Ingress"].name == "ingress"
    assert {f.name for n, f in folders.items() if n != "Ingress"} == {"pipeline"}
    assert len({f.parent for f in folders.values()}) == 1, folders
    assert metrics.with_metrics_dir(settings.replace(worker_metrics_port=0)).metrics_dir is None


def test_a_process_with_biovl_metrics_dir_joins_the_node_endpoint(tmp_path: Path) -> None:
    """A standalone worker or the realign driver started with BIOVL_METRICS_DIR records into the
    node's standalone folder; the endpoint a Serve replica holds sums it with the replicas'."""
    node = tmp_path / "node"
    record = (
        "import sys; from services import metrics; "
        "metrics.JOBS.labels(state=sys.argv[1]).inc(int(sys.argv[2])); "
        "metrics.REALIGN_RECORDINGS.labels(outcome='done').inc(int(sys.argv[3]))"
    )
    # a QueueWorker replica (Serve gives it its role folder), a standalone worker, a realign driver
    _python(record, _env(**{metrics.MULTIPROC_ENV: str(node / "pipeline")}), "succeeded", "2", "0")
    _python(record, _env(**{metrics.METRICS_DIR_ENV: str(node)}), "succeeded", "3", "0")
    _python(record, _env(**{metrics.METRICS_DIR_ENV: str(node)}), "started", "0", "5")
    assert sorted(p.name for p in node.iterdir()) == ["pipeline", "standalone"]
    text = _python(
        "from services import metrics; print(metrics.render()[0].decode())",
        _env(**{metrics.MULTIPROC_ENV: str(node / "ingress")}),
    )
    assert 'biovl_jobs_total{state="succeeded"} 5.0' in text
    assert 'biovl_realign_recordings_total{outcome="done"} 5.0' in text
    assert 'biovl_realign_recordings_total{outcome="failed"} 0.0' in text  # zero from the start
    assert text.count("# TYPE biovl_jobs_total counter") == 1


def test_a_sibling_takes_the_port_over_when_its_holder_stops(tmp_path: Path) -> None:
    """The node endpoint outlives the replica that bound it: a sibling that found the port taken
    binds it once it is free, and serves the same sums (the holder's counts included)."""
    port = free_port()
    serve = (
        "import sys, time; from services import metrics; "
        "metrics.JOBS.labels(state=sys.argv[1]).inc(); "
        "e = metrics.MetricsEndpoint(int(sys.argv[2]), '127.0.0.1', retry_s=0.1); "
        "print('serving' if e.serving else 'waiting', flush=True); time.sleep(600)"
    )
    env = _env(**{metrics.METRICS_DIR_ENV: str(tmp_path)})
    procs = []
    try:
        for state in ("submitted", "succeeded"):
            p = subprocess.Popen(
                [sys.executable, "-c", serve, state, str(port)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert p.stdout is not None
            procs.append((p, p.stdout.readline().strip()))
        assert [said for _, said in procs] == ["serving", "waiting"]
        holder, sibling = procs[0][0], procs[1][0]
        holder.terminate()
        holder.wait(timeout=30)
        text = _scrape_until(f"http://127.0.0.1:{port}/metrics", sibling)
        assert 'biovl_jobs_total{state="submitted"} 1.0' in text  # the stopped holder's count
        assert 'biovl_jobs_total{state="succeeded"} 1.0' in text
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _scrape_until(url: str, sibling: subprocess.Popen[str], timeout_s: float = 30.0) -> str:
    """GET ``url`` until it answers (the sibling serving it); fail if the sibling exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert sibling.poll() is None, "the sibling exited"
        try:
            return httpx.get(url, timeout=5).raise_for_status().text
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"nobody served {url} within {timeout_s} s after the holder stopped")


def test_the_realign_driver_serves_its_counts_after_the_run(tmp_path: Path) -> None:
    """`biovl realign --metrics-port P --metrics-linger-s S` keeps /metrics up once the run has
    printed its summary, so a batch job that ends between scrapes still gets its counts scraped."""
    from tests.fixtures_embed import TINY_MODEL, make_tiny_clip_checkpoint

    checkpoint = make_tiny_clip_checkpoint(tmp_path / "tiny.pt", seed=0)
    pipeline = f'{{"model": "{TINY_MODEL}", "pretrained": null, "checkpoint": "{checkpoint}"}}'
    port = free_port()
    (tmp_path / "archive").mkdir()
    argv = [sys.executable, "-m", "services.realign", "--archive", str(tmp_path / "archive")]
    argv += ["--dry-run", "--ray", "local", "--metrics-port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--metrics-linger-s", "600"],
        env=_env(BIOVL_PIPELINE=pipeline, BIOVL_DEVICE="cpu"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # log lines (stderr) first, then the summary (stdout)
            seen.append(line)
            if line.startswith("realign (dry run): 0 recordings"):
                break
        else:
            raise AssertionError("no summary printed:\n" + "".join(seen))
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        for outcome in metrics.REALIGN_OUTCOMES:
            assert f'biovl_realign_recordings_total{{outcome="{outcome}"}} 0.0' in text
        assert proc.poll() is None, "the driver exited before its linger"
    finally:
        proc.kill()
        proc.wait()

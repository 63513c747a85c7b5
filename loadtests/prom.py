"""A real Prometheus (Debian's ``prometheus``) scraping a local service with the project's own
scrape job, and the Grafana dashboard's queries made runnable, for the tests and ``make loadtest``.

    with Prometheus.scraping(["127.0.0.1:9464"], tmp_dir) as prom:
        prom.query('sum(increase(biovl_jobs_total{state="succeeded"}[1h]))')

The scrape job is the ``biovl-node`` job of ``deploy/prometheus.yml`` (its metrics path, its
labels), pointed at the given targets and scraped every ``interval_s``; the rules are
``deploy/alerts.yml``, so the alerts are evaluated against the live series too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "biovl-dashboard.json"
NODE_JOB = "biovl-node"  # the single-machine scrape job of deploy/prometheus.yml
BINARY_ENV = "BIOVL_PROMETHEUS"  # where a prometheus binary other than the one on PATH lives
INSTALL_HINT = (
    "run `python scripts/ensure_test_deps.py` (make test does) or `apt-get install -y prometheus`"
)
# Panels that cannot answer on a CPU box or outside the nightly run: their description says so.
GPU_ONLY = "GPU node only"
NIGHTLY_ONLY = "nightly run only"


class PrometheusUnavailable(RuntimeError):
    """No prometheus / promtool binary here, or it did not start."""


def find_tool(name: str = "prometheus") -> str:
    """Path of Debian's ``prometheus`` or ``promtool`` (``$BIOVL_PROMETHEUS``'s folder first)."""
    override = os.environ.get(BINARY_ENV)
    if override:
        candidate = Path(override).with_name(name) if name != "prometheus" else Path(override)
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise PrometheusUnavailable(f"`{name}` is not installed here: {INSTALL_HINT}")
    return found


def scrape_config(
    targets: list[str], interval_s: float = 1.0, rules: bool = True
) -> dict[str, Any]:
    """deploy/prometheus.yml's ``biovl-node`` job aimed at ``targets``, scraped every
    ``interval_s``, with deploy/alerts.yml as its rules (no Alertmanager, no cluster jobs)."""
    base = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = [j for j in base["scrape_configs"] if j["job_name"] == NODE_JOB]
    if len(jobs) != 1:
        raise ValueError(f"deploy/prometheus.yml has no single {NODE_JOB!r} scrape job")
    job = dict(jobs[0])
    labels = job["static_configs"][0].get("labels", {})
    job["static_configs"] = [{"targets": list(targets), "labels": labels}]
    interval = f"{int(interval_s * 1000)}ms"
    job["scrape_interval"] = interval
    job["scrape_timeout"] = interval
    config: dict[str, Any] = {
        "global": {
            **base["global"],
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "scrape_configs": [job],
    }
    if rules:
        config["rule_files"] = [str(DEPLOY / name) for name in base.get("rule_files", [])]
    return config


class Prometheus:
    """A running Prometheus server and its HTTP API."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log
        self.client = httpx.Client(base_url=url, timeout=30)

    @classmethod
    @contextmanager
    def scraping(
        cls, targets: list[str], folder: Path, interval_s: float = 1.0, port: int | None = None
    ) -> Iterator[Prometheus]:
        """Start Prometheus on 127.0.0.1 (a free port unless given), data under ``folder``,
        scraping ``targets`` every ``interval_s``; stopped (SIGTERM, then SIGKILL) on exit."""
        binary = find_tool("prometheus")
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(targets, interval_s)), encoding="utf-8")
        port = port or _free_port()
        log = folder / "prometheus.log"
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1d",
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        prom = cls(proc, f"http://127.0.0.1:{port}", log)
        try:
            prom.wait_ready()
            yield prom
        finally:
            prom.close()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until ``/-/ready`` answers 200; raise with the log's tail if it exits or hangs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if self.client.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-2000:]
        raise PrometheusUnavailable(f"prometheus did not become ready at {self.url}:\n{tail}")

    def close(self) -> None:
        """Stop the server this object started."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _api(self, path: str, **params: Any) -> Any:
        r = self.client.get(f"/api/v1/{path}", params=params)
        body = r.json()
        if body.get("status") != "success":
            raise ValueError(f"prometheus {path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` (at ``at``, a Unix time; default now)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value of ``expr``, or None when it returns no series."""
        result = self.query(expr, at)
        if not result:
            return None
        if len(result) > 1:
            raise ValueError(f"{expr} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def query_range(
        self, expr: str, start: float, end: float, step_s: float
    ) -> list[dict[str, Any]]:
        """The range matrix of ``expr`` from ``start`` to ``end`` (Unix times) every ``step_s``."""
        data = self._api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step_s:g}"
        )
        return data["result"]

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health and last error."""
        return self._api("targets")["activeTargets"]

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its evaluation health and state."""
        return [r for g in self._api("rules")["groups"] for r in g["rules"]]

    def scrapes_done(self) -> int:
        """Samples of ``up`` stored for the biovl scrape job (one per scrape)."""
        value = self.value(f'count_over_time(up{{job="{NODE_JOB}"}}[1h])')
        return int(value or 0)


@dataclass(frozen=True)
class PanelQuery:
    """One query of one dashboard panel."""

    panel: str
    ref: str
    expr: str
    description: str
    legend: str = ""

    @property
    def gpu_only(self) -> bool:
        """The panel's description says it answers on a GPU node only."""
        return GPU_ONLY.lower() in self.description.lower()

    @property
    def nightly_only(self) -> bool:
        """The panel's description says it answers after a nightly re-align only."""
        return NIGHTLY_ONLY.lower() in self.description.lower()


def dashboard_queries(path: Path = DASHBOARD) -> list[PanelQuery]:
    """Every target of every panel of the Grafana dashboard, in panel order."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append(
                PanelQuery(
                    panel["title"],
                    target["refId"],
                    target["expr"],
                    panel.get("description", ""),
                    target.get("legendFormat", ""),
                )
            )
    return out


def grafana_expr(expr: str, rate_interval_s: float, stage: str = ".+") -> str:
    """``expr`` as Grafana sends it: ``$__rate_interval`` and the ``$stage`` variable (All)
    replaced."""
    return expr.replace("$__rate_interval", f"{int(rate_interval_s)}s").replace("$stage", stage)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

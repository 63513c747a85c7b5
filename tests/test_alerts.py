"""The alert rules under Debian's promtool: deploy/alerts_test.yml fires every alert of
deploy/alerts.yml on series built to trigger it and keeps it quiet on healthy ones (the
PrometheusRule in k8s/ is checked equal to alerts.yml by tests/test_deploy.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from loadtests.prom import PrometheusUnavailable, find_tool

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ALERTS = DEPLOY / "alerts.yml"
ALERT_TESTS = DEPLOY / "alerts_test.yml"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in deploy/ (the unit tests name alerts.yml relative to it)."""
    try:
        tool = find_tool("promtool")
    except PrometheusUnavailable as exc:
        pytest.fail(str(exc))
    return subprocess.run(
        [tool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120, check=False
    )


def _alerts() -> set[str]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return {r["alert"] for g in groups for r in g["rules"]}


def test_every_alert_has_a_case_that_fires_it_and_one_that_keeps_it_quiet() -> None:
    doc = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    assert doc["rule_files"] == [ALERTS.name]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert _alerts() - fired == set(), "alerts no test fires"
    assert _alerts() - quiet == set(), "alerts no test keeps quiet on healthy series"
    assert fired | quiet <= _alerts(), "tests name alerts that do not exist"


def test_the_rules_pass_promtool_check() -> None:
    proc = _promtool("check", "rules", ALERTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in proc.stdout, proc.stdout


def test_the_alert_unit_tests_pass_promtool() -> None:
    proc = _promtool("test", "rules", ALERT_TESTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout, proc.stdout

"""``biovl realign --groups``: each (lab, protocol) group co-aligned, a new version only where spans
change, the same outcome in this process and on Ray Data (real Ray, real Redis, tiny model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from biovl_core.io import annotations_to_spans, read_annotations
from biovl_core.protocol import parse_protocol
from biovl_core.synthetic import make_recording
from services.archive import Archive
from services.realign import realign_archive
from services.realign.cli import main as realign_main
from services.realign.groups import refined_on_same_grid
from services.settings import ServiceSettings
from tests.service_fixtures import (  # noqa: F401  (fixtures)
    AUTH_A,
    AUTH_B,
    Env,
    checkpoint,
    make_settings,
    runner,
)


@pytest.fixture(scope="module")
def template(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    checkpoint: Path,  # noqa: F811
    runner: Any,  # noqa: F811
) -> dict[str, Any]:
    """An archive: lab-a has three PCR recordings (the first corrected), lab-b one."""
    root = tmp_path_factory.mktemp("groups")
    env = Env(make_settings(root, redis_url, checkpoint), runner)
    recs = [make_recording(root / f"rec{s}", "pcr", seed=s, duration_s=30) for s in range(3)]
    ids = []
    for headers, rec in [(AUTH_A, r) for r in recs] + [(AUTH_B, recs[1])]:
        files_ok = env.post(rec, headers=headers, annotations=False)
        assert files_ok.status_code == 202, files_ok.text
        ids.append(files_ok.json()["job_id"])
        assert env.worker().run_forever(max_jobs=1) == 1
    steps = parse_protocol((recs[0] / "protocol.txt").read_text(), "protocol.txt").steps
    truth = annotations_to_spans(read_annotations(recs[0] / "annotations.csv"), steps)
    body = [list(s) for s in truth]
    put = env.client.put(f"/v1/jobs/{ids[0]}/annotations", json=body, headers=AUTH_A)
    assert put.status_code == 200, put.text
    env.cleanup()
    return {"root": root / "archive", "settings": env.settings, "ids": ids, "truth": body}


def _copy(template: dict[str, Any], dest: Path) -> Path:
    shutil.copytree(template["root"], dest, ignore=shutil.ignore_patterns("redis"))
    return dest


def _latest(root: Path) -> dict[str, tuple[int, dict[str, Any]]]:
    return {jf.job_id: jf.latest_alignment() for jf in Archive(root).iter_jobs()}


def _spans(payload: dict[str, Any]) -> list[Any]:
    return [[s["start"], s["end"]] if s["start"] is not None else None for s in payload["steps"]]


def _run(root: Path, settings: ServiceSettings, use_ray: str, runner: Any) -> Any:  # noqa: F811
    cfg = settings.pipeline_config()
    return realign_archive(root, cfg, use_ray=use_ray, progress=False, groups=True, runner=runner)


def test_group_pass_writes_where_spans_change_then_nothing(template, tmp_path, runner):  # noqa: F811
    root = _copy(template, tmp_path / "a")
    before = _latest(root)
    summary = _run(root, template["settings"], "local", runner)
    assert (summary.done, summary.failed) == (0, 0)  # every result was current already
    g = summary.groups
    assert (g["groups"], g["recordings"], g["failed"]) == (1, 3, 0)  # lab-b's one: no group
    assert g["written"] >= 1 and g["written"] + g["unchanged"] == 3
    after = _latest(root)
    corrected, *others = template["ids"][:3]
    version, payload = after[corrected]
    assert version == before[corrected][0] + 1
    flat = [x for span in _spans(payload) for x in span]
    assert flat == pytest.approx([x for span in template["truth"] for x in span])  # its truth
    assert payload["service"]["worker"] == "realign-group"
    refined = [before[j][1]["group"].get("refined") for j in others]
    assert all(isinstance(n, int) for n in refined) and max(refined) >= 1, refined
    for job_id in others:
        v, p = after[job_id]
        grew = v > before[job_id][0]
        assert grew == (_spans(p) != _spans(before[job_id][1])), job_id
        # the worker refined its boundaries off the grid: only new grid labels replace them
        assert grew == (p["labels"] != before[job_id][1]["labels"]), job_id
        if grew:
            assert p["group"]["corrections"] == 1 and p["group"]["recordings"] == 2
    assert after[template["ids"][3]] == before[template["ids"][3]]  # lab-b untouched
    again = _run(root, template["settings"], "local", runner)
    assert (again.groups["written"], again.groups["unchanged"]) == (0, 3)
    assert _latest(root) == after


def test_group_pass_on_ray_data_matches_local(template, tmp_path, runner, ray_cluster):  # noqa: F811
    import ray

    assert ray.is_initialized()
    local, on_ray = _copy(template, tmp_path / "local"), _copy(template, tmp_path / "ray")
    want = _run(local, template["settings"], "local", runner)
    got = _run(on_ray, template["settings"], "auto", runner)
    assert got.ray is False  # the per-recording pass had nothing to do, so it stayed here
    assert got.groups["ray"] is True and want.groups["ray"] is False
    assert {**got.groups, "ray": False} == want.groups
    for job_id, (v, payload) in _latest(on_ray).items():
        lv, lp = _latest(local)[job_id]
        assert v == lv and _spans(payload) == _spans(lp), job_id


def test_cli_groups_flag_prints_the_pass(template, tmp_path, capsys, monkeypatch):
    root = _copy(template, tmp_path / "cli")
    config = tmp_path / "service.yaml"
    config.write_text(json.dumps({"pipeline": template["settings"].pipeline}))
    code = realign_main(
        ["--config", str(config), "--archive", str(root), "--ray", "local", "--quiet", "--groups"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "groups: 1 co-aligned (3 recordings)" in out


def test_a_refined_version_stands_while_its_grid_labels_do() -> None:
    # the group pass decodes no frames: it never puts a refined version back on the grid
    latest = {"labels": [0, 0, 1, -1], "group": {"used": True, "refined": 2}}
    assert refined_on_same_grid(latest, {"labels": [0, 0, 1, -1], "group": {"used": True}})
    assert not refined_on_same_grid(latest, {"labels": [0, 1, 1, -1]})  # the grid moved
    on_grid = {**latest, "group": {"used": True}}  # aligned before refinement, or switched off
    assert not refined_on_same_grid(on_grid, {"labels": [0, 0, 1, -1]})
    assert not refined_on_same_grid({"labels": [0, 0, 1, -1]}, {"labels": [0, 0, 1, -1]})

"""scripts/realign_workload.py at toy scale: distinct camera-like recordings, an archive of
another model's alignments, every recording re-embedded by `realign_archive`, the figures."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "realign_workload", ROOT / "scripts" / "realign_workload.py"
)
workload = importlib.util.module_from_spec(_spec)
sys.modules["realign_workload"] = workload
_spec.loader.exec_module(workload)


def test_profiles_spread_gop_and_bitrate_over_the_camera_ranges() -> None:
    got = workload.profiles(32)
    gops, rates = [p.gop_s for p in got], [p.bitrate_mbps for p in got]
    assert min(gops) == 0.5 and max(gops) == 1.0 and len(set(gops)) == 32
    assert min(rates) == 10.0 and max(rates) == 40.0
    assert all(p.bframes > 0 for p in got)


def test_toy_run_re_embeds_every_recording(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BIOVL_DEVICE", "cpu")
    out = tmp_path / "figures.json"
    args = ["--recordings", "2", "--seconds", "4", "--size", "192x144", "--fps", "10"]
    args += ["--segment", "0.25", "--model", "biovl-tiny-clip", "--device", "cpu"]
    args += ["--decoder", "pyav", "--batch", "1", "--work", str(tmp_path), "--json", str(out)]
    assert workload.main(args) == 0
    figures = json.loads(out.read_text())
    assert figures["recordings"] == 2 and abs(figures["video_s"] - 8.0) < 0.5
    assert figures["video_s_per_s"] > 0 and figures["steady_window_s"] > 0
    assert {"embed", "align", "write"} <= set(figures["busy_share"])
    assert {"decode", "embed_video"} <= set(figures["embed_stage_share"])
    videos = sorted((tmp_path / "recordings").glob("*.mp4"))
    assert len(videos) == 2 and videos[0].read_bytes() != videos[1].read_bytes()

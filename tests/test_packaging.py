"""The wheel (what the Docker image installs, non-editable) carries the data files and the CLI."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_static_files_model_configs_and_console_script(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("biovl_aligner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    statics = [p for p in (ROOT / "services" / "static").rglob("*") if p.is_file()]
    assert any(p.parent.name == "vendor" for p in statics), "the vendored tus client is missing"
    for static in statics:
        assert static.relative_to(ROOT).as_posix() in names
    for config in (ROOT / "biovl_core" / "embed" / "model_configs").glob("*.json"):
        assert f"biovl_core/embed/model_configs/{config.name}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "biovl = services.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith("tests/") for n in names)

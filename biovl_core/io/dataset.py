"""A data set on disk: one folder per recording holding the video, protocol and annotations.

Layout (SPEC.md "Data formats")::

    DATASET/
      pcr_01/            # folder name: <experiment>_<n> (or meta.json {"experiment": ...})
        video.mp4        # any of .mp4 .mov .mkv .avi .webm .m4v
        protocol.txt     # or protocol.json / protocol.md
        annotations.csv  # or annotations.json or annotations.eaf (ELAN); needed for scoring
        meta.json        # optional: {"experiment": "pcr"}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from biovl_core.errors import BioVLError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".ts", ".mts", ".m2ts")
PROTOCOL_NAMES = ("protocol.txt", "protocol.json", "protocol.md")
ANNOTATION_NAMES = ("annotations.csv", "annotations.json", "annotations.eaf")


@dataclass(frozen=True)
class Recording:
    """The files of one recording and the experiment it belongs to."""

    name: str
    folder: Path
    video: Path
    protocol: Path
    annotations: Path | None
    experiment: str


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _experiment_of(folder: Path) -> str:
    meta = folder / "meta.json"
    if meta.is_file():
        try:
            value = json.loads(meta.read_text(encoding="utf-8")).get("experiment")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise BioVLError(
                f'{meta}: not a JSON object ({exc}); write {{"experiment": "pcr"}}'
            ) from exc
        if value:
            return str(value)
    return re.sub(r"[_\-]?\d+$", "", folder.name) or folder.name


def load_recording(folder: Path) -> Recording:
    """Describe one recording folder, or raise an error naming what is missing."""
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise BioVLError(
            f"{folder}: no video file (looked for {', '.join(VIDEO_SUFFIXES)}); "
            "put the recording's video in this folder"
        )
    if len(videos) > 1:
        raise BioVLError(
            f"{folder}: several videos ({[v.name for v in videos]}); keep one per folder"
        )
    protocol = _first_existing(folder, PROTOCOL_NAMES)
    if protocol is None:
        raise BioVLError(f"{folder}: no protocol file; add one of {', '.join(PROTOCOL_NAMES)}")
    return Recording(
        name=folder.name,
        folder=folder,
        video=videos[0],
        protocol=protocol,
        annotations=_first_existing(folder, ANNOTATION_NAMES),
        experiment=_experiment_of(folder),
    )


def discover(root: Path) -> list[Recording]:
    """All recordings under ``root`` (one sub-folder each), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise BioVLError(
            f"{root}: not a folder; pass a data set folder with one sub-folder per recording"
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    recordings = [load_recording(f) for f in folders]
    if not recordings:
        raise BioVLError(
            f"{root}: holds no recording folders (see `biovl eval --help` for the layout)"
        )
    return recordings

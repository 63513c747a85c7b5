"""The on-disk archive, the source of truth: ``root/labs/<lab>/jobs/<job_id>/...``.

A job folder holds the uploaded ``video.<ext>``, ``protocol.txt`` (what is aligned: the uploaded
text, or the step list the lab edited before submitting, as JSON, with the uploaded text kept as
``protocol.original.txt``), optional
``annotations.<ext>``, ``job.json`` (who, what, options, status) and ``alignments/vNNNN.{json,csv,vtt}``
(one version per completed run; the JSON is written last and is the commit marker). Every write
goes through a temp file and ``os.replace``, so a reader never sees half a file, and fsyncs the
file and its folder (``biovl_core.cache.fsync_dir``), so a commit survives a crash. Lab names and
job ids are checked against strict patterns (full matches: no trailing newline slips
through a ``$``) before they touch a path.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biovl_core.files import atomic_write, fsync_dir

LAB_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
JOB_ID_RE = re.compile(r"[0-9a-f]{40}")
VIDEO_EXT_RE = re.compile(r"\.[a-z0-9]{1,8}")
ANNOTATION_EXTS = (".csv", ".json", ".eaf")
VERSION_RE = re.compile(r"v(\d{4,})\.json")


class ArchiveError(ValueError):
    """A path component or archive entry is invalid."""


def check_lab(lab: str) -> str:
    """Return ``lab`` if it is a valid lab name, else raise ArchiveError."""
    if not isinstance(lab, str) or not LAB_RE.fullmatch(lab):
        raise ArchiveError(f"invalid lab name {lab!r}: use 1-63 of a-z 0-9 _ - (lower case)")
    return lab


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it looks like a job id (40 hex digits), else raise ArchiveError."""
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise ArchiveError(f"invalid job id {job_id!r}: job ids are 40 lower-case hex digits")
    return job_id


def annotations_ext(filename: str | None) -> str:
    """'.json' or '.eaf' (ELAN) by the upload's name, else '.csv': the parser reads by it."""
    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix in (".json", ".eaf") else ".csv"


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    atomic_write(path, lambda fh: fh.write(raw))


def write_json_atomic(path: Path, obj: Any) -> None:
    """``write_atomic`` of ``obj`` as indented JSON."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def move_durable(src: Path, dst: Path) -> None:
    """``os.replace(src, dst)`` that survives a power cut once it returns: the file's data is
    flushed first and the destination folder after."""
    with open(src, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(src, dst)
    fsync_dir(dst.parent)


def make_dirs_durable(folder: Path) -> None:
    """``mkdir -p folder``, fsyncing the parent of each folder it creates, so a crash cannot
    lose a folder whose files were already committed."""
    missing: list[Path] = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        fsync_dir(path.parent)


@dataclass
class JobFiles:
    """Paths of one archived job."""

    lab: str
    job_id: str
    dir: Path

    @property
    def record_path(self) -> Path:
        """``job.json``."""
        return self.dir / "job.json"

    @property
    def protocol_path(self) -> Path:
        """``protocol.txt``."""
        return self.dir / "protocol.txt"

    @property
    def protocol_original_path(self) -> Path:
        """``protocol.original.txt``: the uploaded text when the lab edited the steps."""
        return self.dir / "protocol.original.txt"

    @property
    def alignments_dir(self) -> Path:
        """``alignments/``."""
        return self.dir / "alignments"

    def record(self) -> dict[str, Any]:
        """The job record (``job.json``)."""
        return json.loads(self.record_path.read_text(encoding="utf-8"))

    def video_path(self) -> Path:
        """The archived video (whatever its extension)."""
        name = self.record()["video"]
        return self.dir / name

    def annotations_path(self) -> Path | None:
        """The archived annotations file, if one was uploaded."""
        name = self.record().get("annotations")
        return self.dir / name if name else None

    def versions(self) -> list[int]:
        """Completed alignment versions, ascending."""
        if not self.alignments_dir.is_dir():
            return []
        found = (VERSION_RE.fullmatch(p.name) for p in self.alignments_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def alignment_path(self, version: int, ext: str = "json") -> Path:
        """``alignments/vNNNN.<ext>``."""
        return self.alignments_dir / f"v{version:04d}.{ext}"

    def latest_alignment(self) -> tuple[int, dict[str, Any]] | None:
        """(version, alignment JSON) of the newest result, or None."""
        versions = self.versions()
        if not versions:
            return None
        v = versions[-1]
        return v, json.loads(self.alignment_path(v).read_text(encoding="utf-8"))

    def find_result(self, config_key: str) -> int | None:
        """The newest version computed with ``config_key``, or None (for idempotent processing)."""
        for v in reversed(self.versions()):
            data = json.loads(self.alignment_path(v).read_text(encoding="utf-8"))
            if data.get("service", {}).get("config_key") == config_key:
                return v
        return None

    def update_record(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into ``job.json`` atomically and return the new record."""
        record = self.record()
        record.update(fields)
        write_json_atomic(self.record_path, record)
        return record

    def write_result(self, payload: dict[str, Any], csv_text: str, vtt_text: str) -> int:
        """Store one result as the next version (CSV, VTT, then the JSON commit marker).

        A version number is reserved with an exclusive ``vNNNN.lock`` file, so a worker and
        ``biovl realign`` writing the same job at once never replace each other's files; a
        lock left by a crash only makes that number unused.
        """
        versions = self.versions()
        v = (versions[-1] + 1) if versions else 1
        make_dirs_durable(self.alignments_dir)
        while True:
            lock = self.alignments_dir / f"v{v:04d}.lock"
            try:
                os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                v += 1
                continue
            try:
                if self.alignment_path(v, "json").exists():
                    v += 1
                    continue
                write_atomic(self.alignment_path(v, "csv"), csv_text)
                write_atomic(self.alignment_path(v, "vtt"), vtt_text)
                write_json_atomic(self.alignment_path(v, "json"), payload)
                return v
            finally:
                lock.unlink(missing_ok=True)


class Archive:
    """The archive root; hands out ``JobFiles`` only for validated lab / job ids."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        (self.root / "labs").mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def job(self, lab: str, job_id: str) -> JobFiles:
        """Paths of job ``job_id`` of ``lab`` (validated; the folder may not exist)."""
        return JobFiles(
            check_lab(lab), check_job_id(job_id), self.root / "labs" / lab / "jobs" / job_id
        )

    def exists(self, lab: str, job_id: str) -> bool:
        """True when the job has a committed record."""
        return self.job(lab, job_id).record_path.is_file()

    @property
    def tmp_dir(self) -> Path:
        """Where uploads wait until they are checked (same filesystem, so os.replace is atomic)."""
        return self.root / "tmp"

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh path in the archive's tmp folder."""
        return self.tmp_dir / f"{uuid.uuid4().hex}{suffix}.part"

    def remove_stale_temps(self, grace_s: float) -> int:
        """Delete temp files of killed uploads: those in tmp not written for ``grace_s`` seconds
        (a younger file may belong to an upload another replica is still receiving)."""
        cutoff = time.time() - grace_s
        removed = 0
        for path in self.tmp_dir.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # another replica removed it first
                continue
        return removed

    def create_job(
        self,
        lab: str,
        job_id: str,
        *,
        video_tmp: Path,
        video_ext: str,
        protocol_text: str,
        annotations_tmp: Path | None,
        annotations_ext: str | None,
        record: dict[str, Any],
        protocol_original: str | None = None,
    ) -> JobFiles:
        """Move uploaded temp files into the job folder and commit ``job.json`` last."""
        if not VIDEO_EXT_RE.fullmatch(video_ext):
            raise ArchiveError(f"invalid video extension {video_ext!r}: expected e.g. '.mp4'")
        jf = self.job(lab, job_id)
        make_dirs_durable(jf.dir)
        video_name = "video" + video_ext
        move_durable(video_tmp, jf.dir / video_name)
        write_atomic(jf.protocol_path, protocol_text)
        if protocol_original is not None:
            write_atomic(jf.protocol_original_path, protocol_original)
        ann_name = None
        if annotations_tmp is not None:
            ann_name = "annotations" + (annotations_ext or ".csv")
            move_durable(annotations_tmp, jf.dir / ann_name)
        full = dict(record, lab=lab, job_id=job_id, video=video_name, annotations=ann_name)
        full.setdefault("created_at", time.time())
        write_json_atomic(jf.record_path, full)
        return jf

    def labs(self) -> list[str]:
        """Lab folders present in the archive."""
        base = self.root / "labs"
        return sorted(p.name for p in base.iterdir() if p.is_dir() and LAB_RE.fullmatch(p.name))

    def iter_jobs(self, lab: str | None = None) -> Iterator[JobFiles]:
        """Every committed job (of one lab, or of all labs)."""
        for name in [check_lab(lab)] if lab else self.labs():
            jobs_dir = self.root / "labs" / name / "jobs"
            if not jobs_dir.is_dir():
                continue
            for p in sorted(jobs_dir.iterdir()):
                if JOB_ID_RE.fullmatch(p.name) and (p / "job.json").is_file():
                    yield JobFiles(name, p.name, p)

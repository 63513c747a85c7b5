"""Recordings of one protocol, as a group: the protocol's identity, the group's members in the
archive, and what each member teaches (its latest correction, else its uploaded annotations).

Identity: a lab's ``protocol_id`` job option when it set one (labs set it when they reword a
protocol, e.g. to the ``protocol_key`` an earlier result reported), else ``steps:`` + a hash of
the normalised step texts. Groups never cross labs: members are looked up in one lab's folder.
Steps are matched across versions of a protocol by text (``biovl_core.io.match_rows``, the
matcher annotation rows use: exact text first, a capped fuzzy pass), so a reworded protocol's
annotations still label the right steps.

Uploaded annotations are matched to the protocol's steps once, at upload (``services.api.upload``),
and the spans are kept in the job record (``annotation_spans``); ``uploaded_spans`` serves them,
so no request, group member or job matches rows again. A job archived before that gets its spans
computed once and kept beside its record (``annotation_spans.json``).

Corrections saved from the viewer are versions in the job folder, ``corrections/vNNNN.json``
(spans, the lab that saved them, when); the newest one is the recording's annotation from then on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biovl_core.align import GroupContext, GroupMember
from biovl_core.io import annotations_to_spans, match_rows, normalise_step, read_annotations
from biovl_core.protocol import parse_protocol
from services.archive import Archive, JobFiles, write_atomic, write_json_atomic

log = logging.getLogger("biovl.groups")

PROTOCOL_ID_OPTION = "protocol_id"
PROTOCOL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
CORRECTIONS_DIR = "corrections"
CORRECTION_RE = re.compile(r"v(\d{4,})\.json")
# The most other recordings one alignment looks at: the annotated ones first, then the newest.
GROUP_MAX_RECORDINGS = 24

Span = tuple[float, float] | None


class CorrectionError(ValueError):
    """A correction body that cannot be stored; the message says what to send instead."""


# ---- identity -------------------------------------------------------------------------------
def check_protocol_id(value: Any) -> str:
    """The ``protocol_id`` option if valid, else ValueError saying what a valid one looks like."""
    if not isinstance(value, str) or not PROTOCOL_ID_RE.fullmatch(value):
        raise ValueError(
            f"options.protocol_id {value!r} is not valid: use 1-128 of A-Z a-z 0-9 _ . : - "
            "starting with a letter or digit (e.g. the protocol_key of an earlier result)"
        )
    return value


def protocol_key(steps: Sequence[str], options: dict[str, Any] | None = None) -> str:
    """The protocol's identity: the lab's ``protocol_id``, else a hash of its normalised steps."""
    given = (options or {}).get(PROTOCOL_ID_OPTION)
    if given:
        return str(given)
    text = "\n".join(normalise_step(s) for s in steps)
    return "steps:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def map_spans(spans: Sequence[Span], source: Sequence[str], target: Sequence[str]) -> list[Span]:
    """Spans over ``source`` steps as spans over ``target`` steps (same texts: as they are).

    Raises ValueError when a target step matches no source step by text: its span is unknown,
    and a missing span would read as "not performed".
    """
    if list(source) == list(target):
        return list(spans)
    matched = match_rows(target, source)  # MatchTooLarge (a ValueError) past its cap
    if len(matched) < len(target):
        missing = [t for i, t in enumerate(target) if i not in matched]
        raise ValueError(f"steps {missing[:3]} match no step of the annotated version")
    return [spans[matched[i]] for i in range(len(target))]


# ---- corrections ----------------------------------------------------------------------------
def corrections_dir(jf: JobFiles) -> Path:
    """``<job>/corrections/``."""
    return jf.dir / CORRECTIONS_DIR


def correction_versions(jf: JobFiles) -> list[int]:
    """Saved correction versions, ascending."""
    folder = corrections_dir(jf)
    if not folder.is_dir():
        return []
    found = (CORRECTION_RE.fullmatch(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def latest_correction(jf: JobFiles) -> dict[str, Any] | None:
    """The newest correction (version, spans, steps, lab, saved_at), or None."""
    versions = correction_versions(jf)
    if not versions:
        return None
    path = corrections_dir(jf) / f"v{versions[-1]:04d}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def check_correction(body: Any, steps: Sequence[str], duration_s: float) -> list[Span]:
    """The body of a correction as K spans (None = not performed), or CorrectionError."""
    k = len(steps)
    if not isinstance(body, list) or len(body) != k:
        got = f"{len(body)} entries" if isinstance(body, list) else type(body).__name__
        raise CorrectionError(
            f"send a JSON list of {k} entries, one per step: [start_s, end_s] or null "
            f"(not performed); got {got}"
        )
    limit = duration_s + 1e-3 if duration_s > 0 else float("inf")
    spans: list[Span] = []
    for i, entry in enumerate(body):
        if entry is None:
            spans.append(None)
            continue
        ok = isinstance(entry, list) and len(entry) == 2
        ok = ok and all(isinstance(x, int | float) and not isinstance(x, bool) for x in entry)
        if not ok or not (0.0 <= entry[0] < entry[1] <= limit):
            raise CorrectionError(
                f"step {i + 1} ({steps[i]!r}): {entry!r} is not a span; give [start_s, end_s] "
                f"with 0 <= start_s < end_s <= {duration_s:g} (the video's length), or null"
            )
        spans.append((float(entry[0]), float(min(entry[1], duration_s or entry[1]))))
    return spans


def save_correction(jf: JobFiles, spans: Sequence[Span], steps: Sequence[str], lab: str) -> dict:
    """Store ``spans`` as the job's next correction version (who and when); returns the entry.

    The version file is linked into place, so two saves at once get two versions, never one
    overwriting the other, and a reader never sees half a file.
    """
    folder = corrections_dir(jf)
    folder.mkdir(parents=True, exist_ok=True)
    versions = correction_versions(jf)
    v = versions[-1] + 1 if versions else 1
    entry: dict[str, Any] = {
        "spans": [None if s is None else [s[0], s[1]] for s in spans],
        "steps": list(steps),
        "lab": lab,
        "saved_at": time.time(),
    }
    tmp = folder / f".new-{os.getpid()}-{time.monotonic_ns()}.json"
    while True:
        entry["version"] = v
        write_atomic(tmp, json.dumps(entry, indent=2, sort_keys=True) + "\n")
        try:
            os.link(tmp, folder / f"v{v:04d}.json")
            return entry
        except FileExistsError:
            v += 1
        finally:
            tmp.unlink(missing_ok=True)


# ---- uploaded annotations, matched once -------------------------------------------------
SPANS_FILE = "annotation_spans.json"


def spans_to_json(spans: Sequence[Span]) -> list[list[float] | None]:
    """Spans as JSON lists (None stays null)."""
    return [None if s is None else [float(s[0]), float(s[1])] for s in spans]


def uploaded_spans(
    jf: JobFiles, steps: Sequence[str], record: dict[str, Any] | None = None
) -> list[Span] | None:
    """The uploaded annotations as one span per step (None: the job has no annotations).

    Read from the record (matched at upload) or, for a job archived before that, matched once
    and kept in ``annotation_spans.json``. ValueError when the file does not fit the steps."""
    record = jf.record() if record is None else record
    stored = record.get("annotation_spans")
    sidecar = jf.dir / SPANS_FILE
    if stored is None and sidecar.is_file():
        stored = json.loads(sidecar.read_text(encoding="utf-8"))
    if stored is None:
        path = jf.annotations_path()
        if path is None or not path.is_file():
            return None
        stored = spans_to_json(annotations_to_spans(read_annotations(path), steps))
        write_json_atomic(sidecar, stored)
    if len(stored) != len(steps):
        raise ValueError(f"{len(stored)} annotated spans for {len(steps)} steps")
    return [None if s is None else (float(s[0]), float(s[1])) for s in stored]


# ---- members --------------------------------------------------------------------------------
@dataclass
class Recording:
    """One archived recording as its group sees it."""

    jf: JobFiles
    record: dict[str, Any]
    steps: list[str]
    key: str

    @classmethod
    def of(cls, jf: JobFiles) -> Recording:
        """Read a job's record and protocol."""
        record = jf.record()
        name = record.get("protocol_filename") or "protocol.txt"
        steps = list(parse_protocol(jf.protocol_path.read_text(encoding="utf-8"), name).steps)
        return cls(jf, record, steps, protocol_key(steps, record.get("options")))

    def annotation(self) -> tuple[list[Span] | None, bool]:
        """(spans over its own steps, corrected?): the latest correction, else the uploaded
        annotations, else (None, False). Unusable annotations teach nothing (logged)."""
        corrected = latest_correction(self.jf)
        if corrected is not None:
            return [None if s is None else (s[0], s[1]) for s in corrected["spans"]], True
        try:
            return uploaded_spans(self.jf, self.steps, self.record), False
        except (ValueError, OSError) as exc:
            log.info(
                "%s/%s: annotations not used by its group (%s)", self.jf.lab, self.jf.job_id, exc
            )
            return None, False


def lab_recordings(archive: Archive, lab: str) -> Iterator[Recording]:
    """Every readable recording of one lab (an unreadable one is skipped, logged)."""
    for jf in archive.iter_jobs(lab):
        try:
            yield Recording.of(jf)
        except (OSError, ValueError, KeyError) as exc:
            log.info("%s/%s: left out of its group (%s)", jf.lab, jf.job_id, exc)


def as_member(rec: Recording, steps: Sequence[str]) -> GroupMember | None:
    """``rec`` as a group member for a recording with ``steps``; None without a video hash."""
    sha = rec.record.get("video_sha256")
    if not sha:
        return None
    spans, corrected = rec.annotation()
    if spans is not None:
        try:
            spans = map_spans(spans, rec.steps, steps)
        except ValueError as exc:
            log.info("%s/%s: annotation not mapped (%s)", rec.jf.lab, rec.jf.job_id, exc)
            spans, corrected = None, False
    return GroupMember(rec.jf.job_id, str(sha), None if spans is None else tuple(spans), corrected)


def group_context(
    archive: Archive, jf: JobFiles, limit: int = GROUP_MAX_RECORDINGS
) -> GroupContext:
    """The group of job ``jf``: the other recordings of its lab with the same protocol key."""
    me = Recording.of(jf)
    members: list[tuple[float, GroupMember]] = []
    for rec in lab_recordings(archive, jf.lab):
        if rec.jf.job_id == jf.job_id or rec.key != me.key:
            continue
        member = as_member(rec, me.steps)
        if member is not None:
            members.append((float(rec.record.get("created_at") or 0.0), member))
    members.sort(key=lambda cm: (cm[1].annotation is not None, cm[0]), reverse=True)
    return GroupContext(me.key, tuple(m for _, m in members[:limit]))


def protocol_groups(archive: Archive) -> dict[tuple[str, str], list[Recording]]:
    """Every (lab, protocol key) with its recordings, for the nightly co-alignment."""
    groups: dict[tuple[str, str], list[Recording]] = {}
    for lab in archive.labs():
        for rec in lab_recordings(archive, lab):
            groups.setdefault((lab, rec.key), []).append(rec)
    return groups

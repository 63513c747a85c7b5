"""Annotations in: a lab's step spans from CSV, JSON or ELAN, mapped onto the protocol's steps.

Annotations (SPEC.md "Data formats"): CSV with header ``step,start,end`` (seconds; extra
columns ignored), JSON ``[{"step": ..., "start": ..., "end": ...}]``, or an ELAN ``.eaf``
file with one tier of step spans (``elan``). Times may also be
written ``mm:ss`` or ``hh:mm:ss.mmm``. A row whose start and end are both empty (as
``to_csv`` writes for a step that was not found) is a step without a span and is skipped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biovl_core.errors import AnnotationError
from biovl_core.io.elan import read_eaf_rows
from biovl_core.io.step_match import MatchTooLarge, match_rows
from biovl_core.result import Span


@dataclass(frozen=True)
class Annotation:
    """One annotated step: its text and where it happens in the video (seconds)."""

    step: str
    start: float
    end: float

    @property
    def span(self) -> tuple[float, float]:
        """``(start, end)``."""
        return (self.start, self.end)


def read_annotations(path: str | Path, fmt: str | None = None) -> list[Annotation]:
    """Read an annotations file (CSV or JSON, chosen by ``fmt``, the extension or the content)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotations file not found; check the path.") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read the annotations file ({exc}).") from exc
    return parse_annotations(data, filename=str(path), fmt=fmt)


def parse_annotations(
    text: str | bytes, filename: str | None = None, fmt: str | None = None
) -> list[Annotation]:
    """Parse annotations text; ``fmt`` is "csv", "json", "eaf" or None (guess)."""
    where = filename or "annotations"
    if isinstance(text, bytes | bytearray):
        if b"\x00" in text:
            raise AnnotationError(
                f"{where}: contains NUL bytes, so it is not a text file; "
                "write a CSV with header step,start,end or a JSON list."
            )
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError:
            text = bytes(text).decode("cp1252", errors="replace")
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise AnnotationError(
            f"{where}: the annotations file is empty; write a CSV with "
            "header step,start,end (seconds), one row per step."
        )
    if fmt is None:
        suffix = Path(filename).suffix.lower() if filename else ""
        if suffix in (".csv", ".tsv", ".txt"):
            fmt = "csv"
        elif suffix == ".eaf" or text.lstrip()[:1] == "<":
            fmt = "eaf"
        elif suffix == ".json" or text.lstrip()[:1] in "[{":
            fmt = "json"
        else:
            fmt = "csv"
    fmt = fmt.lower()
    if fmt == "csv":
        rows = _read_csv_rows(text, where)
    elif fmt == "json":
        rows = _read_json_rows(text, where)
    elif fmt == "eaf":
        rows = read_eaf_rows(text, where)
    else:
        raise AnnotationError(
            f"{where}: unknown annotations format {fmt!r}; use 'csv', 'json' or 'eaf'."
        )
    annotations = []
    for label, step, start, end in rows:
        ann = _make_annotation(where, label, step, start, end)
        if ann is not None:
            annotations.append(ann)
    if not annotations:
        raise AnnotationError(
            f"{where}: no annotated step (every row lacks start and end); "
            "give each step's start and end second."
        )
    return annotations


MAX_ROWS_PER_STEP = 4
"""An annotations file may have up to this many rows per protocol step (plus MAX_EXTRA_ROWS)."""
MAX_EXTRA_ROWS = 16


def annotations_to_spans(annotations: Sequence[Annotation], steps: Sequence[str]) -> list[Span]:
    """One ground-truth span per protocol step (None where a step has no annotation).

    With as many rows as steps, rows pair with steps in order. Otherwise rows are matched
    to steps by text (in order; exact normalised text first, then a capped fuzzy pass:
    ``step_match.match_rows``); a row that matches no step is an error, and so is a file with
    far more rows than the protocol has steps.
    """
    if len(annotations) == len(steps):
        return [a.span for a in annotations]
    most = MAX_ROWS_PER_STEP * len(steps) + MAX_EXTRA_ROWS
    if len(annotations) > most:
        raise AnnotationError(
            f"{len(annotations)} annotation rows for {len(steps)} protocol steps (at most "
            f"{most} are read); give one row per step, step,start,end."
        )
    try:
        matched = match_rows([a.step for a in annotations], steps)
    except MatchTooLarge as exc:
        raise AnnotationError(
            f"{len(annotations)} annotation rows for {len(steps)} protocol steps: {exc}; use "
            "the protocol's step texts in the annotations or give exactly one row per step."
        ) from None
    unmatched = [i for i in range(len(annotations)) if i not in matched]
    if unmatched:
        rows = ", ".join(f"{i + 1} ({annotations[i].step!r})" for i in unmatched[:5])
        raise AnnotationError(
            f"{len(annotations)} annotation rows for {len(steps)} protocol steps, and row(s) "
            f"{rows} match no step by text; use the protocol's step texts in the annotations "
            "or give exactly one row per step."
        )
    spans: list[Span] = [None] * len(steps)
    for row, step in matched.items():
        spans[step] = annotations[row].span
    return spans


def _read_csv_rows(text: str, where: str) -> list[tuple[str, str, Any, Any]]:
    """CSV -> (row label, step, start, end) with header-checked columns."""
    sample = text[:4096]
    delimiter = "\t" if sample.count("\t") > sample.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=None), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[tuple[str, str, Any, Any]] = []
    for record in _csv_records(reader, where):
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [_column_name(c) for c in record]
            missing = [c for c in ("step", "start", "end") if c not in header]
            if missing:
                raise AnnotationError(
                    f"{where}: header {record} lacks column(s) {missing}; the first line must "
                    "be 'step,start,end' (times in seconds)."
                )
            cols = [header.index(c) for c in ("step", "start", "end")]
            continue
        label = f"line {reader.line_num}"
        if len(record) < len(header):
            record = record + [""] * (len(header) - len(record))
        rows.append((label, record[cols[0]], record[cols[1]], record[cols[2]]))
    return rows


def _csv_records(reader: Any, where: str) -> Any:
    """The reader's records, with a malformed line reported as an AnnotationError."""
    try:
        yield from reader
    except csv.Error as exc:
        raise AnnotationError(
            f"{where}: line {reader.line_num} is not valid CSV ({exc}); "
            "write one 'step,start,end' row per line, quoting step texts that hold commas."
        ) from exc


def _read_json_rows(text: str, where: str) -> list[tuple[str, str, Any, Any]]:
    """JSON list of {step, start, end} (or {"annotations": [...]}) -> rows."""
    shape = 'expected [{"step": "...", "start": 30, "end": 45}, ...]'
    try:
        data = json.loads(text)
    except RecursionError:
        raise AnnotationError(f"{where}: the JSON is nested too deeply to read; {shape}.") from None
    except ValueError as exc:
        raise AnnotationError(f"{where}: invalid JSON ({exc}); {shape}.") from exc
    if isinstance(data, dict):
        for key in ("annotations", "steps"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            raise AnnotationError(f'{where}: JSON object has no "annotations" list; {shape}.')
    if not isinstance(data, list):
        raise AnnotationError(f"{where}: JSON must be a list, not {type(data).__name__}; {shape}.")
    rows = []
    for i, item in enumerate(data, start=1):
        label = f"item {i}"
        if not isinstance(item, dict):
            raise AnnotationError(
                f"{where}: {label} is {type(item).__name__}, not an object; {shape}."
            )
        text_key = "step" if "step" in item else "text"
        missing = [k for k in (text_key, "start", "end") if k not in item]
        if missing:
            raise AnnotationError(f"{where}: {label} lacks key(s) {missing}; {shape}.")
        rows.append((label, item[text_key], item["start"], item["end"]))
    return rows


def _make_annotation(where: str, label: str, step: Any, start: Any, end: Any) -> Annotation | None:
    """Validate one row; None for a step without a span (start and end both empty)."""
    step = "" if step is None else str(step).strip()
    if _blank(start) and _blank(end):
        return None
    s = _parse_time(start, where, label, "start")
    e = _parse_time(end, where, label, "end")
    if s < 0 or e < 0:
        raise AnnotationError(
            f"{where}, {label}: negative time (start={s}, end={e}); "
            "times are seconds from the start of the video."
        )
    if s > e:
        raise AnnotationError(
            f"{where}, {label}: start {s} is after end {e}; swap them or fix the row."
        )
    return Annotation(step=step, start=s, end=e)


def _blank(value: Any) -> bool:
    """True for None or an empty cell."""
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_time(value: Any, where: str, label: str, column: str) -> float:
    """Seconds from a number, "12.5", "mm:ss" or "hh:mm:ss.mmm"."""
    if isinstance(value, bool) or _blank(value):
        raise AnnotationError(
            f"{where}, {label}: {column} is empty but the other time is set; "
            "give both start and end (seconds), or neither."
        )
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            parts = str(value).strip().split(":")
            if len(parts) > 3:
                raise ValueError(value)
            seconds = 0.0
            for part in parts:
                seconds = seconds * 60.0 + float(part)
    except ValueError:
        raise AnnotationError(
            f"{where}, {label}: {column} {value!r} is not a number; "
            "write seconds (e.g. 64 or 64.5) or mm:ss."
        ) from None
    if not math.isfinite(seconds):
        raise AnnotationError(f"{where}, {label}: {column} {value!r} is not a finite number.")
    return seconds


def _column_name(cell: str) -> str:
    """Normalise a header cell: "Start (s)" / "start_s" -> "start"."""
    name = re.sub(r"\(.*?\)", "", cell.strip().lstrip("\ufeff")).strip().lower()
    name = re.sub(r"[\s_]+(?:sec|seconds|s)$", "", name)
    return {"steps": "step", "text": "step", "step_text": "step"}.get(name, name)

"""Files in and out: annotations (CSV / JSON / ELAN) in and out; alignments as JSON, CSV,
WebVTT and ELAN out.

Annotations (SPEC.md "Data formats"): CSV with header ``step,start,end`` (seconds; extra
columns ignored), JSON ``[{"step": ..., "start": ..., "end": ...}]``, or an ELAN ``.eaf``
file with one tier of step spans (``biovl_core.elan``). Times may also be
written ``mm:ss`` or ``hh:mm:ss.mmm``. A row whose start and end are both empty (as
``to_csv`` writes for a step that was not found) is a step without a span and is skipped.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biovl_core.errors import AnnotationError
from biovl_core.io.elan import read_eaf_rows, write_eaf
from biovl_core.result import AlignmentResult, Span

SCHEMA = "biovl.alignment"
SCHEMA_VERSION = 1
_MATCH_THRESHOLD = 0.6


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


def annotations_to_spans(annotations: Sequence[Annotation], steps: Sequence[str]) -> list[Span]:
    """One ground-truth span per protocol step (None where a step has no annotation).

    With as many rows as steps, rows pair with steps in order. Otherwise rows are matched
    to steps by text (in order, fuzzy); a row that matches no step is an error.
    """
    if len(annotations) == len(steps):
        return [a.span for a in annotations]
    sims = np.array(
        [[_text_similarity(a.step, s) for s in steps] for a in annotations], dtype=np.float64
    )
    matched = _monotonic_match(sims, _MATCH_THRESHOLD)
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


def alignment_to_dict(result: AlignmentResult, include_similarity: bool = False) -> dict[str, Any]:
    """JSON-able form of an alignment (``include_similarity`` adds the K x N matrix for heatmaps)."""
    steps = []
    for i, (text, span, score) in enumerate(
        zip(result.steps, result.spans, result.step_scores, strict=True)
    ):
        step: dict[str, Any] = {
            "index": i,
            "number": i + 1,
            "text": text,
            "start": _num(span[0]) if span else None,
            "end": _num(span[1]) if span else None,
            "score": _num(score),
        }
        if result.step_line(i) is not None:
            step["line"] = result.step_line(i)  # where the step is in the protocol file
        if result.step_notes(i):
            step["notes"] = result.step_notes(i)  # the protocol's notes on this step
        if result.confidence is not None:
            step["confidence"] = _num(result.confidence[i])
        steps.append(step)
    d: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "title": result.title,
        "steps": steps,
        "segment_seconds": float(result.segment_seconds),
        "duration_s": float(result.duration_s),
        "num_segments": int(result.similarity.shape[1]),
        "method": result.method,
        "score": _num(result.score),
        "model_id": result.model_id,
        "weights": result.weights,
        "aligner_version": result.aligner_version,
        "video_sha256": result.video_sha256,
        "config": result.config,
        "timings": {k: float(v) for k, v in result.timings.items()},
        "labels": [int(x) for x in np.asarray(result.labels).tolist()],
    }
    if result.baseline_spans is not None:
        d["baseline_spans"] = [
            [_num(s[0]), _num(s[1])] if s else None for s in result.baseline_spans
        ]
    if result.group is not None:
        d["group"] = dict(result.group)
    if include_similarity:
        sim = np.round(np.asarray(result.similarity, dtype=np.float64), 4)
        d["similarity"] = [[_num(x) for x in row] for row in sim.tolist()]
    return d


def alignment_from_dict(d: dict[str, Any]) -> AlignmentResult:
    """Rebuild an ``AlignmentResult`` from ``alignment_to_dict`` output.

    Without a stored similarity matrix the result's similarity is NaN (unknown), shape [K, N].
    """
    if d.get("schema", SCHEMA) != SCHEMA or int(d.get("schema_version", 0)) > SCHEMA_VERSION:
        raise ValueError(
            f"alignment schema {d.get('schema')!r} v{d.get('schema_version')} is not readable by "
            f"this version ({SCHEMA} v{SCHEMA_VERSION}); upgrade biovl-aligner."
        )
    steps = sorted(d["steps"], key=lambda s: s["index"])
    labels = np.asarray(d.get("labels", []), dtype=np.int64)
    if d.get("similarity") is not None:
        similarity = np.array(
            [[np.nan if x is None else x for x in row] for row in d["similarity"]],
            dtype=np.float32,
        ).reshape(len(steps), -1)
    else:
        n = int(d.get("num_segments", len(labels)))
        similarity = np.full((len(steps), n), np.nan, dtype=np.float32)
    baseline = d.get("baseline_spans")
    return AlignmentResult(
        steps=[s["text"] for s in steps],
        spans=[
            (float(s["start"]), float(s["end"])) if s.get("start") is not None else None
            for s in steps
        ],
        step_scores=[None if s.get("score") is None else float(s["score"]) for s in steps],
        labels=labels,
        similarity=similarity,
        segment_seconds=float(d["segment_seconds"]),
        duration_s=float(d["duration_s"]),
        method=d["method"],
        score=float("nan") if d.get("score") is None else float(d["score"]),
        model_id=d.get("model_id", ""),
        weights=d.get("weights", ""),
        video_sha256=d.get("video_sha256", ""),
        title=d.get("title", ""),
        aligner_version=d.get("aligner_version", ""),
        config=dict(d.get("config", {})),
        timings={k: float(v) for k, v in d.get("timings", {}).items()},
        baseline_spans=None
        if baseline is None
        else [(float(s[0]), float(s[1])) if s else None for s in baseline],
        notes=[list(s.get("notes") or []) for s in steps],
        step_lines=[s.get("line") for s in steps],
    )


def to_json(
    result: AlignmentResult, include_similarity: bool = False, indent: int | None = 2
) -> str:
    """The alignment as a JSON document (strict JSON: non-finite numbers become null)."""
    return json.dumps(
        alignment_to_dict(result, include_similarity=include_similarity),
        indent=indent,
        ensure_ascii=False,
        allow_nan=False,
    )


def to_csv(result: AlignmentResult) -> str:
    """CSV ``step,start,end,score``, readable back by ``read_annotations``; no span -> empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", "start", "end", "score"])
    for text, span, score in zip(result.steps, result.spans, result.step_scores, strict=True):
        writer.writerow(
            [
                text,
                f"{span[0]:.3f}" if span else "",
                f"{span[1]:.3f}" if span else "",
                "" if score is None or not math.isfinite(score) else f"{score:.4f}",
            ]
        )
    return out.getvalue()


def annotations_to_eaf(annotations: Sequence[Annotation], media_url: str = "") -> str:
    """Annotations as an ELAN .eaf document (one "steps" tier), readable back losslessly."""
    return write_eaf([(a.step, a.start, a.end) for a in annotations], media_url)


def to_eaf(result: AlignmentResult, media_url: str = "") -> str:
    """The predicted spans as an ELAN .eaf document, to check or correct them in ELAN."""
    rows = [(text, s[0], s[1]) for text, s in zip(result.steps, result.spans, strict=True) if s]
    return write_eaf(rows, media_url)


def to_webvtt(result: AlignmentResult) -> str:
    """WebVTT subtitles: one cue per step with a span ("step-i", "Step i: text")."""
    lines = ["WEBVTT", ""]
    note = " | ".join(
        x
        for x in (
            result.title,
            f"method {result.method}" if result.method else "",
            f"model {result.model_id}" if result.model_id else "",
            f"weights {result.weights}" if result.weights else "",
        )
        if x
    )
    if note:
        lines += ["NOTE " + _vtt_text(note).replace("--", "- -"), ""]
    cues = [(span[0], span[1], i) for i, span in enumerate(result.spans) if span is not None]
    for start, end, i in sorted(cues):
        end = max(end, start + 0.001)
        lines += [
            f"step-{i + 1}",
            f"{_vtt_time(start)} --> {_vtt_time(end)}",
            f"Step {i + 1}: {_vtt_text(result.steps[i])}",
            "",
        ]
    return "\n".join(lines)


def _vtt_time(seconds: float) -> str:
    """Seconds -> ``HH:MM:SS.mmm``."""
    ms = max(0, round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def _vtt_text(text: str) -> str:
    """Escape cue text: '&', '<', '>' as entities (which also breaks any '-->'), one line."""
    text = re.sub(r"\s+", " ", text).strip()
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _num(x: float | None) -> float | None:
    """A JSON-safe float: None for None and non-finite values."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


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


def _normalise(text: str) -> str:
    """Lower-case, alphanumerics only, for text matching."""
    return " ".join(re.findall(r"[a-z0-9µ]+", text.lower()))


def _text_similarity(a: str, b: str) -> float:
    """Fuzzy similarity of two step texts in [0, 1]."""
    na, nb = _normalise(a), _normalise(b)
    if not na or not nb:
        return 0.0
    return difflib.SequenceMatcher(None, na, nb).ratio()


def _monotonic_match(sims: np.ndarray, threshold: float) -> dict[int, int]:
    """Order-preserving one-to-one matching of rows to columns maximising summed similarity."""
    r, c = sims.shape
    best = np.zeros((r + 1, c + 1))
    for i in range(1, r + 1):
        for j in range(1, c + 1):
            take = (
                best[i - 1, j - 1] + sims[i - 1, j - 1] if sims[i - 1, j - 1] >= threshold else -1
            )
            best[i, j] = max(best[i - 1, j], best[i, j - 1], take)
    matched: dict[int, int] = {}
    i, j = r, c
    while i > 0 and j > 0:
        if (
            sims[i - 1, j - 1] >= threshold
            and best[i, j] == best[i - 1, j - 1] + sims[i - 1, j - 1]
        ):
            matched[i - 1] = j - 1
            i, j = i - 1, j - 1
        elif best[i, j] == best[i - 1, j]:
            i -= 1
        else:
            j -= 1
    return matched

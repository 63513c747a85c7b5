"""Alignments out: the result JSON (and back), CSV, WebVTT cues and ELAN files."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from biovl_core.io.annotations import Annotation
from biovl_core.io.elan import write_eaf
from biovl_core.result import AlignmentResult

SCHEMA = "biovl.alignment"


SCHEMA_VERSION = 1


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
        if result.lab_steps is not None:
            step["lab"] = dict(result.lab_steps[i])  # the lab's usual range for this step
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
    if result.deviations is not None:  # what this recording did differently from the lab
        d["deviations"] = [dict(e) for e in result.deviations]
    if result.frame_times is not None:  # per segment: the time (s) of every embedded frame
        d["frame_times"] = [[_num(t) for t in row] for row in result.frame_times]
    if result.decode:
        d["decode"] = {k: float(v) for k, v in result.decode.items()}
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
        frame_times=None
        if d.get("frame_times") is None
        else [[float(t) for t in row] for row in d["frame_times"]],
        decode={k: float(v) for k, v in d.get("decode", {}).items()},
        deviations=None if d.get("deviations") is None else [dict(e) for e in d["deviations"]],
        lab_steps=[dict(s["lab"]) for s in steps] if all("lab" in s for s in steps) else None,
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


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""Cell openings a spreadsheet reads as a formula (CSV injection, OWASP)."""


def csv_safe(cell: str) -> str:
    """``cell`` as a spreadsheet shows it as text: a leading ``'`` before a formula opening
    (numbers such as ``-0.25`` stay numbers)."""
    if not cell.startswith(FORMULA_PREFIXES):
        return cell
    try:
        float(cell)
    except ValueError:
        return "'" + cell
    return cell


def to_csv(result: AlignmentResult) -> str:
    """CSV ``step,start,end,score``, readable back by ``read_annotations``; no span -> empty.
    Step texts that open like a formula (``=``, ``+``, ``-``, ``@``) get a leading ``'``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", "start", "end", "score"])
    for text, span, score in zip(result.steps, result.spans, result.step_scores, strict=True):
        writer.writerow(
            [
                csv_safe(text),
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

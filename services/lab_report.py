"""What a lab's history of each protocol shows: which steps vary most across its recordings.

``lab_protocols(archive, lab)`` groups the lab's recordings by protocol key (``services.groups``)
and, per protocol, reads each recording's spans: its latest correction or uploaded annotation
(weighted ``ANNOTATED_WEIGHT``, ground truth), else its newest alignment (weight 1). Steps are
mapped onto the newest recording's steps by text. Per step ``biovl_core.align.step_variability``
says how often recordings skipped it, did it out of order or took more than twice (or less than
half) its usual time, with the lab's usual range; steps come sorted by that share, most
varying first: the reproducibility signal across a lab's repeats of a protocol.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from biovl_core.align import HistoryRecord, step_variability
from biovl_core.align.priors import ANNOTATED_WEIGHT
from services.archive import Archive
from services.groups import Recording, Span, lab_recordings, map_spans

log = logging.getLogger("biovl.lab_report")


def _spans(rec: Recording) -> tuple[list[Span] | None, bool]:
    """(spans over its own steps, ground truth?): annotation first, else its newest alignment."""
    spans, _ = rec.annotation()
    if spans is not None:
        return spans, True
    versions = rec.jf.versions()
    if not versions:
        return None, False
    data = json.loads(rec.jf.alignment_path(versions[-1], "json").read_text(encoding="utf-8"))
    steps = sorted(data["steps"], key=lambda s: s["index"])
    return [None if s.get("start") is None else (s["start"], s["end"]) for s in steps], False


def protocol_summary(recordings: list[Recording]) -> dict[str, Any]:
    """One protocol's recordings summarised: counts and per-step variability, most varying first."""
    newest = max(recordings, key=lambda r: float(r.record.get("created_at") or 0.0))
    steps = newest.steps
    history: list[HistoryRecord] = []
    annotated = 0
    for rec in recordings:
        try:
            spans, truth = _spans(rec)
            if spans is None:
                continue
            mapped = map_spans(spans, rec.steps, steps)
        except (OSError, ValueError, KeyError) as exc:
            log.info("%s/%s: left out of the lab report (%s)", rec.jf.lab, rec.jf.job_id, exc)
            continue
        history.append(HistoryRecord(mapped, ANNOTATED_WEIGHT if truth else 1.0))
        annotated += truth
    rows = step_variability(history, len(steps)) if history else []
    for row in rows:
        row["text"] = steps[row["step"]]
    rows.sort(key=lambda r: (-r["deviation_share"], r["step"]))
    return {
        "protocol_key": newest.key,
        "title": newest.record.get("title") or "",
        "recordings": len(recordings),
        "aligned": len(history),
        "annotated": annotated,
        "steps": rows,
    }


def lab_protocols(archive: Archive, lab: str) -> dict[str, Any]:
    """Every protocol of ``lab`` with its steps' variability, the most recorded first."""
    groups: dict[str, list[Recording]] = {}
    for rec in lab_recordings(archive, lab):
        groups.setdefault(rec.key, []).append(rec)
    protocols = [protocol_summary(recs) for recs in groups.values()]
    protocols.sort(key=lambda p: (-p["recordings"], p["protocol_key"]))
    return {"lab": lab, "protocols": protocols}

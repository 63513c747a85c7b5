"""ELAN ``.eaf`` files, the usual tool for annotating research video: one tier of step spans.

An EAF document keeps times once, in ``TIME_ORDER`` (``TIME_SLOT`` values in milliseconds),
and each ``ALIGNABLE_ANNOTATION`` of a tier points at two slots. We write one tier ("steps")
and read the tier named "steps" / "step" (else the only tier that has annotations). Times
go through whole milliseconds, so spans given to the millisecond survive a round trip.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring

from biovl_core.errors import AnnotationError

STEP_TIER = "steps"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"


def write_eaf(rows: Sequence[tuple[str, float, float]], media_url: str = "") -> str:
    """EAF 3.0 XML with one tier of (step text, start s, end s) spans, times in ms."""
    ET.register_namespace("xsi", _XSI)
    doc = ET.Element(
        "ANNOTATION_DOCUMENT",
        {
            "AUTHOR": "biovl",
            "DATE": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "FORMAT": "3.0",
            "VERSION": "3.0",
            f"{{{_XSI}}}noNamespaceSchemaLocation": "http://www.mpi.nl/tools/elan/EAFv3.0.xsd",
        },
    )
    header = ET.SubElement(doc, "HEADER", {"MEDIA_FILE": "", "TIME_UNITS": "milliseconds"})
    if media_url:
        ET.SubElement(header, "MEDIA_DESCRIPTOR", {"MEDIA_URL": media_url})
    ET.SubElement(header, "PROPERTY", {"NAME": "lastUsedAnnotationId"}).text = str(len(rows))
    order = ET.SubElement(doc, "TIME_ORDER")
    tier = ET.SubElement(doc, "TIER", {"LINGUISTIC_TYPE_REF": "step", "TIER_ID": STEP_TIER})
    for i, (text, start, end) in enumerate(rows, start=1):
        for slot, seconds in ((2 * i - 1, start), (2 * i, end)):
            ET.SubElement(
                order,
                "TIME_SLOT",
                {"TIME_SLOT_ID": f"ts{slot}", "TIME_VALUE": str(round(seconds * 1000))},
            )
        ann = ET.SubElement(ET.SubElement(tier, "ANNOTATION"), "ALIGNABLE_ANNOTATION")
        ann.attrib.update(
            {
                "ANNOTATION_ID": f"a{i}",
                "TIME_SLOT_REF1": f"ts{2 * i - 1}",
                "TIME_SLOT_REF2": f"ts{2 * i}",
            }
        )
        ET.SubElement(ann, "ANNOTATION_VALUE").text = text
    ET.SubElement(
        doc,
        "LINGUISTIC_TYPE",
        {"GRAPHIC_REFERENCES": "false", "LINGUISTIC_TYPE_ID": "step", "TIME_ALIGNABLE": "true"},
    )
    ET.indent(doc)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(doc, encoding="unicode") + "\n"


def read_eaf_rows(text: str, where: str) -> list[tuple[str, str, Any, Any]]:
    """EAF XML -> (row label, step, start s, end s) for each annotation of the step tier.

    Read with defusedxml: a DTD with entities (billion laughs, external entities) is refused,
    as ELAN never writes one."""
    try:
        root = safe_fromstring(text)
    except DefusedXmlException as exc:
        raise AnnotationError(
            f"{where}: the .eaf declares XML entities or a DTD ({type(exc).__name__}), which "
            "ELAN never writes; export the file from ELAN again."
        ) from None
    except ET.ParseError as exc:
        raise AnnotationError(f"{where}: not a well-formed ELAN .eaf file ({exc}).") from exc
    if root.tag != "ANNOTATION_DOCUMENT":
        raise AnnotationError(
            f"{where}: XML root is <{root.tag}>, not <ANNOTATION_DOCUMENT>; export an ELAN .eaf file."
        )
    slots: dict[str, float | None] = {}
    for slot in root.iter("TIME_SLOT"):
        value = slot.get("TIME_VALUE")
        slots[slot.get("TIME_SLOT_ID", "")] = None if value is None else float(value) / 1000.0
    tier = _step_tier(root, where)
    rows = []
    for ann in tier.iter("ALIGNABLE_ANNOTATION"):
        label = f"annotation {ann.get('ANNOTATION_ID', '?')} of tier {tier.get('TIER_ID')!r}"
        refs = (ann.get("TIME_SLOT_REF1", ""), ann.get("TIME_SLOT_REF2", ""))
        times = [slots.get(r) for r in refs]
        if any(t is None for t in times):
            raise AnnotationError(
                f"{where}: {label} has an unaligned time slot {refs}; align it in ELAN "
                "(every step needs a start and an end)."
            )
        value = ann.findtext("ANNOTATION_VALUE") or ""
        rows.append((label, value, times[0], times[1]))
    rows.sort(key=lambda r: (r[2], r[3]))
    return rows


def _step_tier(root: ET.Element, where: str) -> ET.Element:
    """The tier that holds the steps: named steps/step, else the only one with annotations."""
    tiers = list(root.iter("TIER"))
    for tier in tiers:
        if (tier.get("TIER_ID") or "").strip().lower() in ("steps", "step"):
            return tier
    filled = [t for t in tiers if t.find(".//ALIGNABLE_ANNOTATION") is not None]
    if len(filled) == 1:
        return filled[0]
    names = [t.get("TIER_ID") for t in filled]
    raise AnnotationError(
        f"{where}: {len(filled)} tiers with time-aligned annotations ({names}) and none named "
        f"'{STEP_TIER}'; rename the tier of protocol steps to '{STEP_TIER}' in ELAN."
    )

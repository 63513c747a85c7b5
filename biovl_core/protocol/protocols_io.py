"""protocols.io JSON, as its public API returns a protocol (v3 and v4), -> steps with notes.

Shapes read (built from the published API reference, not from live responses):

- v3 ``GET /api/v3/protocols/{id}``: ``{"protocol": {"title", "steps": [...]}, "status_code": 0}``;
  each step has ``components``: ``type_id`` 1 is the step text (``source.description``, HTML),
  ``type_id`` 6 its section (``source.title``); steps chain through ``previous_id``.
- v4 ``GET /api/v4/protocols/{id}`` (and ``/steps``): ``{"payload": {...}}`` or ``{"protocol":
  {...}}``; each step has ``step`` (Draft.js JSON text by default, HTML or Markdown with
  ``content_format``), ``section`` (HTML) and ``guid`` / ``previous_guid``.

A section is a label over steps, never a step. Paragraphs of a step that start like a note
("Note:", "Caution:", ...) become that step's notes.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

_BLOCK_TAGS = frozenset("p div li br h1 h2 h3 h4 h5 h6 tr ul ol blockquote".split())
_QUANTITY_KEYS = ("amount", "concentration", "temperature", "mass", "volume", "centrifuge")


def protocols_io_root(data: Any) -> dict[str, Any] | None:
    """The protocol object of a protocols.io response, or None when ``data`` is not one."""
    if not isinstance(data, dict):
        return None
    for key in ("protocol", "payload"):
        inner = data.get(key)
        if isinstance(inner, dict) and isinstance(inner.get("steps"), list):
            data = inner
            break
    steps = data.get("steps")
    if isinstance(steps, list) and steps and all(isinstance(s, dict) for s in steps):
        if any(k in steps[0] for k in ("components", "step", "guid", "previous_id")):
            return data
    return None


def read_protocols_io(
    root: dict[str, Any], is_note: Callable[[str], bool]
) -> tuple[str, list[tuple[str, list[str]]]]:
    """(title, [(step text, notes), ...]) of a protocols.io protocol object, in step order."""
    title = _plain(root.get("title") or "")
    entries: list[tuple[str, list[str]]] = []
    for step in _ordered(root["steps"]):
        paragraphs = _step_paragraphs(step)
        text = [p for p in paragraphs if not is_note(p)]
        notes = [p for p in paragraphs if is_note(p)]
        if text:
            entries.append((" ".join(text), notes))
        elif entries:
            entries[-1][1].extend(notes)
    return title, entries


def _ordered(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps in the order their ``previous_guid`` / ``previous_id`` chain gives (else as listed)."""
    for key, prev_key in (("guid", "previous_guid"), ("id", "previous_id")):
        if not all(key in s for s in steps):
            continue
        by_prev = {s.get(prev_key) or None: s for s in steps}
        if len(by_prev) != len(steps):
            continue
        order, current = [], by_prev.get(None) or by_prev.get(0)
        seen: set[Any] = set()
        while current is not None and current[key] not in seen:
            order.append(current)
            seen.add(current[key])
            current = by_prev.get(current[key])
        if len(order) == len(steps):
            return order
    return list(steps)


def _step_paragraphs(step: dict[str, Any]) -> list[str]:
    """The paragraphs of one step's text (v3 components or v4 ``step``), tags stripped."""
    if isinstance(step.get("components"), list):
        texts = [
            (c.get("source") or {}).get("description") or ""
            for c in step["components"]
            if isinstance(c, dict) and c.get("type_id") == 1
        ]
        return [p for t in texts for p in _html_paragraphs(t)]
    body = step.get("step")
    if isinstance(body, dict):
        return _draft_paragraphs(body)
    if not isinstance(body, str):
        return []
    stripped = body.strip()
    if stripped.startswith("{"):
        try:
            return _draft_paragraphs(json.loads(stripped))
        except (ValueError, RecursionError):
            pass
    if "<" in stripped:
        return _html_paragraphs(stripped)
    return [line.strip() for line in stripped.splitlines() if line.strip()]


def _draft_paragraphs(doc: dict[str, Any]) -> list[str]:
    """Draft.js ``{"blocks": [...], "entityMap": {...}}`` -> one paragraph per text block.

    An entity over blank text (protocols.io's amounts, durations, temperatures) is written
    out from its data ("10 µL", "5 min"), so no quantity is lost from the step text.
    """
    entity_map = doc.get("entityMap") or {}
    out = []
    for block in doc.get("blocks") or []:
        text = str(block.get("text") or "")
        for rng in sorted(block.get("entityRanges") or [], key=lambda r: -int(r.get("offset", 0))):
            start, length = int(rng.get("offset", 0)), int(rng.get("length", 0))
            if text[start : start + length].strip():
                continue
            entity = entity_map.get(str(rng.get("key"))) or entity_map.get(rng.get("key")) or {}
            rendered = _render_entity(entity)
            if rendered:
                text = f"{text[:start]}{rendered}{text[start + length :]}"
        text = " ".join(text.split())
        if text:
            out.append(text)
    return out


def _render_entity(entity: dict[str, Any]) -> str:
    """Text for a protocols.io inline entity (quantity with unit, duration in seconds, name)."""
    data = entity.get("data") or {}
    kind = str(entity.get("type") or "").lower()
    if kind == "duration" or "duration" in data:
        return _duration_text(data.get("duration"))
    unit = data.get("unit") or data.get("unit_name") or ""
    for key in (*_QUANTITY_KEYS, "value"):
        if data.get(key) not in (None, ""):
            return f"{data[key]} {unit}".strip()
    return str(data.get("name") or data.get("title") or "").strip()


def _duration_text(seconds: Any) -> str:
    """protocols.io stores durations in seconds: 300 -> "5 min", 5400 -> "1 h 30 min"."""
    try:
        total = int(float(seconds))
    except (TypeError, ValueError):
        return ""
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    parts = [f"{h} h" if h else "", f"{m} min" if m else "", f"{s} s" if s else ""]
    return " ".join(p for p in parts if p) or "0 s"


class _TextCollector(HTMLParser):
    """Collect text, starting a new paragraph at each block-level tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[list[str]] = [[]]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.paragraphs.append([])

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCK_TAGS:
            self.paragraphs.append([])

    def handle_data(self, data: str) -> None:
        self.paragraphs[-1].append(data)


def _html_paragraphs(text: str) -> list[str]:
    """HTML -> its paragraphs as plain text."""
    parser = _TextCollector()
    parser.feed(text)
    parser.close()
    return [" ".join("".join(p).split()) for p in parser.paragraphs if "".join(p).strip()]


def _plain(text: str) -> str:
    """A title or section that may hold HTML -> plain text."""
    return " ".join(_html_paragraphs(html.unescape(str(text)))) if "<" in str(text) else text

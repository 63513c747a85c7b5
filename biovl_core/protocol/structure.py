"""The lines of a protocol read together: title, the sections that give steps, and the reader (list or plain lines / prose) for each; every line ends with its class and reason."""

from __future__ import annotations

import re

from biovl_core.protocol.blocks import read_blocks
from biovl_core.protocol.lines import TITLE_LINE, Line, classify_lines, decide
from biovl_core.protocol.lists import read_list
from biovl_core.protocol.model import DraftStep
from biovl_core.protocol.plain import looks_like_title, plain_votes, read_plain
from biovl_core.protocol.prose import is_cjk, wraps
from biovl_core.protocol.rules import MATERIAL_NAMES, section_name

_SENTENCE_END = re.compile(r"[.!?。！？]\s*$")


def parse_text(text: str) -> tuple[str, list[DraftStep], bool, list[Line]]:
    """Plain text / Markdown -> (title, steps, is_prose, every line with its decision)."""
    lines = classify_lines(text)
    read_blocks(lines)
    title = _find_title(lines)
    regions = _procedure_regions([ln for ln in lines if not ln.cls])
    items = sum(1 for region in regions for ln in region if ln.kind == "item")
    votes = sum(plain_votes(region) for region in regions)
    steps: list[DraftStep] = []
    prose = False
    if items and items >= votes:
        for region in regions:
            region_title, region_steps = read_list(region, want_title=not title)
            title = title or region_title
            steps.extend(region_steps)
    else:
        for region in regions:
            region_title, region_steps, region_prose = read_plain(region, want_title=not title)
            title = title or region_title
            steps.extend(region_steps)
            prose = prose or region_prose
    for ln in lines:
        if not ln.cls:
            decide(ln, _LEFT_CLASS.get(ln.kind, "other"), ln.rule or "in-other")
    return title, steps, prose, lines


_LEFT_CLASS = {"blank": "skip", "skip": "skip", "meta": "meta", "heading": "heading"}


def _find_title(lines: list[Line]) -> str:
    """The title: front matter's, a Title: line, the first heading, or a short first line."""
    for ln in lines:
        if ln.rule == "front-matter-title":
            decide(ln, "title", "front-matter-title")
            return ln.text
    body = [i for i, ln in enumerate(lines) if ln.kind not in ("blank", "skip", "meta")]
    if not body:
        return ""
    i = body[0]
    first = lines[i]
    if first.kind == "heading" and first.section is None and first.level <= 6:
        decide(first, "title", "title-heading")
        return first.text
    if first.kind != "text":
        return ""
    m = TITLE_LINE.match(first.text)
    if m:
        decide(first, "title", "title-key")
        return m.group("title").strip()
    after = lines[i + 1] if i + 1 < len(lines) else None
    if looks_like_title(first.text) and after is not None and _sets_title_apart(first, after):
        decide(first, "title", "title-line")
        return first.text.rstrip(":：").strip()
    return ""


def _sets_title_apart(first: Line, after: Line) -> bool:
    """True when the line after a title-like first line shows it is not a step: a blank line,
    a heading, a list item or table, or a sentence where the first line has no stop."""
    if after.kind in ("blank", "heading", "item", "row", "skip", "meta"):
        return True
    if after.kind != "text" or wraps(first.text, after.text) and len(first.text) >= 40:
        return False
    if first.text[:1].isupper() and after.text[:1].islower():
        return True  # "PCR cleanup" over lower-case shorthand lines
    if is_cjk(first.text) and not _SENTENCE_END.search(first.text):
        return bool(_SENTENCE_END.search(after.text))
    return bool(_SENTENCE_END.search(after.text)) and len(first.text) <= 80


def _procedure_regions(lines: list[Line]) -> list[list[Line]]:
    """The runs of lines that give steps: procedure sections where the protocol names any,
    else everything outside materials / notes / references ... sections; the lines left out
    get their decision here."""
    has_procedure = any(ln.kind == "heading" and ln.section == "procedure" for ln in lines)
    regions: list[list[Line]] = [[]]
    kind: str | None = None
    kind_level = 0
    name = ""
    for ln in lines:
        if ln.kind == "heading":
            if ln.section in ("procedure", "other"):
                kind, kind_level, name = ln.section, ln.level, section_name(ln.text)
                regions.append([])
                decide(ln, "heading", ln.rule)
                continue
            if ln.section == "part":
                if not (kind == "other" and ln.level > kind_level):
                    if kind != "procedure":
                        kind_level = ln.level
                    kind = "procedure" if has_procedure else None
            elif ln.level <= kind_level:
                kind, kind_level = None, 0
        wanted = kind == "procedure" if has_procedure else kind != "other"
        if wanted:
            regions[-1].append(ln)
            continue
        _decide_outside(ln, name)
        if regions[-1]:
            regions.append([])
    return [r for r in regions if any(ln.kind not in ("blank", "heading", "skip") for ln in r)]


def _decide_outside(ln: Line, section: str) -> None:
    """A line outside the procedure: material, a note of a notes section, or other text."""
    if ln.kind in ("blank", "skip", "meta", "heading"):
        decide(ln, _LEFT_CLASS[ln.kind], ln.rule or ln.kind)
    elif section in MATERIAL_NAMES:
        decide(ln, "material", "in-materials")
    elif "note" in section or section in ("備考", "注意事項", "注意事项", "备注"):
        decide(ln, "note", "note-section-line")
    else:
        decide(ln, "other", "in-other")

"""Unnumbered lines read as steps: one step per line, or prose paragraphs split into sentences; notes and parameters between them attach to the step before."""

from __future__ import annotations

import re

from biovl_core.protocol.lines import Line, decide, is_note, note_text
from biovl_core.protocol.model import DraftStep
from biovl_core.protocol.prose import LAB_VERBS, is_cjk, split_sentences, wraps


def plain_votes(region: list[Line]) -> int:
    """Unmarked lines that stand on their own (not wrapped or indented continuations)."""
    votes = 0
    prev: Line | None = None
    title_candidate = True
    for ln in region:
        if ln.kind == "item":
            title_candidate = False
        if ln.kind == "text" and title_candidate:
            title_candidate = False
            prev = ln
            continue
        if ln.kind == "text":
            continuation = prev is not None and (
                ln.indent > prev.indent
                or wraps(prev.text, ln.text)
                or prev.absorbs
                or prev.kind == "note"
            )
            if not continuation:
                votes += 1
        if ln.kind in ("text", "item") or ln.rule == "note-label":
            prev = ln
        elif ln.kind in ("blank", "heading"):
            prev = None if ln.kind == "heading" else prev
    return votes


def read_plain(region: list[Line], want_title: bool) -> tuple[str, list[DraftStep], bool]:
    """Unnumbered lines -> (title, steps, is_prose): one step per line, or prose sentences."""
    blocks: list[list[Line]] = [[]]
    extras_after: dict[int, list[Line]] = {}  # block index -> notes / parameters after it
    previous: Line | None = None
    for ln in region:
        label, previous = previous, ln
        if ln.kind == "text" and label is not None and label.rule == "note-label":
            label.text = f"{label.text} {ln.text}"  # "Note" over its text: one note
            decide(ln, "note", "note-continuation")
            continue
        if ln.kind in ("blank", "heading", "skip", "meta"):
            if blocks[-1]:
                blocks.append([])
            decide(ln, _OUTSIDE_CLASS.get(ln.kind, "skip"), ln.rule or ln.kind)
        elif ln.kind in ("note", "expected", "parameter"):
            if blocks[-1]:
                blocks.append([])
            extras_after.setdefault(len(blocks) - 2, []).append(ln)
            decide(ln, ln.kind, ln.rule or ln.kind)
        else:
            blocks[-1].append(ln)
    title = ""
    if (
        want_title
        and len([b for b in blocks if b]) > 1
        and len(blocks[0]) == 1
        and looks_like_title(blocks[0][0].text)
    ):
        title = blocks[0][0].text
        decide(blocks[0][0], "title", "title-line")
        blocks[0] = []
    prose = _is_prose([b for b in blocks if b])
    steps: list[DraftStep] = []
    pending: list[Line] = list(extras_after.get(-1, []))
    for i, block in enumerate(blocks):
        if block:
            steps.extend(_prose_steps(block) if prose else _line_steps(block))
        extras = pending + extras_after.get(i, [])
        if steps:
            _attach_extras(steps[-1], extras)
            pending = []
        else:
            pending = extras
    if pending:
        orphan = DraftStep("", None)
        _attach_extras(orphan, pending)
        steps.append(orphan)
    return title, steps, prose


_OUTSIDE_CLASS = {"blank": "skip", "heading": "heading", "skip": "skip", "meta": "meta"}


def _attach_extras(step: DraftStep, extras: list[Line]) -> None:
    """Notes and expected results to ``step.notes``, parameters to ``step.details``."""
    for ln in extras:
        (step.details if ln.kind == "parameter" else step.notes).append(ln.text)


def _line_steps(block: list[Line]) -> list[DraftStep]:
    """One step per line."""
    steps = []
    for ln in block:
        steps.append(DraftStep(ln.text, ln.number))
        decide(ln, "step", "line")
    return steps


def _prose_steps(block: list[Line]) -> list[DraftStep]:
    """A paragraph -> its sentences, each with the line it starts on; note sentences attach."""
    text, starts = "", []
    for ln in block:
        starts.append((len(text), ln.number))
        text += ln.text.strip() + ("" if is_cjk(ln.text[-1:]) else " ")
        decide(ln, "step", "prose")
    steps: list[DraftStep] = []
    pos = 0
    for sentence in split_sentences(text):
        found = text.find(sentence.split(" ", 1)[0], pos)
        pos = max(pos, found)
        line = max((n for off, n in starts if off <= pos), default=block[0].number)
        if is_note(sentence) and steps:
            steps[-1].notes.append(note_text(sentence))
        else:
            steps.append(DraftStep(sentence, line))
    return steps


def _is_prose(blocks: list[list[Line]]) -> bool:
    """True when the text reads as paragraphs rather than one step per line."""
    lines = [ln.text.strip() for block in blocks for ln in block]
    if len(lines) == 1:
        return True
    if any(len(split_sentences(line)) > 1 for line in lines):
        return True
    for block in blocks:
        for a, b in zip(block, block[1:], strict=False):
            if len(a.text.strip()) >= _WRAP_MIN_CHARS and wraps(a.text.strip(), b.text.strip()):
                return True
    return False


_WRAP_MIN_CHARS = 40  # a wrapped line runs near the width of the text; a short one is a line


def looks_like_title(line: str) -> bool:
    """A short line without closing punctuation that does not start with a lab verb (nor, in
    Japanese, end with a verb's kana)."""
    line = line.strip()
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", line)
    if is_cjk(line) and re.search(r"[\u3040-\u309f]$", line):
        return False
    return (
        0 < len(line) <= 120
        and not re.search(r"[.!?;。！？]$", line)
        and not (words and words[0].lower() in LAB_VERBS)
    )

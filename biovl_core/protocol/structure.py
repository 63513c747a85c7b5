"""The lines of a protocol read together: procedure regions, nested lists, plain lines and prose, into steps."""

from __future__ import annotations

import re
from dataclasses import dataclass

from biovl_core.protocol.lines import TITLE_LINE, Line, classify_lines, is_note, note_text
from biovl_core.protocol.model import DraftStep
from biovl_core.protocol.prose import (
    LAB_VERBS,
    is_cjk,
    split_sentences,
    step_verb,
    wraps,
)


def parse_text(text: str) -> tuple[str, list[DraftStep], bool]:
    """Plain text / Markdown -> (title, steps, is_prose)."""
    lines = classify_lines(text)
    title = ""
    first = next((ln for ln in lines if ln.kind != "blank"), None)
    if first is not None and first.kind == "heading" and first.section is None and first.level <= 6:
        title = first.text
        lines.remove(first)
    elif first is not None and TITLE_LINE.match(first.text):
        title = TITLE_LINE.match(first.text).group("title").strip()  # type: ignore[union-attr]
        lines.remove(first)
    if not title and first is not None and first.kind == "text" and _looks_like_title(first.text):
        after = lines[lines.index(first) + 1 : lines.index(first) + 2]
        if after and after[0].kind in ("blank", "heading"):
            title = first.text
            lines.remove(first)
    regions = _procedure_regions(lines)
    items = sum(1 for region in regions for ln in region if ln.kind == "item")
    votes = sum(_plain_votes(region) for region in regions)
    if items and items >= votes:
        steps: list[DraftStep] = []
        for region in regions:
            region_title, region_steps = _parse_list(region)
            title = title or region_title
            steps.extend(region_steps)
        return title, steps, False
    steps, prose = [], False
    for region in regions:
        region_title, region_steps, region_prose = _parse_plain(region, want_title=not title)
        title = title or region_title
        steps.extend(region_steps)
        prose = prose or region_prose
    return title, steps, prose


def _procedure_regions(lines: list[Line]) -> list[list[Line]]:
    """The runs of lines that give steps: procedure sections where the protocol names any,
    else everything outside materials / notes / references ... sections."""
    has_procedure = any(ln.kind == "heading" and ln.section == "procedure" for ln in lines)
    regions: list[list[Line]] = [[]]
    kind: str | None = None
    kind_level = 0
    for ln in lines:
        if ln.kind == "heading":
            if ln.section is not None:
                kind, kind_level = ln.section, ln.level
                regions.append([])
                continue
            if ln.level <= kind_level:
                kind, kind_level = None, 0
        wanted = kind == "procedure" if has_procedure else kind != "other"
        if wanted:
            regions[-1].append(ln)
        elif regions[-1]:
            regions.append([])
    return [r for r in regions if any(ln.kind not in ("blank", "heading") for ln in r)]


def _plain_votes(region: list[Line]) -> int:
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
                ln.indent > prev.indent or wraps(prev.text, ln.text)
            )
            if not continuation:
                votes += 1
        if ln.kind in ("text", "item"):
            prev = ln
        elif ln.kind in ("blank", "heading"):
            prev = None if ln.kind == "heading" else prev
    return votes


@dataclass
class _Level:
    """One open level of a nested list: its style, indent, last item and last ordinal."""

    style: str
    indent: int
    node: DraftStep
    ordinal: int | None


def _parse_list(region: list[Line]) -> tuple[str, list[DraftStep]]:
    """Numbered/bulleted lines -> (title from a line before the list, leaf steps)."""
    title = ""
    roots: list[DraftStep] = []
    stack: list[_Level] = []
    last: DraftStep | None = None  # what an unmarked line continues: the last item or note
    last_is_note = False
    for ln in region:
        if ln.kind == "blank":
            continue
        if ln.kind == "heading" or (ln.kind == "text" and _is_sub_heading(ln.text)):
            stack, last = [], None
            continue
        if ln.kind == "note":
            target = stack[-1].node if stack else (roots[-1] if roots else None)
            if target is None:
                roots.append(target := DraftStep("", ln.number))
            target.notes.append(ln.text)
            last, last_is_note = target, True
            continue
        if ln.kind == "text":
            if last is None and not roots:
                title = title or ln.text.strip("#").strip().rstrip(":")
            elif last is None:
                roots.append(last := DraftStep(ln.text, ln.number))
                last_is_note = False
            elif last_is_note:
                last.notes[-1] += " " + ln.text
            elif stack and _is_own_step(last.text, ln):
                node = DraftStep(ln.text, ln.number)
                _attach(node, stack[:-1], roots)
                stack[-1].node = node
                last = node
            elif last is not None:
                last.text = f"{last.text} {ln.text}"
            continue
        node = DraftStep(ln.text, ln.number)
        _push(stack, ln, node, roots)
        last, last_is_note = node, False
    return title, _leaves(roots)


def _push(stack: list[_Level], ln: Line, node: DraftStep, roots: list[DraftStep]) -> None:
    """Place a list item in the tree: sibling of the open level of its style, or a child."""
    style = _disambiguate(ln, stack)
    while stack and stack[-1].indent > ln.indent + 1 and stack[-1].style != style:
        stack.pop()
    match = next(
        (
            i
            for i in range(len(stack) - 1, -1, -1)
            if stack[i].style == style and abs(stack[i].indent - ln.indent) <= 1
        ),
        None,
    )
    loose = ln.ordinal not in (None, 1) and not re.match(r"dec[2-9]", style)
    if match is None and stack and loose and ln.indent <= stack[-1].indent:
        match = len(stack) - 1  # "1." then "2)": the same list, written loosely
    if match is not None:
        del stack[match + 1 :]
        _attach(node, stack[:-1], roots)
        stack[-1] = _Level(style, ln.indent, node, ln.ordinal)
        return
    _attach(node, stack, roots)
    stack.append(_Level(style, ln.indent, node, ln.ordinal))


def _disambiguate(ln: Line, stack: list[_Level]) -> str:
    """ "i." after "h." is a letter, not a Roman numeral (and "v." after "u.")."""
    if not ln.style.startswith("roman") or len(ln.text) == 0:
        return ln.style
    alpha = ln.style.replace("roman", "alpha", 1)
    for level in reversed(stack):
        if level.style == alpha and level.ordinal is not None:
            letter = {1: 9, 5: 22, 10: 24, 50: 12}.get(ln.ordinal or 0)
            if letter == level.ordinal + 1:
                ln.ordinal = letter
                return alpha
    return ln.style


def _attach(node: DraftStep, stack: list[_Level], roots: list[DraftStep]) -> None:
    """Add ``node`` under the deepest open level (or at the top)."""
    (stack[-1].node.children if stack else roots).append(node)


def _leaves(nodes: list[DraftStep]) -> list[DraftStep]:
    """The steps of a list tree: its leaves; a heading's notes go to its first step."""
    out: list[DraftStep] = []
    for node in nodes:
        if node.children:
            leaves = _leaves(node.children)
            if leaves and node.notes:
                leaves[0].notes[:0] = node.notes
            out.extend(leaves)
        else:
            out.append(node)
    return out


def _is_own_step(previous: str, ln: Line) -> bool:
    """An unmarked, unindented line after a finished item that starts with a lab verb."""
    words = re.findall(r"[A-Za-z]+", ln.text[:40])
    return (
        ln.indent == 0
        and bool(re.search(r"[.!?。！？]$", previous))
        and ln.text[:1].isupper()
        and bool(words)
        and words[0].lower() in LAB_VERBS
    )


def _is_sub_heading(line: str) -> bool:
    """A short line ending with ':' inside a list ("Day 2:") — a heading, not a step."""
    line = line.strip()
    return line.endswith((":", "：")) and len(line) <= 60 and step_verb(line) is None


def _parse_plain(region: list[Line], want_title: bool) -> tuple[str, list[DraftStep], bool]:
    """Unnumbered lines -> (title, steps, is_prose): one step per line, or prose sentences."""
    blocks: list[list[Line]] = [[]]
    notes_after: dict[int, list[str]] = {}  # block index -> notes after its last line
    for ln in region:
        if ln.kind in ("blank", "heading"):
            if blocks[-1]:
                blocks.append([])
        elif ln.kind == "note":
            if blocks[-1]:
                blocks.append([])
            notes_after.setdefault(len(blocks) - 2, []).append(ln.text)
        else:
            blocks[-1].append(ln)
    title = ""
    if (
        want_title
        and len([b for b in blocks if b]) > 1
        and len(blocks[0]) == 1
        and _looks_like_title(blocks[0][0].text)
    ):
        title = blocks[0][0].text
        blocks[0] = []
    prose = _is_prose([b for b in blocks if b])
    steps: list[DraftStep] = []
    pending: list[str] = notes_after.get(-1, [])
    for i, block in enumerate(blocks):
        if block:
            steps.extend(
                _prose_steps(block) if prose else [DraftStep(ln.text, ln.number) for ln in block]
            )
        if steps:
            steps[-1].notes.extend(pending + notes_after.get(i, []))
            pending = []
        else:
            pending.extend(notes_after.get(i, []))
    if pending:
        steps.append(DraftStep("", None, pending))
    return title, steps, prose


def _prose_steps(block: list[Line]) -> list[DraftStep]:
    """A paragraph -> its sentences, each with the line it starts on; note sentences attach."""
    text, starts = "", []
    for ln in block:
        starts.append((len(text), ln.number))
        text += ln.text.strip() + ("" if is_cjk(ln.text[-1:]) else " ")
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
            if wraps(a.text.strip(), b.text.strip()):
                return True
    return False


def _looks_like_title(line: str) -> bool:
    """A short line without closing punctuation that does not start with a lab verb."""
    line = line.strip()
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", line)
    return (
        len(line) <= 120
        and not re.search(r"[.!?;。！？]$", line)
        and not (words and words[0].lower() in LAB_VERBS)
    )

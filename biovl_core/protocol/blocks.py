"""Lines read in small groups before the structure: Markdown setext headings, tables (a step table or a parameter table) and parameter blocks (a label or a step ending with ':' and the lines under it)."""

from __future__ import annotations

import re

from biovl_core.protocol.lines import Line, heading_line
from biovl_core.protocol.plain import looks_like_title
from biovl_core.protocol.prose import is_cjk
from biovl_core.protocol.rules import match_block, opens_block, reads_as_action

_NUMBER_HEADERS = frozenset(
    "step no no. # number step no. nr. nr 番号 序号 步骤号 编号 順番".split()
)
_ACTION_HEADERS = frozenset(
    "action actions procedure description instruction instructions operation what to do task "
    "step description method 操作 手順 内容 操作内容 方法 作業 步骤 操作步骤 实验步骤 操作方法 说明 "
    "procedure step".split(" ")
)
_NOTE_HEADERS = frozenset(
    "notes note comments comment remarks remark 備考 注意 注意事项 备注 注".split()
)
_AMBIGUOUS_HEADERS = frozenset("step 手順 步骤".split())


def read_blocks(lines: list[Line]) -> None:
    """Rewrite ``lines`` in place: setext headings, tables, parameter blocks, plain headings."""
    _setext(lines)
    _tables(lines)
    _parameter_blocks(lines)
    _plain_headings(lines)


def _setext(lines: list[Line]) -> None:
    """ "Title" over "=====" (or "-----") is a Markdown heading of level 1 (or 2)."""
    for i in range(len(lines) - 1):
        ln, under = lines[i], lines[i + 1]
        underline = under.raw.replace(" ", "")
        if not (
            under.kind == "skip"
            and under.number == ln.number + 1
            and re.fullmatch(r"=+|-+", underline)
        ):
            continue
        level = 1 if "=" in underline else 2
        if ln.kind in ("text", "label"):
            lines[i] = heading_line(ln.number, ln.text.rstrip(":："), level, ln.raw)
            under.rule = "setext"
        elif ln.kind == "heading":
            ln.level = level
            under.rule = "setext"


def _tables(lines: list[Line]) -> None:
    """Runs of table rows: a step table (an action column) gives steps, others are parameters."""
    i = 0
    while i < len(lines):
        if lines[i].kind != "row":
            i += 1
            continue
        j = i
        while j < len(lines) and (
            lines[j].kind == "row" or (lines[j].kind == "skip" and lines[j].rule == "table-header")
        ):
            j += 1
        _read_table([ln for ln in lines[i:j] if ln.kind == "row"])
        i = j


def _read_table(rows: list[Line]) -> None:
    """One table: find its number, action and note columns, then turn its rows into lines."""
    header = rows[0].cells if _is_header(rows[0].cells) else None
    body = rows[1:] if header else rows
    number_col, action_col = _columns(header, body)
    if action_col is None:
        for ln in rows:
            ln.kind, ln.rule = "parameter", "table-param"
            ln.text = " | ".join(c for c in ln.cells if c)
        return
    if header:
        rows[0].kind, rows[0].rule = "skip", "table-header"
    previous: Line | None = None
    for k, ln in enumerate(body, start=1):
        cells = ln.cells + [""] * (len(header or ln.cells) - len(ln.cells))
        action = cells[action_col] if action_col < len(cells) else ""
        extras = [
            (header[c] if header and c < len(header) else "", cell)
            for c, cell in enumerate(cells)
            if cell and c not in (number_col, action_col)
        ]
        details = [f"{n}: {v}" if n else v for n, v in extras if n.lower() not in _NOTE_HEADERS]
        notes = [v for n, v in extras if n.lower() in _NOTE_HEADERS]
        if not action and previous is not None:
            previous.details.extend(details)
            previous.notes.extend(notes)
            ln.kind, ln.rule, ln.text = (
                "parameter",
                "table-param",
                " | ".join(c for c in cells if c),
            )
            continue
        number = cells[number_col] if number_col is not None and number_col < len(cells) else ""
        ln.kind, ln.rule, ln.text = "item", "table-step", action
        ln.style = "table"
        ln.ordinal = int(number) if number.isdigit() else k
        ln.details, ln.notes = details, notes
        previous = ln


def _is_header(cells: list[str]) -> bool:
    """True when a row names its columns (no step number in it, a known column name)."""
    names = {c.strip().strip("*_").lower() for c in cells if c}
    known = _NUMBER_HEADERS | _ACTION_HEADERS | _NOTE_HEADERS
    return not any(re.fullmatch(r"\d+[.)]?", c.strip()) for c in cells) and bool(names & known)


def _columns(header: list[str] | None, body: list[Line]) -> tuple[int | None, int | None]:
    """(number column, action column) of a table; None where it has none."""
    if header is None:
        numbered = [ln for ln in body if re.fullmatch(r"\d+[.)]?", ln.cells[0])]
        acting = [ln for ln in numbered if len(ln.cells) > 1 and ln.cells[1]]
        if (
            body
            and len(acting) * 2 >= len(body)
            and any(reads_as_action(ln.cells[1]) for ln in acting)
        ):
            return 0, 1
        return None, None
    names = [c.strip().strip("*_").lower() for c in header]
    number_col = action_col = None
    for c, name in enumerate(names):
        values = [ln.cells[c] for ln in body if c < len(ln.cells) and ln.cells[c]]
        numeric = bool(values) and all(re.fullmatch(r"\d+[.)]?", v) for v in values)
        if name in _AMBIGUOUS_HEADERS:
            if numeric and number_col is None:
                number_col = c
            elif not numeric and action_col is None:
                action_col = c
        elif name in _NUMBER_HEADERS and number_col is None:
            number_col = c
        elif name in _ACTION_HEADERS and action_col is None:
            action_col = c
    return number_col, action_col


def _parameter_blocks(lines: list[Line]) -> None:
    """A label ("Program:") or a step ending with ':' opens a block of parameter lines under it."""
    for i, ln in enumerate(lines):
        if ln.kind == "label":
            end = _block_after(lines, i, label=True)
            if end == i + 1:
                ln.kind, ln.rule = "text", ""
            else:
                ln.kind = "parameter"
        elif ln.kind in ("item", "text") and opens_block(ln.text):
            _block_after(lines, i, label=False)


def _block_after(lines: list[Line], i: int, label: bool) -> int:
    """Mark the parameter lines after ``lines[i]``; the index after the block."""
    lead = lines[i]
    k = i + 1
    seen_blank = False
    while k < len(lines):
        ln = lines[k]
        if ln.kind == "blank":
            if label and not seen_blank and k == i + 1:
                seen_blank = True
                k += 1
                continue
            if label:
                break
            seen_blank = True
            k += 1
            continue
        deeper = ln.indent > lead.indent
        if ln.kind == "parameter" and (deeper or not seen_blank):
            k += 1
            continue
        if ln.kind not in ("text", "item", "skip") or (seen_blank and not deeper):
            break
        rule = match_block(ln.text or ln.raw)
        if ln.kind == "skip" and (deeper or not seen_blank):
            k += 1
            continue
        if reads_as_action(ln.text) or (ln.kind == "item" and not deeper and not label):
            break
        if rule is None and not (deeper and ln.kind == "text"):
            break
        if rule is not None and rule.cls == "skip":
            ln.kind, ln.rule = "skip", rule.name
        else:
            ln.kind, ln.rule = "parameter", rule.name if rule is not None else "block-line"
        k += 1
    while k > i + 1 and lines[k - 1].kind == "blank":
        k -= 1
    return k


def _plain_headings(lines: list[Line]) -> None:
    """An unmarked title-like line between a finished step (or a blank line) and a list item,
    a label or a parameter ("Phase separation" over "3"): a heading inside the procedure."""
    for i in range(1, len(lines) - 1):
        ln, before, after = lines[i], lines[i - 1], lines[i + 1]
        if ln.kind != "text" or ln.indent or not looks_like_title(ln.text) or len(ln.text) > 60:
            continue
        if not (ln.text[:1].isupper() or is_cjk(ln.text[:1])):
            continue
        finished = before.kind in ("blank", "parameter", "note", "expected", "skip") or (
            before.kind in ("text", "item") and re.search(r"[.!?。！？]$", before.text) is not None
        )
        if finished and after.kind in ("item", "parameter", "label") and after.indent == 0:
            lines[i] = heading_line(ln.number, ln.text, 7, ln.raw, section="part")
            lines[i].rule = "plain-heading"

"""One line of a protocol read on its own: list markers (any numbering style), headings, table rows, and what the rules table says the line is."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from biovl_core.protocol.prose import LAB_VERBS, is_cjk
from biovl_core.protocol.rules import (
    BLOCK_RULES,
    LINE_RULES,
    REASONS,
    ascii_view,
    block_label,
    day_heading,
    match_line,
    section_kind,
    step_heading,
)

_ROMAN = re.compile(r"^(?=[ivxl])l?x{0,3}(?:ix|iv|v?i{0,3})$")


_UNITS = frozenset(
    """
    l ml µl μl ul nl pl mg g kg µg μg ug ng pg m mm µm μm um nm pm mol mmol µmol nmol
    % x × h hr hrs min mins s sec secs °c ºc c k rpm rcf kb bp nt cm mm2 v w kv ma u iu
    volume volumes vol vols fold mg/ml µg/ml ng/µl
    """.split()
)


_MARKER = re.compile(
    r"""^(?P<indent>\s*)(?:
        (?P<step>(?:step|stage|ステップ|手順|步骤)\s*(?P<step_n>\d+)[a-z]?\s*[.:)、\-–—]?)
      | (?P<zh>第\s*(?P<zh_n>\d+|[一二三四五六七八九十]+)\s*步\s*[:、]?)
      | \((?P<pnum>\d+)\)
      | \[(?P<bnum>\d+)\]
      | (?P<check>\[[\ xX✓✔]\])
      | (?P<dec>\d+(?:\.\d+)*)(?P<dec_p>[.):、|]?)
      | \((?P<palpha>[a-zA-Z]{1,5})\)
      | (?P<alpha>[a-zA-Z]{1,5})(?P<alpha_p>[.)])
      | (?P<circ>[\u2460-\u2473])
      | (?P<bullet>[-*•·‣◦▪▫●○■□◆◇・+–—])
    )(?P<gap>\s+|(?=[\u3040-\u30ff\u3400-\u9fff])|(?<=[)\]\u2460-\u2473])(?=\S))""",
    re.IGNORECASE | re.VERBOSE,
)

# "２．2.5倍量…": full-width digits and their full-width stop end the marker, so the ASCII
# number after it stays text (read as ASCII, "2.2.5" would be a three-level number).
_FULL_WIDTH_MARKER = re.compile(r"^(?P<indent>\s*)(?P<n>[０-９]+)(?P<p>[．。、）)])\s*")

_CHECKBOX = re.compile(r"^\[[ xX✓✔]\]\s+")


_MD_HEADING = re.compile(r"^\s*(?P<hashes>#{1,6})\s+(?P<text>.+?)\s*#*\s*$")


TITLE_LINE = re.compile(r"^\s*title\s*[:：]\s*(?P<title>.+)$", re.IGNORECASE)

_PIPE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_PIPE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*$")
_CELL_MARKER = re.compile(r"^(?:\d{1,4}[.)]?|[a-zA-Z][.)]|\(\d+\)|[-*•・]|[０-９]+[．）])$")


def is_note(text: str) -> bool:
    """True for a note line: "Note: ...", "Caution: ...", "CRITICAL STEP ...", "注意：...", "※..."."""
    rule = match_line(text)
    return rule is not None and rule.cls == "note"


@dataclass
class Line:
    """One source line (or one item of a list written on one line), classified.

    ``kind`` is what the line is read as (blank, heading, item, text, row, note, expected,
    parameter, label, meta, skip); ``rule`` names the rule or reason that decided it. The
    structure pass sets ``cls`` and ``reason``, the decision `--explain` prints.
    """

    number: int
    kind: str
    text: str
    indent: int = 0
    style: str = ""  # list style of an item ("dec1.", "alpha)", "bullet-", ...)
    ordinal: int | None = None  # 1 for "1." / "a)" / "i." ..., None for bullets
    level: int = 0  # heading level (1-6 Markdown; 7 plain headings)
    section: str | None = None  # heading: "procedure", "other", "part" or None
    rule: str = ""
    raw: str = ""
    cells: list[str] = field(default_factory=list)
    absorbs: bool = False  # a step label: the paragraph under it is the step's text
    details: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cls: str = ""
    reason: str = ""


_RULE_REASONS = {rule.name: rule.reason for rule in (*LINE_RULES, *BLOCK_RULES)}


def reason_text(key: str) -> str:
    """The reason printed for a rule name or a structural decision key."""
    return _RULE_REASONS.get(key) or REASONS.get(key, key)


def decide(ln: Line, cls: str, key: str) -> None:
    """Record the class of ``ln`` and the reason (a rule name or a ``REASONS`` key)."""
    ln.cls, ln.reason = cls, reason_text(key)


def classify_lines(text: str) -> list[Line]:
    """Each source line as blank / heading / item / text / row / note / ... (one-line lists expanded)."""
    out: list[Line] = []
    raw_lines = text.splitlines()
    start = _front_matter(raw_lines, out)
    for number, raw in enumerate(raw_lines[start:], start=start + 1):
        if not raw.strip():
            out.append(Line(number, "blank", "", raw="", rule="blank"))
            continue
        for piece in _inline_items(raw):
            out.extend(_split_inline_note(_classify_line(number, piece)))
    return out


def _front_matter(raw_lines: list[str], out: list[Line]) -> int:
    """YAML front matter (``---`` ... ``---`` at the top) as meta lines; the index after it."""
    if not raw_lines or raw_lines[0].strip() != "---":
        return 0
    end = next(
        (i for i, r in enumerate(raw_lines[1:80], start=1) if r.strip() in ("---", "...")), None
    )
    if end is None or not any(re.match(r"^\s*[\w-]+\s*:", r) for r in raw_lines[1:end]):
        return 0
    for i, raw in enumerate(raw_lines[: end + 1]):
        m = TITLE_LINE.match(raw)
        if m:
            value = m.group("title").strip().strip("\"'")
            out.append(Line(i + 1, "meta", value, raw=raw.strip(), rule="front-matter-title"))
        else:
            out.append(Line(i + 1, "meta", "", raw=raw.strip(), rule="front-matter"))
    return end + 1


def _classify_line(number: int, raw: str) -> Line:
    """Classify one line (or one piece of a one-line list)."""
    indent = len(raw) - len(raw.lstrip())
    row = _row_cells(raw)
    if row is not None:
        return Line(number, "row", raw.strip(), indent=indent, raw=raw.strip(), cells=row)
    if _PIPE_RULE.match(raw) and "|" in raw:
        return Line(
            number, "skip", raw.strip(), indent=indent, raw=raw.strip(), rule="table-header"
        )
    md = _MD_HEADING.match(raw)
    if md:
        return heading_line(
            number, md.group("text").strip().strip("*_").strip(), len(md.group("hashes")), raw
        )
    view = ascii_view(raw)
    style_ordinal, end = _marker(raw, view)
    body = raw[end:].strip() if style_ordinal else raw.strip()
    body = _strip_brackets(_CHECKBOX.sub("", body))
    line = Line(number, "text", body, indent=indent, raw=raw.strip())
    if style_ordinal is None and re.fullmatch(r"\s*\d{1,3}\s*", raw):
        line.kind, line.style, line.ordinal = "item", "bare", int(raw.strip())
        line.text, line.absorbs, line.rule = "", True, "bare-number"
        return line
    rule = match_line(body)
    if rule is not None and rule.name == "note-label" and style_ordinal is None:
        line.kind, line.rule = "note", "note-label"
        line.text = body.strip("*_").rstrip(":：") + ("：" if is_cjk(body) else ":")
        return line
    if section_kind(body) is not None:
        return heading_line(number, body.strip("*_:： "), 7, raw, section=section_kind(body))
    if style_ordinal is None and day_heading(body):
        return heading_line(number, body.strip("*_:： "), 7, raw, section="part")
    if style_ordinal is None:
        label = step_heading(body)
        if label is not None and not label[1]:
            line.kind, line.style, line.ordinal = "item", "step-label", label[0]
            line.text, line.absorbs, line.rule = "", True, "step-heading"
            return line
    if rule is not None and rule.cls != "skip" or rule is not None and style_ordinal is None:
        line.kind, line.rule = _KIND_OF_CLASS[rule.cls], rule.name
        if rule.name == "note":
            line.text = note_text(body)
        return line
    if style_ordinal is None and block_label(body):
        line.kind, line.rule = "label", "block-label"
        return line
    if style_ordinal:
        line.kind, (line.style, line.ordinal) = "item", style_ordinal
        line.rule = "item"
    return line


_KIND_OF_CLASS = {
    "note": "note",
    "expected": "expected",
    "parameter": "parameter",
    "meta": "meta",
    "skip": "skip",
}


def heading_line(number: int, name: str, level: int, raw: str, section: str | None = None) -> Line:
    """A heading line: a step label, a day (part), a known section, or a plain heading."""
    label = step_heading(name)
    if label is not None:
        return Line(
            number,
            "item",
            label[1],
            style="step-heading",
            ordinal=label[0],
            level=level,
            raw=raw.strip(),
            absorbs=True,
            rule="step-heading",
        )
    if section is None:
        section = section_kind(name) or ("part" if day_heading(name) else None)
    rule = {"procedure": "section-procedure", "other": "section-other", "part": "section-part"}
    return Line(
        number,
        "heading",
        name,
        level=level,
        section=section,
        raw=raw.strip(),
        rule=rule.get(section or "", "heading"),
    )


def _marker(raw: str, view: str) -> tuple[tuple[str, int | None] | None, int]:
    """((style, ordinal), end offset of the marker) of a list marker, or (None, 0)."""
    fw = _FULL_WIDTH_MARKER.match(raw)
    if fw:
        punct = ascii_view(fw.group("p")).replace("。", ".")
        return (f"dec1{punct}", int(ascii_view(fw.group("n")))), fw.end()
    m = _MARKER.match(view)
    marker = _marker_style(m, view) if m else None
    return (marker, m.end()) if marker and m else (None, 0)


def _row_cells(raw: str) -> list[str] | None:
    """The cells of a table row (tab-separated, as Word pastes a table, or Markdown pipes)."""
    body = raw.lstrip().rstrip(" \r\n")
    if _PIPE_ROW.match(raw) and body.count("|") >= 3 and not _PIPE_RULE.match(raw):
        return [c.strip() for c in body.strip("|").split("|")]
    if "\t" not in body:
        return None
    cells = [c.strip() for c in body.split("\t")]
    filled = [c for c in cells if c]
    if len(filled) < 2 or (len(cells) == 2 and _CELL_MARKER.match(cells[0])):
        return None
    if len(filled) == 2 and cells[0].endswith((":", "：")):
        return None  # "Note:<tab>text": a label and its text, not a table
    return cells


def _strip_brackets(body: str) -> str:
    """ "[pipette 1 ml of buffer]" -> "pipette 1 ml of buffer" (a step written in brackets)."""
    if body.startswith("[") and body.endswith("]") and body.count("[") == 1 and len(body) > 4:
        return body[1:-1].strip()
    return body


def _marker_style(m: re.Match[str], view: str) -> tuple[str, int | None] | None:
    """(style, ordinal) of a list marker match, or None where it is a quantity ("1.5 ml")."""
    g = m.groupdict()
    rest = view[m.end() :]
    if g["step"]:
        return "step", int(g["step_n"])
    if g["zh"]:
        return "step", _cjk_number(g["zh_n"])
    if g["check"]:
        return "checkbox", None
    if g["pnum"]:
        return "(1)", int(g["pnum"])
    if g["bnum"]:
        return "[1]", int(g["bnum"])
    if g["dec"]:
        parts = g["dec"].split(".")
        punct = g["dec_p"]
        if not punct and not _starts_like_step(rest):
            return None
        if punct == ":" and len(parts) == 1 and not _starts_like_step(rest):
            return None
        depth = len(parts)
        return (f"dec{depth}{punct if depth == 1 else ''}", int(parts[-1]))
    if g["circ"]:
        return "circled", ord(g["circ"]) - 0x2460 + 1
    if g["bullet"]:
        return f"bullet{g['bullet']}", None
    letters = g["palpha"] or g["alpha"]
    punct = "()" if g["palpha"] else g["alpha_p"]
    if len(letters) > 1 and not _ROMAN.match(letters.lower()):
        return None
    case = "upper" if letters.isupper() else "lower"
    if _ROMAN.match(letters.lower()) and (len(letters) > 1 or letters.lower() == "i"):
        return f"roman{punct}{case}", _roman_value(letters.lower())
    return f"alpha{punct}{case}", ord(letters.lower()) - ord("a") + 1


def _starts_like_step(rest: str) -> bool:
    """True when text after a bare number starts a step (a capital or CJK word, not a unit)."""
    word = rest.split(" ", 1)[0].strip(",;").lower()
    if not word or word in _UNITS:
        return False
    return rest[:1].isupper() or is_cjk(rest[:1]) or word in LAB_VERBS or rest[:1] == "["


def _cjk_number(text: str) -> int:
    """ "12" or "十二" -> 12 (Chinese numerals up to 99)."""
    if text.isdigit():
        return int(text)
    digits = {c: i for i, c in enumerate("〇一二三四五六七八九")}
    if "十" not in text:
        return digits.get(text, 0)
    tens, _, ones = text.partition("十")
    return digits.get(tens, 1) * 10 + digits.get(ones, 0)


def _roman_value(numeral: str) -> int:
    """Value of a lower-case Roman numeral up to l (50)."""
    values = {"i": 1, "v": 5, "x": 10, "l": 50}
    total = 0
    for a, b in zip(numeral, numeral[1:] + " ", strict=True):
        v = values[a]
        total += -v if b != " " and values[b] > v else v
    return total


_INLINE_NUMBER = re.compile(r"(?:(?<=[.!?;。！？)])\s+|(?<=[。！？]))(?P<n>\d{1,4})[.)]\s+")


_INLINE_CIRCLED = re.compile(r"[\u2460-\u2473]")

_INLINE_NOTE = re.compile(
    r"(?<=[。！？.!?])\s*(?=※|(?:注意|注|ポイント|注意事项|提示)[:：]"
    r"|(?:Note|NOTE|Caution|CAUTION|Critical|CRITICAL|Tip|Warning|Expected result)s?\s*:)"
)


def _inline_items(raw: str) -> list[str]:
    """A list written on one line ("1. Add water. 2. Add primer.") -> one piece per item."""
    view = ascii_view(raw)
    stripped = view.lstrip()
    if _INLINE_CIRCLED.match(stripped) and len(_INLINE_CIRCLED.findall(stripped)) > 1:
        starts = [m.start() for m in _INLINE_CIRCLED.finditer(view)]
        return [raw[a:b] for a, b in zip(starts, [*starts[1:], len(raw)], strict=True)]
    first = re.match(r"(?P<lead>[^:：]{1,60}[:：]\s+)?\s*(?P<n>\d{1,4})[.)]\s+", view)
    if not first:
        return [raw]
    expected = int(first.group("n")) + 1
    starts = [0] if first.group("lead") is None else [0, first.start("n")]
    for m in _INLINE_NUMBER.finditer(view, first.end()):
        if int(m.group("n")) == expected:
            starts.append(m.start("n"))
            expected += 1
    if expected == int(first.group("n")) + 1:
        return [raw]
    return [raw[a:b] for a, b in zip(starts, [*starts[1:], len(raw)], strict=True)]


def _split_inline_note(line: Line) -> list[Line]:
    """A list item that ends with a note ("5．上清を捨てる。※…") -> the item, then the note."""
    if line.kind != "item":
        return [line]
    m = _INLINE_NOTE.search(line.text)
    if not m or m.start() == 0:
        return [line]
    note = line.text[m.end() :].strip()
    line.text = line.text[: m.start()].strip()
    rule = match_line(note)
    kind = "expected" if rule is not None and rule.cls == "expected" else "note"
    text = note_text(note) if kind == "note" else note
    return [line, Line(line.number, kind, text, indent=line.indent + 1, raw=note, rule=kind)]


def note_text(body: str) -> str:
    """A note without its decoration ("! CAUTION x" -> "CAUTION x", "**Note:** x" -> "Note: x")."""
    body = re.sub(r"^[\s>!?▲■⚠△]+", "", body)
    return re.sub(r"\*\*|__", "", body).strip()

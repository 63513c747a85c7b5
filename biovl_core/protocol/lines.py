"""One line of a protocol read on its own: list markers (any numbering style), headings, sections, notes."""

from __future__ import annotations

import re
from dataclasses import dataclass

from biovl_core.protocol.prose import (
    LAB_VERBS,
    is_cjk,
)

# Full-width ASCII (１．（１）Ａ) read as ASCII when finding list markers; one char per char,
# so offsets found on the translated line hold on the original.
_FULL_WIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


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
      | (?P<zh>第\s*(?P<zh_n>\d+)\s*步\s*[:、]?)
      | \((?P<pnum>\d+)\)
      | \[(?P<bnum>\d+)\]
      | (?P<dec>\d+(?:\.\d+)*)(?P<dec_p>[.):、]?)
      | \((?P<palpha>[a-zA-Z]{1,5})\)
      | (?P<alpha>[a-zA-Z]{1,5})(?P<alpha_p>[.)])
      | (?P<circ>[\u2460-\u2473])
      | (?P<bullet>[-*•·‣◦▪▫●○■□◆◇・+–—])
    )(?P<gap>\s+|(?=[\u3040-\u30ff\u3400-\u9fff]))""",
    re.IGNORECASE | re.VERBOSE,
)


_CHECKBOX = re.compile(r"^\[[ xX]\]\s+")


_MD_HEADING = re.compile(r"^\s*(?P<hashes>#{1,6})\s+(?P<text>.+?)\s*#*\s*$")


TITLE_LINE = re.compile(r"^\s*title\s*[:：]\s*(?P<title>.+)$", re.IGNORECASE)


_NOTE = re.compile(
    r"""^[\s>!▲■⚠△*_(\[【「]*(?:
        (?i:notes?|nb|n\.b\.|caution|warning|critical(?:\s+step)?|tips?|hint|pause\s+point
           |important|attention)\s*(?:\*\*|__)?\s*[:：\-–—!)\]】]
      | (?-i:NOTE|CAUTION|WARNING|CRITICAL(?:\ STEP)?|PAUSE\ POINT|TIP|IMPORTANT)\b
      | (?i:pause\s+point)\b
      | ※
      | (?:注意事項|注意点|注意|注|ポイント|メモ|備考|重要|警告|ヒント|コツ|注意事项|提示|小贴士)\s*[:：】\])]
    )""",
    re.VERBOSE,
)


_PROCEDURE_NAMES = frozenset(
    "procedure, procedures, method, methods, methodology, steps, step, protocol, instructions, "
    "workflow, directions, experimental procedure, experimental procedures, step-by-step "
    "procedure, step-by-step instructions, materials and methods, 手順, 実験手順, 操作手順, "
    "方法, 実験方法, 操作, プロトコル, 步骤, 实验步骤, 操作步骤, 实验方法, 方法步骤".split(", ")
)


_OTHER_NAMES = frozenset(
    "material, materials, reagent, reagents, equipment, supplies, apparatus, instrument, "
    "instruments, solution, solutions, buffer, buffers, recipe, recipes, note, notes, general "
    "notes, safety, safety notes, safety information, safety precautions, hazard, hazards, "
    "reference, references, bibliography, background, introduction, abstract, overview, "
    "summary, troubleshooting, expected result, expected results, results, anticipated "
    "results, discussion, timing, acknowledgements, acknowledgments, before you begin, before "
    "you start, reagent setup, equipment setup, materials and reagents, reagents and "
    "equipment, materials and equipment, required materials, what you need, tips, 材料, 試薬, "
    "器具, 機器, 装置, 準備物, 用意するもの, 必要なもの, 注意事項, 参考文献, 文献, 備考, 安全, "
    "背景, 概要, 目的, 結果, 试剂, 仪器, 设备, 注意事项, 安全事项".split(", ")
)


def is_note(text: str) -> bool:
    """True for a note line: "Note: ...", "Caution: ...", "CRITICAL STEP ...", "注意：...", "※..."."""
    return bool(_NOTE.match(text))


@dataclass
class Line:
    """One source line, classified: kind is item / text / note / heading."""

    number: int
    kind: str
    text: str
    indent: int = 0
    style: str = ""  # list style of an item ("dec1.", "alpha)", "bullet-", ...)
    ordinal: int | None = None  # 1 for "1." / "a)" / "i." ..., None for bullets
    level: int = 0  # Markdown heading level (1-6; 7 for plain headings)
    section: str | None = None  # heading: "procedure", "other" or None (a plain sub-heading)


def classify_lines(text: str) -> list[Line]:
    """Each source line as blank / heading / note / item / text (one-line lists expanded)."""
    out: list[Line] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            out.append(Line(number, "blank", ""))
            continue
        for piece in _inline_items(raw):
            out.append(_classify_line(number, piece))
    return out


def _classify_line(number: int, raw: str) -> Line:
    """Classify one line (or one piece of a one-line list)."""
    md = _MD_HEADING.match(raw)
    if md:
        name = md.group("text").strip().strip("*_").strip()
        return Line(number, "heading", name, level=len(md.group("hashes")), section=_section(name))
    view = raw.translate(_FULL_WIDTH)
    m = _MARKER.match(view)
    marker = _marker_style(m, view) if m else None
    body = raw[m.end() :].strip() if marker else raw.strip()
    body = _CHECKBOX.sub("", body)
    indent = len(raw) - len(raw.lstrip())
    if _section(body) is not None:
        return Line(number, "heading", body.strip("*_:： "), level=7, section=_section(body))
    if is_note(body):
        return Line(number, "note", note_text(body), indent=indent)
    if marker:
        style, ordinal = marker
        return Line(number, "item", body, indent=indent, style=style, ordinal=ordinal)
    return Line(number, "text", body, indent=indent)


def _marker_style(m: re.Match[str], view: str) -> tuple[str, int | None] | None:
    """(style, ordinal) of a list marker match, or None where it is a quantity ("1.5 ml")."""
    g = m.groupdict()
    rest = view[m.end() :]
    if g["step"]:
        return "step", int(g["step_n"])
    if g["zh"]:
        return "step", int(g["zh_n"])
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
    return rest[:1].isupper() or is_cjk(rest[:1]) or word in LAB_VERBS


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


def _inline_items(raw: str) -> list[str]:
    """A list written on one line ("1. Add water. 2. Add primer.") -> one piece per item."""
    view = raw.translate(_FULL_WIDTH)
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


def _section(text: str) -> str | None:
    """ "procedure" / "other" when ``text`` is a known section heading, else None."""
    name = text.strip().strip("*_#").strip()
    name = re.sub(r"^(?:[0-9]+|[ivxIVX]+|[A-Z])[.)]\s+", "", name)
    name = re.sub(r"\s*[(（].*?[)）]\s*$", "", name)
    name = name.strip("【】[]■●◆ ").rstrip(":：").strip().lower()
    if not name or len(name) > 40:
        return None
    if name in _PROCEDURE_NAMES:
        return "procedure"
    if name in _OTHER_NAMES:
        return "other"
    return None


def note_text(body: str) -> str:
    """A note without its decoration ("! CAUTION x" -> "CAUTION x", "**Note:** x" -> "Note: x")."""
    body = re.sub(r"^[\s>!▲■⚠△]+", "", body)
    return re.sub(r"\*\*|__", "", body).strip()

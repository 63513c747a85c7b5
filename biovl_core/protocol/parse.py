"""Protocol text -> ordered list of steps, one action per step, each with its line and notes.

Accepted inputs (SPEC.md "Data formats"; docs/PROTOCOLS.md has every rule and the corpus):

- plain text, one step per line; free prose (split into sentences, then one step per verb,
  see ``protocol_text``), in English, Japanese or Chinese;
- lists numbered at any depth (``1``, ``1.1``, ``1.1.1``, ``a)``, ``(a)``, ``i.``, ``(1)``,
  ``①``, ``Step 1:``, full-width ``１．`` / ``（１）``) or bulleted (``-``, ``*``, ``•``, ``・``);
  the leaves are the steps, an item with sub-items is a heading; a list written on one
  line (``1. Add water. 2. Add primer.``) is a list;
- sections (Markdown headings or heading lines such as "Materials:", "Procedure"): where a
  protocol names a procedure section, only procedure sections give steps; otherwise every
  section except materials, equipment, notes, safety, references and the like;
- notes ("Note:", "Caution:", "CRITICAL STEP", "Pause point", "注意：", "※" ...) belong to the
  step before them: kept in ``Protocol.notes``, never step text;
- JSON ``{"title": ..., "steps": [...]}``, a bare JSON list of strings, or protocols.io's
  API JSON (v3 and v4, see ``protocols_io``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biovl_core.errors import ProtocolError
from biovl_core.protocol.prose import (
    LAB_VERBS,
    OVERNIGHT_SECONDS,
    is_cjk,
    split_sentences,
    split_step,
    step_duration_hint,
    step_verb,
    wraps,
)
from biovl_core.protocol.protocols_io import protocols_io_root, read_protocols_io

__all__ = [
    "LAB_VERBS",
    "OVERNIGHT_SECONDS",
    "Protocol",
    "is_note",
    "parse_protocol",
    "read_protocol",
    "split_sentences",
    "split_step",
    "step_duration_hint",
    "step_verb",
]

MAX_STEPS = 20_000
MAX_STEP_CHARS = 1000
MAX_PROTOCOL_BYTES = 2_000_000

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
_TITLE_LINE = re.compile(r"^\s*title\s*[:：]\s*(?P<title>.+)$", re.IGNORECASE)
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


@dataclass
class Protocol:
    """A protocol: its title and its steps in order, one action per step.

    ``lines[i]`` is the 1-based source line of step i (None where the input has no lines,
    e.g. protocols.io JSON); ``notes[i]`` the notes written after it. Equality compares the
    title and the steps, the parts that decide an alignment.
    """

    title: str
    steps: list[str] = field(default_factory=list)
    lines: list[int | None] = field(default_factory=list, compare=False)
    notes: list[list[str]] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        """Give every step a line (None) and a notes list when the caller gave none."""
        self.lines = list(self.lines) + [None] * (len(self.steps) - len(self.lines))
        self.notes = [list(n) for n in self.notes] + [[] for _ in self.steps[len(self.notes) :]]

    def __len__(self) -> int:
        """Number of steps."""
        return len(self.steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able preview: title and each step's number, text, source line and notes."""
        return {
            "title": self.title,
            "num_steps": len(self.steps),
            "steps": [
                {"number": i + 1, "text": text, "line": line, "notes": list(notes)}
                for i, (text, line, notes) in enumerate(
                    zip(self.steps, self.lines, self.notes, strict=True)
                )
            ],
        }


@dataclass
class _Step:
    """A step being built: its text pieces, first source line and notes."""

    text: str
    line: int | None
    notes: list[str] = field(default_factory=list)
    children: list[_Step] = field(default_factory=list)


def read_protocol(
    path: str | Path,
    *,
    split_verbs: bool | None = None,
    max_steps: int = MAX_STEPS,
    max_step_chars: int = MAX_STEP_CHARS,
) -> Protocol:
    """Read and parse a protocol file (text, Markdown, JSON, protocols.io); see ``parse_protocol``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ProtocolError(f"{path}: protocol file not found; check the path.") from None
    except IsADirectoryError:
        raise ProtocolError(f"{path}: is a folder; pass the protocol file inside it.") from None
    except OSError as exc:
        raise ProtocolError(f"{path}: cannot read the protocol file ({exc}).") from exc
    return parse_protocol(
        data,
        filename=str(path),
        split_verbs=split_verbs,
        max_steps=max_steps,
        max_step_chars=max_step_chars,
    )


def parse_protocol(
    text: str | bytes,
    filename: str | None = None,
    *,
    split_verbs: bool | None = None,
    max_steps: int = MAX_STEPS,
    max_step_chars: int = MAX_STEP_CHARS,
) -> Protocol:
    """Turn protocol text into a ``Protocol``.

    ``split_verbs``: None (default) splits free prose only; True also splits every list
    item / line / JSON step at coordinated verbs; False never splits.
    """
    where = filename or "protocol text"
    if isinstance(text, bytes | bytearray):
        text = _decode(bytes(text), where)
    text = text.lstrip("\ufeff")
    if "\x00" in text:
        raise ProtocolError(
            f"{where}: contains NUL characters, so it is not a text file; "
            "provide the protocol as UTF-8 text or JSON."
        )
    if not text.strip():
        raise ProtocolError(
            f"{where}: the protocol is empty; write one step per line, "
            'a numbered list, or JSON {"title": ..., "steps": [...]}.'
        )

    stripped = text.strip()
    is_json_name = bool(filename) and filename.lower().endswith(".json")
    if is_json_name or stripped[0] == "{" or (stripped[0] == "[" and _looks_like_json(stripped)):
        title, steps = _parse_json(text, where)
        prose = False
    else:
        title, steps, prose = _parse_text(text)

    if split_verbs or (split_verbs is None and prose):
        steps = [
            _Step(piece, s.line, s.notes if k == len(pieces) - 1 else [])
            for s in steps
            for pieces in [split_step(s.text)]
            for k, piece in enumerate(pieces)
        ]
    kept = _fold_empty_steps(steps)
    if not title and filename:
        title = Path(filename).stem
    _check_limits([_clean(s.text) for s in kept], where, max_steps, max_step_chars)
    return Protocol(
        title=title,
        steps=[_clean(s.text) for s in kept],
        lines=[s.line for s in kept],
        notes=[[_clean(n) for n in s.notes if _clean(n)] for s in kept],
    )


def _fold_empty_steps(steps: list[_Step]) -> list[_Step]:
    """Drop steps without text, moving their notes to the step before (or the first step)."""
    kept: list[_Step] = []
    orphan_notes: list[str] = []
    for step in steps:
        if _clean(step.text):
            if not kept:
                step.notes[:0] = orphan_notes
            kept.append(step)
        elif kept:
            kept[-1].notes.extend(step.notes)
        else:
            orphan_notes.extend(step.notes)
    return kept


def is_note(text: str) -> bool:
    """True for a note line: "Note: ...", "Caution: ...", "CRITICAL STEP ...", "注意：...", "※..."."""
    return bool(_NOTE.match(text))


def _decode(data: bytes, where: str) -> str:
    """Bytes -> text: UTF-8 (with or without BOM), UTF-16 with BOM, else Windows-1252."""
    if len(data) > MAX_PROTOCOL_BYTES:
        raise ProtocolError(
            f"{where}: {len(data)} bytes is too large for a protocol (limit "
            f"{MAX_PROTOCOL_BYTES}); pass only the protocol text, not the whole document."
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                f"{where}: starts with a UTF-16 mark but is not valid UTF-16 "
                f"({exc}); save it as UTF-8."
            ) from exc
    if b"\x00" in data:
        raise ProtocolError(
            f"{where}: contains NUL bytes, so it is binary (a PDF, Word file "
            "or image?); export the protocol as plain UTF-8 text or JSON."
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"{where}: is neither UTF-8 nor Windows-1252 text ({exc}); save the protocol as UTF-8."
        ) from exc
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f")
    if controls > max(2, len(text) // 100):
        raise ProtocolError(
            f"{where}: looks binary ({controls} control characters); "
            "export the protocol as plain UTF-8 text or JSON."
        )
    return text


def _looks_like_json(text: str) -> bool:
    """True when ``text`` parses as JSON (so "[1] Add water" stays a text list)."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _parse_json(text: str, where: str) -> tuple[str, list[_Step]]:
    """JSON ``{"title", "steps"}``, a bare list of strings, or protocols.io -> (title, steps)."""
    shape = 'expected {"title": "...", "steps": ["step 1", "step 2", ...]} or a list of strings'
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"{where}: invalid JSON ({exc}); {shape}.") from exc
    root = protocols_io_root(data)
    if root is not None:
        title, entries = read_protocols_io(root, is_note)
        if not entries:
            raise ProtocolError(f"{where}: the protocols.io protocol has no step text.")
        return title, [_Step(t, None, notes) for t, notes in entries]
    title = ""
    if isinstance(data, dict):
        if "steps" not in data:
            raise ProtocolError(
                f'{where}: JSON object has no "steps" key (keys: {sorted(data)}); {shape}.'
            )
        raw_title = data.get("title", "")
        if raw_title is not None and not isinstance(raw_title, str):
            raise ProtocolError(
                f'{where}: "title" must be a string, not {type(raw_title).__name__}; {shape}.'
            )
        title = (raw_title or "").strip()
        data = data["steps"]
    if not isinstance(data, list):
        raise ProtocolError(f'{where}: "steps" must be a list, not {type(data).__name__}; {shape}.')
    if not data:
        raise ProtocolError(f"{where}: the JSON protocol has no steps; {shape}.")
    for i, step in enumerate(data, start=1):
        if not isinstance(step, str):
            raise ProtocolError(
                f"{where}: step {i} is {type(step).__name__} {step!r}, not a string; {shape}."
            )
        if not step.strip():
            raise ProtocolError(f"{where}: step {i} is empty; remove it or write the step text.")
    return title, [
        _Step(s, line) for s, line in zip(data, _json_string_lines(text, data), strict=True)
    ]


def _json_string_lines(text: str, strings: list[str]) -> list[int | None]:
    """The source line of each JSON string, found in order (None where it is not found)."""
    lines: list[int | None] = []
    pos = 0
    for s in strings:
        found = -1
        for encoded in (json.dumps(s, ensure_ascii=False), json.dumps(s)):
            found = text.find(encoded, pos)
            if found >= 0:
                pos = found + len(encoded)
                break
        lines.append(text.count("\n", 0, found) + 1 if found >= 0 else None)
    return lines


# ---------------------------------------------------------------- text: lines and sections


@dataclass
class _Line:
    """One source line, classified: kind is item / text / note / heading."""

    number: int
    kind: str
    text: str
    indent: int = 0
    style: str = ""  # list style of an item ("dec1.", "alpha)", "bullet-", ...)
    ordinal: int | None = None  # 1 for "1." / "a)" / "i." ..., None for bullets
    level: int = 0  # Markdown heading level (1-6; 7 for plain headings)
    section: str | None = None  # heading: "procedure", "other" or None (a plain sub-heading)


def _parse_text(text: str) -> tuple[str, list[_Step], bool]:
    """Plain text / Markdown -> (title, steps, is_prose)."""
    lines = _classify(text)
    title = ""
    first = next((ln for ln in lines if ln.kind != "blank"), None)
    if first is not None and first.kind == "heading" and first.section is None and first.level <= 6:
        title = first.text
        lines.remove(first)
    elif first is not None and _TITLE_LINE.match(first.text):
        title = _TITLE_LINE.match(first.text).group("title").strip()  # type: ignore[union-attr]
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
        steps: list[_Step] = []
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


def _classify(text: str) -> list[_Line]:
    """Each source line as blank / heading / note / item / text (one-line lists expanded)."""
    out: list[_Line] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            out.append(_Line(number, "blank", ""))
            continue
        for piece in _inline_items(raw):
            out.append(_classify_line(number, piece))
    return out


def _classify_line(number: int, raw: str) -> _Line:
    """Classify one line (or one piece of a one-line list)."""
    md = _MD_HEADING.match(raw)
    if md:
        name = md.group("text").strip().strip("*_").strip()
        return _Line(number, "heading", name, level=len(md.group("hashes")), section=_section(name))
    view = raw.translate(_FULL_WIDTH)
    m = _MARKER.match(view)
    marker = _marker_style(m, view) if m else None
    body = raw[m.end() :].strip() if marker else raw.strip()
    body = _CHECKBOX.sub("", body)
    indent = len(raw) - len(raw.lstrip())
    if _section(body) is not None:
        return _Line(number, "heading", body.strip("*_:： "), level=7, section=_section(body))
    if is_note(body):
        return _Line(number, "note", _note_text(body), indent=indent)
    if marker:
        style, ordinal = marker
        return _Line(number, "item", body, indent=indent, style=style, ordinal=ordinal)
    return _Line(number, "text", body, indent=indent)


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


def _note_text(body: str) -> str:
    """A note without its decoration ("! CAUTION x" -> "CAUTION x", "**Note:** x" -> "Note: x")."""
    body = re.sub(r"^[\s>!▲■⚠△]+", "", body)
    return re.sub(r"\*\*|__", "", body).strip()


def _procedure_regions(lines: list[_Line]) -> list[list[_Line]]:
    """The runs of lines that give steps: procedure sections where the protocol names any,
    else everything outside materials / notes / references ... sections."""
    has_procedure = any(ln.kind == "heading" and ln.section == "procedure" for ln in lines)
    regions: list[list[_Line]] = [[]]
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


def _plain_votes(region: list[_Line]) -> int:
    """Unmarked lines that stand on their own (not wrapped or indented continuations)."""
    votes = 0
    prev: _Line | None = None
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


# ---------------------------------------------------------------- text: lists


@dataclass
class _Level:
    """One open level of a nested list: its style, indent, last item and last ordinal."""

    style: str
    indent: int
    node: _Step
    ordinal: int | None


def _parse_list(region: list[_Line]) -> tuple[str, list[_Step]]:
    """Numbered/bulleted lines -> (title from a line before the list, leaf steps)."""
    title = ""
    roots: list[_Step] = []
    stack: list[_Level] = []
    last: _Step | None = None  # what an unmarked line continues: the last item or note
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
                roots.append(target := _Step("", ln.number))
            target.notes.append(ln.text)
            last, last_is_note = target, True
            continue
        if ln.kind == "text":
            if last is None and not roots:
                title = title or ln.text.strip("#").strip().rstrip(":")
            elif last is None:
                roots.append(last := _Step(ln.text, ln.number))
                last_is_note = False
            elif last_is_note:
                last.notes[-1] += " " + ln.text
            elif stack and _is_own_step(last.text, ln):
                node = _Step(ln.text, ln.number)
                _attach(node, stack[:-1], roots)
                stack[-1].node = node
                last = node
            elif last is not None:
                last.text = f"{last.text} {ln.text}"
            continue
        node = _Step(ln.text, ln.number)
        _push(stack, ln, node, roots)
        last, last_is_note = node, False
    return title, _leaves(roots)


def _push(stack: list[_Level], ln: _Line, node: _Step, roots: list[_Step]) -> None:
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


def _disambiguate(ln: _Line, stack: list[_Level]) -> str:
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


def _attach(node: _Step, stack: list[_Level], roots: list[_Step]) -> None:
    """Add ``node`` under the deepest open level (or at the top)."""
    (stack[-1].node.children if stack else roots).append(node)


def _leaves(nodes: list[_Step]) -> list[_Step]:
    """The steps of a list tree: its leaves; a heading's notes go to its first step."""
    out: list[_Step] = []
    for node in nodes:
        if node.children:
            leaves = _leaves(node.children)
            if leaves and node.notes:
                leaves[0].notes[:0] = node.notes
            out.extend(leaves)
        else:
            out.append(node)
    return out


def _is_own_step(previous: str, ln: _Line) -> bool:
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


# ---------------------------------------------------------------- text: plain lines and prose


def _parse_plain(region: list[_Line], want_title: bool) -> tuple[str, list[_Step], bool]:
    """Unnumbered lines -> (title, steps, is_prose): one step per line, or prose sentences."""
    blocks: list[list[_Line]] = [[]]
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
    steps: list[_Step] = []
    pending: list[str] = notes_after.get(-1, [])
    for i, block in enumerate(blocks):
        if block:
            steps.extend(
                _prose_steps(block) if prose else [_Step(ln.text, ln.number) for ln in block]
            )
        if steps:
            steps[-1].notes.extend(pending + notes_after.get(i, []))
            pending = []
        else:
            pending.extend(notes_after.get(i, []))
    if pending:
        steps.append(_Step("", None, pending))
    return title, steps, prose


def _prose_steps(block: list[_Line]) -> list[_Step]:
    """A paragraph -> its sentences, each with the line it starts on; note sentences attach."""
    text, starts = "", []
    for ln in block:
        starts.append((len(text), ln.number))
        text += ln.text.strip() + ("" if is_cjk(ln.text[-1:]) else " ")
    steps: list[_Step] = []
    pos = 0
    for sentence in split_sentences(text):
        found = text.find(sentence.split(" ", 1)[0], pos)
        pos = max(pos, found)
        line = max((n for off, n in starts if off <= pos), default=block[0].number)
        if is_note(sentence) and steps:
            steps[-1].notes.append(_note_text(sentence))
        else:
            steps.append(_Step(sentence, line))
    return steps


def _is_prose(blocks: list[list[_Line]]) -> bool:
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


def _clean(step: str) -> str:
    """Collapse whitespace and strip a step."""
    return re.sub(r"\s+", " ", step).strip()


def _check_limits(steps: Iterable[str], where: str, max_steps: int, max_chars: int) -> None:
    """Refuse protocols with no steps, too many steps, or a runaway step."""
    steps = list(steps)
    if not steps:
        raise ProtocolError(f"{where}: no steps found; write one step per line or a numbered list.")
    if len(steps) > max_steps:
        raise ProtocolError(
            f"{where}: {len(steps)} steps is more than the limit of {max_steps}; "
            "split the recording and its protocol into parts."
        )
    for i, step in enumerate(steps, start=1):
        if len(step) > max_chars:
            raise ProtocolError(
                f"{where}: step {i} is {len(step)} characters (limit {max_chars}): "
                f"{step[:60]!r}...; put one step per line or number the steps."
            )

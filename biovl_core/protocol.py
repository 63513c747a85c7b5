"""Protocol text -> ordered list of steps, one action (verb) per step.

Accepted inputs (SPEC.md "Data formats"):

- plain text, one step per line;
- numbered ("1.", "1)", "(1)", "Step 1:") or bulleted ("-", "*", "•") lists, where an
  unmarked line continues the item above it and a line before the list is the title;
- JSON ``{"title": ..., "steps": [...]}`` or a bare JSON list of strings;
- free prose (a paragraph, or lines wrapped mid-sentence), split like BioVL's hand-made
  protocols: first into sentences, then at coordinated lab verbs, so "Invert 4 times to
  mix and add 10 µl of X." becomes "Invert 4 times to mix." and "Add 10 µl of X.".

Splitting only happens where the word after "and" / "," / "then" / ";" is an imperative
lab verb from ``LAB_VERBS``; "add primer1 and primer2" stays one step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from biovl_core.errors import ProtocolError

MAX_STEPS = 500
MAX_STEP_CHARS = 1000
MAX_PROTOCOL_BYTES = 2_000_000
OVERNIGHT_SECONDS = 16 * 3600.0

LAB_VERBS: frozenset[str] = frozenset(
    """
    add adjust agitate aliquot apply aspirate autoclave balance blot boil break bring
    calibrate cap centrifuge change check chill clean close collect combine connect cool
    cover crush cut decant dilute discard disconnect dispense dissolve distribute dry elute
    empty equilibrate evaporate extract fill filter fix flick freeze grind harvest heat
    homogenize immerse incubate insert invert keep label leave let lift load measure melt
    microwave mix move note observe open pellet pipet pipette place plate pour prepare press
    put read record rinse remove repeat replace resuspend return rotate run scrape seal
    separate set shake sonicate spin spread squeeze stain stand start stir stop store
    suspend swirl take tap thaw tilt transfer turn use vortex wait warm wash weigh wipe
    withdraw wrap
    """.split()
)

# Lab verbs that are also nouns: before one of _COMPOUND_HEADS they form a noun compound
# ("wash buffer", "spin column"), not an action.
_NOUNISH_VERBS = frozenset(
    """
    wash spin mix run set load heat dry cool stain label plate pellet filter seal cap cover
    rinse change start stop read record balance freeze extract press wrap cut spread shake
    tap turn return note store fix melt
    """.split()
)
_COMPOUND_HEADS = frozenset(
    """
    buffer buffers solution solutions column columns tube tubes step steps water ice
    mixture mix reagent reagents medium media time times speed temperature plate plates
    block rack bath station protocol program programme volume cycle cycles
    """.split()
)

_ADVERBS = frozenset(
    """
    again also briefly carefully completely gently gradually immediately quickly slowly
    thoroughly vigorously well firmly lightly then
    """.split()
)
_ABBREVIATIONS = frozenset(
    "e.g. i.e. approx. ca. cf. vs. fig. no. nos. dr. mr. mrs. ms. st. resp. incl. ref. vol. "
    "conc. temp.".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_LIST_MARKER = re.compile(
    r"""^\s*(?:
        (?:step|stage)\s*\d{1,3}[a-z]?\s*[.:)\-–—]?
      | \(\d{1,3}\) | \[\d{1,3}\]
      | \d{1,3}(?:\.\d{1,3})*[.)]
      | \d{1,3}:
      | \(?[a-zA-Z]\)
      | [-*•·‣◦▪+–—]
    )\s+""",
    re.IGNORECASE | re.VERBOSE,
)
_CHECKBOX = re.compile(r"^\[[ xX]\]\s+")
_TITLE_PREFIX = re.compile(r"^\s*(?:#{1,6}\s+|title\s*:\s*)(?P<title>.+)$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"""(?<=[.!?])["')\]]?\s+(?=["'(\[]?[A-Z0-9µ])""")
_COORDINATOR = re.compile(
    r"(?:\s*,\s*and\s+then\s+|\s*,\s*and\s+|\s*,\s*then\s+|\s+and\s+then\s+|\s+and\s+"
    r"|\s+then\s+|\s*;\s*(?:then\s+)?|\s*,\s*)",
    re.IGNORECASE,
)
_UNIT_SECONDS = {
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
}  # fmt: skip
_DURATION = re.compile(
    r"(?<![\w.])(?P<a>\d+(?:\.\d+)?)(?:\s*(?:-|–|to)\s*(?P<b>\d+(?:\.\d+)?))?\s*"
    r"(?P<unit>hours?|hrs?|h|minutes?|mins?|seconds?|secs?|s)\b(?![-/·]\s?\w)",
    re.IGNORECASE,
)


@dataclass
class Protocol:
    """A protocol: its title and its steps in order, one action per step."""

    title: str
    steps: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        """Number of steps."""
        return len(self.steps)


def read_protocol(
    path: str | Path,
    *,
    split_verbs: bool | None = None,
    max_steps: int = MAX_STEPS,
    max_step_chars: int = MAX_STEP_CHARS,
) -> Protocol:
    """Read and parse a protocol file (text, Markdown list or JSON); see ``parse_protocol``."""
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
        title, steps = _parse_json(stripped, where)
        prose = False
    else:
        title, steps, prose = _parse_text(text)

    if split_verbs or (split_verbs is None and prose):
        steps = [piece for step in steps for piece in split_step(step)]
    steps = [_clean(s) for s in steps]
    steps = [s for s in steps if s]
    if not title and filename:
        title = Path(filename).stem
    _check_limits(steps, where, max_steps, max_step_chars)
    return Protocol(title=title, steps=steps)


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences, keeping "e.g.", "1.5 ml" and similar intact."""
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return []
    pieces: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        before = text[start : m.start()].rstrip("\"')]")
        last = before.rsplit(" ", 1)[-1].lower()
        if last in _ABBREVIATIONS:
            continue
        pieces.append(text[start : m.start()].strip())
        start = m.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def split_step(sentence: str) -> list[str]:
    """Split one sentence at coordinated lab verbs, one action per piece.

    Pieces take the sentence's capitalisation and its closing punctuation, so
    "Invert 4 times to mix and add 10 µl of X." -> ["Invert 4 times to mix.", "Add 10 µl of X."].
    """
    sentence = sentence.strip()
    m_end = re.search(r"[.!?]+$", sentence)
    terminal = m_end.group(0) if m_end else ""
    body = sentence[: m_end.start()] if m_end else sentence
    cuts: list[tuple[int, int]] = []
    chunk_start = 0
    for m in _COORDINATOR.finditer(body):
        if m.start() < chunk_start or not _is_split_point(body, chunk_start, m, first=not cuts):
            continue
        cuts.append((m.start(), m.end()))
        chunk_start = m.end()
    if not cuts:
        return [sentence]
    bounds = [0] + [e for _, e in cuts]
    ends = [s for s, _ in cuts] + [len(body)]
    capital = sentence[:1].isupper()
    pieces = []
    for a, b in zip(bounds, ends, strict=True):
        piece = body[a:b].strip().rstrip(",;:")
        if capital:
            piece = piece[:1].upper() + piece[1:]
        pieces.append(piece + terminal)
    return pieces


def step_verb(step: str) -> str | None:
    """The first lab verb of a step, lower-cased ("Gently invert the tube" -> "invert")."""
    for word in _WORD.findall(step):
        w = word.lower()
        if w in LAB_VERBS:
            return w
    return None


def step_duration_hint(step: str) -> float | None:
    """Seconds of waiting/processing named in a step ("centrifuge 1 min" -> 60.0), or None.

    Ranges count as their midpoint ("2-3 min" -> 150), several amounts add up
    ("1 h 30 min" -> 5400), and "overnight" counts as 16 h.
    """
    total = 0.0
    found = False
    for m in _DURATION.finditer(step):
        unit = m.group("unit").lower()
        a = float(m.group("a"))
        b = float(m.group("b")) if m.group("b") else a
        total += (a + b) / 2.0 * _UNIT_SECONDS[unit]
        found = True
    if re.search(r"\bover\s?night\b", step, re.IGNORECASE):
        total += OVERNIGHT_SECONDS
        found = True
    return total if found else None


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


def _parse_json(text: str, where: str) -> tuple[str, list[str]]:
    """JSON ``{"title", "steps"}`` or a bare list of strings -> (title, steps)."""
    shape = 'expected {"title": "...", "steps": ["step 1", "step 2", ...]} or a list of strings'
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"{where}: invalid JSON ({exc}); {shape}.") from exc
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
    return title, list(data)


def _parse_text(text: str) -> tuple[str, list[str], bool]:
    """Plain text -> (title, steps, is_prose)."""
    lines = [line.rstrip() for line in text.splitlines()]
    title = ""
    first = next((i for i, line in enumerate(lines) if line.strip()), 0)
    m = _TITLE_PREFIX.match(lines[first])
    if m:
        title = m.group("title").strip().strip("#").strip()
        lines = lines[first + 1 :]

    if any(_LIST_MARKER.match(line) for line in lines):
        list_title, steps = _parse_list(lines)
        return title or list_title, steps, False

    blocks = _blocks(lines)
    if not title and len(blocks) > 1 and len(blocks[0]) == 1 and _looks_like_title(blocks[0][0]):
        title = blocks[0][0].strip()
        blocks = blocks[1:]
    content = [line.strip() for block in blocks for line in block]
    if not content:
        return title, [], False
    if _is_prose(blocks):
        paragraphs = [" ".join(line.strip() for line in block) for block in blocks]
        return title, [s for p in paragraphs for s in split_sentences(p)], True
    return title, content, False


def _parse_list(lines: list[str]) -> tuple[str, list[str]]:
    """Numbered/bulleted lines -> (title from the line before the list, items)."""
    title = ""
    items: list[str] = []
    started = False
    for line in lines:
        if not line.strip():
            continue
        m = _LIST_MARKER.match(line)
        if m:
            items.append(_CHECKBOX.sub("", line[m.end() :].strip()))
            started = True
        elif not started:
            title = title or line.strip().strip("#").strip().rstrip(":")
        elif _is_section_heading(line):
            continue
        else:
            items[-1] = f"{items[-1]} {line.strip()}"
    return title, items


def _blocks(lines: list[str]) -> list[list[str]]:
    """Group non-empty lines into blank-line separated blocks."""
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    return [b for b in blocks if b]


def _is_prose(blocks: list[list[str]]) -> bool:
    """True when the text reads as paragraphs rather than one step per line."""
    lines = [line.strip() for block in blocks for line in block]
    if len(lines) == 1:
        return True
    if any(len(split_sentences(line)) > 1 for line in lines):
        return True
    for block in blocks:
        for a, b in zip(block, block[1:], strict=False):
            if _wraps(a.strip(), b.strip()):
                return True
    return False


def _wraps(line: str, next_line: str) -> bool:
    """True when ``line`` is cut mid-sentence and ``next_line`` carries on with it."""
    if re.search(r"[.!?:;]$", line):
        return False
    if re.search(r"\b(?:the|a|an|of|to|and|or|with|in|into|on|at|for|by|from|then)$", line, re.I):
        return True
    words = _WORD.findall(next_line)
    return next_line[:1].islower() and not (words and words[0].lower() in LAB_VERBS)


def _looks_like_title(line: str) -> bool:
    """A short line without closing punctuation that does not start with a lab verb."""
    line = line.strip()
    words = _WORD.findall(line)
    return (
        len(line) <= 120
        and not re.search(r"[.!?;]$", line)
        and not (words and words[0].lower() in LAB_VERBS)
    )


def _is_section_heading(line: str) -> bool:
    """A short line ending with ':' inside a list ("Day 2:") — a heading, not a step."""
    line = line.strip()
    if line.startswith("#"):
        return True
    return line.endswith(":") and len(line) <= 60 and step_verb(line) is None


def _is_split_point(body: str, chunk_start: int, m: re.Match[str], first: bool) -> bool:
    """True when the coordinator ``m`` joins two actions (a lab verb follows it)."""
    rest = body[m.end() :]
    after = _WORD.findall(rest[:80])
    while after and after[0].lower() in _ADVERBS:
        rest = rest[rest.index(after[0]) + len(after[0]) :]
        after = after[1:]
    if not after or after[0].lower() not in LAB_VERBS:
        return False
    if not re.match(r"\s*" + re.escape(after[0]) + r"(?![-\w])", rest):
        return False
    if (
        after[0].lower() in _NOUNISH_VERBS
        and len(after) > 1
        and after[1].lower() in _COMPOUND_HEADS
    ):
        return False
    left = body[chunk_start : m.start()]
    left_words = [w.lower() for w in _WORD.findall(left)]
    if not any(
        w in LAB_VERBS and (i == 0 or left_words[i - 1] != "to") for i, w in enumerate(left_words)
    ):
        return False
    joiner = m.group(0).strip().lower()
    if first and joiner == "and" and len(left.split()) == 1:
        return False
    return True


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

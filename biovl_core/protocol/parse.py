"""Protocol text -> ordered list of steps, one action per step, each with its line and notes.

Accepted inputs (SPEC.md "Data formats"; docs/PROTOCOLS.md has every rule and the corpus):

- plain text, one step per line; free prose (split into sentences, then one step per verb,
  see ``prose``), in English, Japanese or Chinese;
- lists numbered at any depth (``1``, ``1.1``, ``1.1.1``, ``a)``, ``(a)``, ``i.``, ``(1)``,
  ``①``, ``Step 1:``, full-width ``１．`` / ``（１）``) or bulleted (``-``, ``*``, ``•``, ``・``);
  the leaves are the steps, an item with sub-items is a heading; a list written on one
  line (``1. Add water. 2. Add primer.``) is a list;
- sections (Markdown headings or heading lines such as "Materials:", "Procedure"): where a
  protocol names a procedure section, only procedure sections give steps; otherwise every
  section except materials, equipment, notes, safety, references and the like;
- notes ("Note:", "Caution:", "CRITICAL STEP", "Pause point", "注意：", "※" ...) belong to the
  step before them: kept in ``Protocol.notes``, never step text;
- parameter blocks (a PCR program under "Program:", a reagent table, "Timing: 2 h") and
  expected results stay with their step (``Protocol.details`` / ``Protocol.notes``);
- JSON ``{"title": ..., "steps": [...]}`` whose steps are strings or objects ``{"text",
  "notes", "details"}`` (what the upload form's step editor sends), a bare JSON list, or
  protocols.io's API JSON (v3 and v4, see ``protocols_io``).

``explain_protocol`` gives every source line's class and the reason for it (`biovl protocol
--explain`); the rules behind those reasons are in ``rules``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biovl_core.errors import ProtocolError
from biovl_core.protocol.lines import is_note, reason_text
from biovl_core.protocol.model import (
    MAX_PROTOCOL_BYTES,
    MAX_STEP_CHARS,
    MAX_STEPS,
    DraftStep,
    LineDecision,
    Protocol,
    check_limits,
    clean_step,
)
from biovl_core.protocol.prose import (
    split_step,
)
from biovl_core.protocol.protocols_io import protocols_io_root, read_protocols_io
from biovl_core.protocol.structure import parse_text


def read_protocol(
    path: str | Path,
    *,
    split_verbs: bool | None = None,
    max_steps: int = MAX_STEPS,
    max_step_chars: int = MAX_STEP_CHARS,
) -> Protocol:
    """Read and parse a protocol file (text, Markdown, JSON, protocols.io); see ``parse_protocol``."""
    path = Path(path)
    return parse_protocol(
        _file_bytes(path),
        filename=str(path),
        split_verbs=split_verbs,
        max_steps=max_steps,
        max_step_chars=max_step_chars,
    )


def explain_file(
    path: str | Path, *, split_verbs: bool | None = None
) -> tuple[Protocol, list[LineDecision]]:
    """``explain_protocol`` of a protocol file."""
    path = Path(path)
    return explain_protocol(_file_bytes(path), str(path), split_verbs=split_verbs)


def _file_bytes(path: Path) -> bytes:
    """The bytes of a protocol file, or a ProtocolError that says what is wrong with the path."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ProtocolError(f"{path}: protocol file not found; check the path.") from None
    except IsADirectoryError:
        raise ProtocolError(f"{path}: is a folder; pass the protocol file inside it.") from None
    except OSError as exc:
        raise ProtocolError(f"{path}: cannot read the protocol file ({exc}).") from exc


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
    protocol, _ = _read(text, filename, split_verbs, max_steps, max_step_chars)
    return protocol


def explain_protocol(
    text: str | bytes, filename: str | None = None, *, split_verbs: bool | None = None
) -> tuple[Protocol, list[LineDecision]]:
    """The protocol and, for each source line, how it was read (class and reason)."""
    return _read(text, filename, split_verbs, MAX_STEPS, MAX_STEP_CHARS)


def _read(
    text: str | bytes,
    filename: str | None,
    split_verbs: bool | None,
    max_steps: int,
    max_step_chars: int,
) -> tuple[Protocol, list[LineDecision]]:
    """Parse ``text``; the protocol and the decision taken on every line."""
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
        decisions = [
            LineDecision(s.line, s.text, "step", reason_text("json-step"))
            for s in steps
            if s.line is not None
        ]
    else:
        title, steps, prose, lines = parse_text(text)
        decisions = [LineDecision(ln.number, ln.raw, ln.cls, ln.reason) for ln in lines]

    if split_verbs or (split_verbs is None and prose):
        steps = [
            DraftStep(
                piece,
                s.line,
                s.notes if k == len(pieces) - 1 else [],
                s.details if k == len(pieces) - 1 else [],
            )
            for s in steps
            for pieces in [split_step(s.text)]
            for k, piece in enumerate(pieces)
        ]
    kept = _fold_empty_steps(steps)
    if not title and filename:
        title = Path(filename).stem
    check_limits([clean_step(s.text) for s in kept], where, max_steps, max_step_chars)
    protocol = Protocol(
        title=title,
        steps=[clean_step(s.text) for s in kept],
        lines=[s.line for s in kept],
        notes=[[clean_step(n) for n in s.notes if clean_step(n)] for s in kept],
        details=[[clean_step(d) for d in s.details if clean_step(d)] for s in kept],
    )
    return protocol, decisions


def _fold_empty_steps(steps: list[DraftStep]) -> list[DraftStep]:
    """Drop steps without text, moving their notes and details to the step before (or the
    first step)."""
    kept: list[DraftStep] = []
    orphan = DraftStep("", None)
    for step in steps:
        if clean_step(step.text):
            if not kept:
                step.notes[:0] = orphan.notes
                step.details[:0] = orphan.details
            kept.append(step)
        else:
            into = kept[-1] if kept else orphan
            into.notes.extend(step.notes)
            into.details.extend(step.details)
    return kept


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
    except RecursionError:
        return True  # JSON, nested too deeply: _parse_json says so
    except ValueError:
        return False
    return True


def _parse_json(text: str, where: str) -> tuple[str, list[DraftStep]]:
    """JSON ``{"title", "steps"}``, a bare list of strings, or protocols.io -> (title, steps)."""
    shape = 'expected {"title": "...", "steps": ["step 1", "step 2", ...]} or a list of strings'
    try:
        data = json.loads(text)
    except RecursionError:
        raise ProtocolError(f"{where}: the JSON is nested too deeply to read; {shape}.") from None
    except ValueError as exc:
        raise ProtocolError(f"{where}: invalid JSON ({exc}); {shape}.") from exc
    root = protocols_io_root(data)
    if root is not None:
        title, entries = read_protocols_io(root, is_note)
        if not entries:
            raise ProtocolError(f"{where}: the protocols.io protocol has no step text.")
        return title, [DraftStep(t, None, notes) for t, notes in entries]
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
    steps = [_json_step(step, i, where, shape) for i, step in enumerate(data, start=1)]
    texts = [s.text for s in steps]
    for step, line in zip(steps, _json_string_lines(text, texts), strict=True):
        step.line = line
    return title, steps


def _json_step(step: Any, i: int, where: str, shape: str) -> DraftStep:
    """One JSON step: a string, or ``{"text": ..., "notes": [...], "details": [...]}``."""
    if isinstance(step, dict):
        text = step.get("text")
        if not isinstance(text, str):
            raise ProtocolError(
                f'{where}: step {i} is an object without a "text" string (keys: {sorted(step)}); '
                'write {"text": "...", "notes": [...], "details": [...]}.'
            )
        extra = {}
        for key in ("notes", "details"):
            value = step.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ProtocolError(f'{where}: step {i}: "{key}" must be a list of strings.')
            extra[key] = list(value)
        unknown = sorted(set(step) - {"text", "notes", "details", "number", "line"})
        if unknown:
            raise ProtocolError(
                f"{where}: step {i} has unknown keys {unknown}; a step is "
                '{"text": "...", "notes": [...], "details": [...]}.'
            )
        draft = DraftStep(text, None, extra["notes"], extra["details"])
    elif isinstance(step, str):
        draft = DraftStep(step, None)
    else:
        raise ProtocolError(
            f"{where}: step {i} is {type(step).__name__} {step!r}, not a string; {shape}."
        )
    if not draft.text.strip():
        raise ProtocolError(f"{where}: step {i} is empty; remove it or write the step text.")
    return draft


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

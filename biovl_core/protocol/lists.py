"""Numbered and bulleted lines read as one nested list: the tree of items, its leaves as steps, sub-items that are details, and the notes and parameters of each step."""

from __future__ import annotations

import re
from dataclasses import dataclass

from biovl_core.protocol.lines import Line, decide
from biovl_core.protocol.model import DraftStep
from biovl_core.protocol.prose import LAB_VERBS, step_verb
from biovl_core.protocol.rules import match_block, match_line, reads_as_action


@dataclass
class _Level:
    """One open level of a nested list: its style, indent, last item and last ordinal."""

    style: str
    indent: int
    node: DraftStep
    ordinal: int | None


class _ListReader:
    """Reads one region of lines as a list; ``read`` returns (title, leaf steps)."""

    def __init__(self, want_title: bool) -> None:
        self.want_title = want_title
        self.title = ""
        self.roots: list[DraftStep] = []
        self.stack: list[_Level] = []
        self.last: DraftStep | None = None  # what an unmarked line continues
        self.last_note: DraftStep | None = None  # the step whose last note a line continues
        self.pending = DraftStep("", None)  # notes / details before the next step
        self.absorbing: DraftStep | None = None  # a step label whose paragraph is its text
        self.absorb_style = ""

    def read(self, region: list[Line]) -> tuple[str, list[DraftStep]]:
        for ln in region:
            self._line(ln)
        if self.pending.notes or self.pending.details:
            self.roots.append(self.pending)
        return self.title, _resolve(self.roots, 0)

    def _line(self, ln: Line) -> None:
        """Place one line: a heading resets the list, notes and parameters attach, items nest."""
        if ln.kind == "blank":
            decide(ln, "skip", "blank")
            if self.absorb_style == "bare":
                self.absorbing = None
            return
        if ln.kind in ("skip", "meta"):
            decide(ln, ln.kind, ln.rule or "markup")
            return
        if ln.kind == "heading" or (ln.kind in ("text", "label") and is_sub_heading(ln.text)):
            self.stack, self.last, self.absorbing, self.last_note = [], None, None, None
            decide(ln, "heading", ln.rule if ln.kind == "heading" else "sub-heading")
            return
        if ln.kind in ("note", "expected", "parameter"):
            target = self._target()
            (target.details if ln.kind == "parameter" else target.notes).append(ln.text)
            self.last_note = target if ln.kind != "parameter" else None
            decide(ln, ln.kind, ln.rule or ln.kind)
            return
        if ln.kind in ("text", "label", "row"):
            self._text(ln)
            return
        node = DraftStep(ln.text, ln.number, list(ln.notes), list(ln.details))
        node.sources.append((ln, ln.rule or "item"))
        self._take_pending(node)
        _push(self.stack, ln, node, self.roots)
        self.last, self.last_note = node, None
        self.absorbing = node if ln.absorbs else None
        self.absorb_style = ln.style if ln.absorbs else ""

    def _target(self) -> DraftStep:
        """Where a note or parameter goes: the open item, the last step, or the next step."""
        if self.stack:
            return self.stack[-1].node
        return self.last if self.last is not None else self.pending

    def _take_pending(self, node: DraftStep) -> None:
        """Give the notes and details waiting since the last heading to ``node``."""
        node.notes[:0] = self.pending.notes
        node.details[:0] = self.pending.details
        self.pending = DraftStep("", None)

    def _text(self, ln: Line) -> None:
        """An unmarked line: the paragraph of a step label, a title, a step, or a continuation."""
        if self.last_note is not None and self.last_note.notes:
            self.last_note.notes[-1] += " " + ln.text
            decide(ln, "note", "note-continuation")
            return
        if self.absorbing is not None:
            node = self.absorbing
            fresh = len(node.sources) == 1
            if fresh and node.text and not reads_as_action(node.text):
                node.text = ""  # "## Step 2: Lysis" over its paragraph: the paragraph is the step
            node.text = f"{node.text} {ln.text}".strip()
            node.sources.append((ln, "paragraph"))
            return
        last = self.last
        if last is None and not self.roots:
            if self.want_title and not self.title:
                self.title = ln.text.strip("#").strip().rstrip(":：")
                decide(ln, "title", "title-before-list")
            else:
                decide(ln, "other", "before-list")
            return
        if last is None:
            node = DraftStep(ln.text, ln.number)
            node.sources.append((ln, "line"))
            self._take_pending(node)
            self.roots.append(node)
            self.last = node
            return
        if self.stack and _is_own_step(last.text, ln):
            node = DraftStep(ln.text, ln.number)
            node.sources.append((ln, "own-step"))
            _attach(node, self.stack[:-1], self.roots)
            self.stack[-1].node = node
            self.last = node
            return
        last.text = f"{last.text} {ln.text}"
        last.sources.append((ln, "continuation"))


def read_list(region: list[Line], want_title: bool) -> tuple[str, list[DraftStep]]:
    """Numbered/bulleted lines -> (title from a line before the list, leaf steps)."""
    return _ListReader(want_title).read(region)


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


def _resolve(nodes: list[DraftStep], depth: int) -> list[DraftStep]:
    """The steps of a list tree: its leaves, except that sub-items that are not actions are
    details of their item; a heading's notes and details go to its first step."""
    out: list[DraftStep] = []
    for node in nodes:
        if not node.children:
            _mark(node, "sub-step" if depth else "step")
            out.append(node)
            continue
        if all(_detail_like(k) for k in node.children):
            for kid in node.children:
                _fold_into(node, kid)
            node.children = []
            _mark(node, "sub-step" if depth else "step")
            out.append(node)
            continue
        sentence = _SENTENCE.search(node.text) is not None and (
            reads_as_action(node.text) or len(node.text.split()) >= 6
        )
        leaves: list[DraftStep] = [node] if sentence else []
        for kid in node.children:
            if _detail_like(kid) and leaves:
                _fold_into(leaves[-1], kid)
            else:
                leaves.extend(_resolve([kid], depth + 1))
        if sentence:
            _mark(node, "sub-step" if depth else "step", first="sentence-parent")
        elif leaves:
            leaves[0].notes[:0] = node.notes
            leaves[0].details[:0] = node.details
        if not sentence:
            _mark(node, "heading", first="group")
        out.extend(leaves)
    return out


_SENTENCE = re.compile(r"[.!。！]\s*$")


def _fold_into(step: DraftStep, kid: DraftStep) -> None:
    """Make sub-item ``kid`` (and what hangs under it) details of ``step``."""
    step.details.append(kid.text)
    step.details.extend(kid.details)
    step.notes.extend(kid.notes)
    for grandchild in kid.children:
        _fold_into(step, grandchild)
    for ln, _ in kid.sources:
        decide(ln, "detail", "detail-child")


def _detail_like(node: DraftStep) -> bool:
    """A sub-item that is not an action: a parameter, or a lower-case fragment ("sub-point")."""
    if node.children or not node.text or reads_as_action(node.text):
        return False
    if node.sources and node.sources[0][0].absorbs:
        return False
    text = node.text.strip()
    if re.search(r"[.!?。！？]$", text) and (text[:1].isupper() or not text[:1].isascii()):
        return match_line(text) is not None  # a sentence: a detail only where a rule says so
    if match_block(text) is not None:
        return True
    return (text[:1].islower() or text[:1].isdigit()) and not re.search(r"[.!?。！？]$", text)


def _mark(node: DraftStep, cls: str, first: str | None = None) -> None:
    """Record the class of every source line of ``node``."""
    for i, (ln, key) in enumerate(node.sources):
        decide(ln, cls, first if first and i == 0 else key)


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


def is_sub_heading(line: str) -> bool:
    """A short line ending with ':' inside a list ("Day 2:") — a heading, not a step."""
    line = line.strip()
    return line.endswith((":", "：")) and len(line) <= 60 and step_verb(line) is None

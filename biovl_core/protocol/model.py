"""What a parsed protocol is: the `Protocol` (title, steps, lines, notes, details), steps being built, each line's decision, and the size limits."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from biovl_core.errors import ProtocolError

MAX_STEPS = 20_000


MAX_STEP_CHARS = 1000


MAX_PROTOCOL_BYTES = 2_000_000


@dataclass
class Protocol:
    """A protocol: its title and its steps in order, one action per step.

    ``lines[i]`` is the 1-based source line of step i (None where the input has no lines,
    e.g. protocols.io JSON); ``notes[i]`` the notes (and expected results) written with it;
    ``details[i]`` its parameter blocks, timings and table cells (a PCR program, a reagent
    list). Equality compares the title and the steps, the parts that decide an alignment.
    """

    title: str
    steps: list[str] = field(default_factory=list)
    lines: list[int | None] = field(default_factory=list, compare=False)
    notes: list[list[str]] = field(default_factory=list, compare=False)
    details: list[list[str]] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        """Give every step a line (None), a notes and a details list when the caller gave none."""
        self.lines = list(self.lines) + [None] * (len(self.steps) - len(self.lines))
        self.notes = [list(n) for n in self.notes] + [[] for _ in self.steps[len(self.notes) :]]
        self.details = [list(d) for d in self.details] + [
            [] for _ in self.steps[len(self.details) :]
        ]

    def __len__(self) -> int:
        """Number of steps."""
        return len(self.steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able preview: title and each step's number, text, source line, notes, details."""
        return {
            "title": self.title,
            "num_steps": len(self.steps),
            "steps": [
                {
                    "number": i + 1,
                    "text": text,
                    "line": line,
                    "notes": list(notes),
                    "details": list(details),
                }
                for i, (text, line, notes, details) in enumerate(
                    zip(self.steps, self.lines, self.notes, self.details, strict=True)
                )
            ],
        }


@dataclass(frozen=True)
class LineDecision:
    """How one source line was read: its class (step, note, parameter ...) and why."""

    number: int
    text: str
    cls: str
    reason: str


@dataclass
class DraftStep:
    """A step being built: its text, first source line, notes, details, sub-items, and the
    source lines it was built from (each with the key of the reason it joined)."""

    text: str
    line: int | None
    notes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    children: list[DraftStep] = field(default_factory=list)
    sources: list[tuple[Any, str]] = field(default_factory=list)


def clean_step(step: str) -> str:
    """Collapse whitespace and strip a step."""
    return re.sub(r"\s+", " ", step).strip()


def check_limits(steps: Iterable[str], where: str, max_steps: int, max_chars: int) -> None:
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

"""Rows of text matched to protocol steps: normalised text, similarity, and one monotonic matching.

``match_rows`` is the matcher every caller uses (annotation rows to steps, one protocol
version's steps to another's). It runs in about linear time: rows whose normalised text equals
a step's are matched first (a hash lookup, in order); only the rows left between two such
anchors go through the fuzzy pass (difflib per row x step, then ``monotonic_match``), and that
pass is capped at ``FUZZY_MAX_CELLS`` row x step pairs: beyond it ``MatchTooLarge`` is raised
instead of minutes of CPU.
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Sequence

import numpy as np

MATCH_THRESHOLD = 0.6
FUZZY_MAX_CELLS = 20_000
"""Row x step pairs the fuzzy pass may compare (each a difflib ratio of <= FUZZY_TEXT_CHARS)."""
FUZZY_TEXT_CHARS = 200


class MatchTooLarge(ValueError):
    """The rows left after exact matching are too many for the capped fuzzy pass."""


def normalise_step(text: str) -> str:
    """Lower-case, alphanumerics only, for text matching."""
    return " ".join(re.findall(r"[a-z0-9µ]+", text.lower()))


def text_similarity(a: str, b: str) -> float:
    """Fuzzy similarity of two step texts in [0, 1]."""
    na, nb = normalise_step(a), normalise_step(b)
    if not na or not nb:
        return 0.0
    return difflib.SequenceMatcher(None, na, nb).ratio()


def monotonic_match(sims: np.ndarray, threshold: float) -> dict[int, int]:
    """Order-preserving one-to-one matching of rows to columns maximising summed similarity."""
    r, c = sims.shape
    best = np.zeros((r + 1, c + 1))
    for i in range(1, r + 1):
        for j in range(1, c + 1):
            take = (
                best[i - 1, j - 1] + sims[i - 1, j - 1] if sims[i - 1, j - 1] >= threshold else -1
            )
            best[i, j] = max(best[i - 1, j], best[i, j - 1], take)
    matched: dict[int, int] = {}
    i, j = r, c
    while i > 0 and j > 0:
        if (
            sims[i - 1, j - 1] >= threshold
            and best[i, j] == best[i - 1, j - 1] + sims[i - 1, j - 1]
        ):
            matched[i - 1] = j - 1
            i, j = i - 1, j - 1
        elif best[i, j] == best[i - 1, j]:
            i -= 1
        else:
            j -= 1
    return matched


def match_rows(
    rows: Sequence[str],
    steps: Sequence[str],
    threshold: float = MATCH_THRESHOLD,
    max_cells: int = FUZZY_MAX_CELLS,
) -> dict[int, int]:
    """Order-preserving one-to-one matching of ``rows`` to ``steps`` by text: exact normalised
    text first, then the capped fuzzy pass in the gaps between exact matches."""
    norm_steps = [normalise_step(s) for s in steps]
    positions: dict[str, list[int]] = {}
    for j, text in enumerate(norm_steps):
        positions.setdefault(text, []).append(j)
    matched: dict[int, int] = {}
    last = -1
    norm_rows = [normalise_step(r) for r in rows]
    for i, text in enumerate(norm_rows):
        where = positions.get(text) if text else None
        if not where:
            continue
        k = bisect.bisect_right(where, last)
        if k < len(where):
            matched[i] = last = where[k]
    anchors = sorted(matched.items())
    gaps: list[tuple[list[int], list[int]]] = []
    prev_row, prev_step = -1, -1
    for row, step in [*anchors, (len(rows), len(steps))]:
        gap_rows = list(range(prev_row + 1, row))
        gap_steps = list(range(prev_step + 1, step))
        if gap_rows and gap_steps:
            gaps.append((gap_rows, gap_steps))
        prev_row, prev_step = row, step
    cells = sum(len(r) * len(c) for r, c in gaps)
    if cells > max_cells:
        left = sum(len(r) for r, _ in gaps)
        raise MatchTooLarge(
            f"{left} rows match no step text exactly, and comparing them with the steps left "
            f"takes {cells} text comparisons (the limit is {max_cells})"
        )
    for gap_rows, gap_steps in gaps:
        sims = np.array(
            [[_fuzzy(norm_rows[i], norm_steps[j]) for j in gap_steps] for i in gap_rows],
            dtype=np.float64,
        )
        for a, b in monotonic_match(sims, threshold).items():
            matched[gap_rows[a]] = gap_steps[b]
    return matched


def _fuzzy(a: str, b: str) -> float:
    """difflib ratio of two normalised texts, each cut to FUZZY_TEXT_CHARS."""
    if not a or not b:
        return 0.0
    a, b = a[:FUZZY_TEXT_CHARS], b[:FUZZY_TEXT_CHARS]
    return difflib.SequenceMatcher(None, a, b).ratio()

"""Rows of text matched to protocol steps: normalised text, similarity, and one monotonic matching."""

from __future__ import annotations

import difflib
import re

import numpy as np

MATCH_THRESHOLD = 0.6


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

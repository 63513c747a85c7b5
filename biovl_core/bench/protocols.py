"""Protocol parser accuracy on a corpus: step precision / recall / exact match per protocol.

A corpus folder holds ``NAME.<txt|md|json>`` and ``NAME.expected.json`` (``{"steps": [...],
"notes": {"<step number>": [...]}, "title": ...}``, written by hand). ``--baseline FILE``
scores another ``protocol.py`` (e.g. ``git show main:biovl_core/protocol.py > old.py``) on
the same corpus, side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biovl_core.protocol import read_protocol

DEFAULT_CORPUS = Path("tests/protocol_corpus")
Reader = Callable[[Path], Any]  # path -> an object with .steps (and maybe .notes, .title)


@dataclass
class CaseScore:
    """One protocol's score: matched, predicted and expected step counts, exactness."""

    name: str
    matched: int
    predicted: int
    expected: int
    steps_exact: bool
    notes_exact: bool
    error: str = ""


def corpus_cases(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(protocol file, expected) for every case in the corpus folder, sorted by name."""
    cases = []
    for expected in sorted(folder.glob("*.expected.json")):
        stem = expected.name.removesuffix(".expected.json")
        sources = [p for p in folder.glob(f"{stem}.*") if p != expected]
        if len(sources) != 1:
            raise ValueError(f"{expected}: expected exactly one {stem}.<ext> beside it")
        cases.append((sources[0], json.loads(expected.read_text(encoding="utf-8"))))
    return cases


def expected_notes(expected: dict[str, Any]) -> list[list[str]]:
    """The expected notes per step (``notes`` maps 1-based step numbers to lists)."""
    notes = expected.get("notes", {})
    return [list(notes.get(str(i + 1), [])) for i in range(len(expected["steps"]))]


def score_case(path: Path, expected: dict[str, Any], reader: Reader) -> CaseScore:
    """Score one protocol: step texts matched as a multiset, plus exact steps and notes."""
    want = list(expected["steps"])
    try:
        got = reader(path)
    except Exception as exc:  # a parser that fails on a case scores zero on it
        return CaseScore(path.stem, 0, 0, len(want), False, False, str(exc)[:80])
    steps = list(got.steps)
    matched = sum((Counter(steps) & Counter(want)).values())
    notes = getattr(got, "notes", None)
    want_notes = expected_notes(expected)
    notes_exact = (notes or [[] for _ in steps]) == want_notes if steps == want else False
    return CaseScore(path.stem, matched, len(steps), len(want), steps == want, notes_exact)


def summary(scores: Sequence[CaseScore]) -> dict[str, float]:
    """Micro-averaged step precision and recall, and the share of exact protocols, in %."""
    matched = sum(s.matched for s in scores)
    predicted = sum(s.predicted for s in scores)
    expected = sum(s.expected for s in scores)
    n = max(1, len(scores))
    return {
        "protocols": float(len(scores)),
        "precision": 100.0 * matched / max(1, predicted),
        "recall": 100.0 * matched / max(1, expected),
        "exact_steps": 100.0 * sum(s.steps_exact for s in scores) / n,
        "exact_steps_and_notes": 100.0 * sum(s.notes_exact for s in scores) / n,
    }


def _module_reader(path: Path) -> Reader:
    """``read_protocol`` of another protocol.py file (a baseline parser)."""
    spec = importlib.util.spec_from_file_location("baseline_protocol", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: cannot load it as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.read_protocol


def main(argv: Sequence[str] | None = None) -> int:
    """Print per-protocol mismatches and the summary table (ours, and a baseline if given)."""
    parser = argparse.ArgumentParser(prog="python -m biovl_core.bench protocols")
    parser.add_argument("corpus", type=Path, nargs="?", default=DEFAULT_CORPUS)
    parser.add_argument("--baseline", type=Path, help="another protocol.py to score beside ours")
    args = parser.parse_args(argv)
    cases = corpus_cases(args.corpus)
    readers: dict[str, Reader] = {"this parser": read_protocol}
    if args.baseline:
        readers["baseline"] = _module_reader(args.baseline)
    print(f"{len(cases)} protocols in {args.corpus}")
    print(f"{'parser':<12} {'precision':>9} {'recall':>7} {'exact':>7} {'exact+notes':>12}")
    for label, reader in readers.items():
        scores = [score_case(path, exp, reader) for path, exp in cases]
        s = summary(scores)
        print(
            f"{label:<12} {s['precision']:8.1f}% {s['recall']:6.1f}% {s['exact_steps']:6.1f}% "
            f"{s['exact_steps_and_notes']:11.1f}%"
        )
        for bad in (x for x in scores if not x.notes_exact):
            why = bad.error or f"{bad.matched}/{bad.expected} steps matched, {bad.predicted} found"
            print(f"    {label}: {bad.name}: {why}")
    return 0

"""Protocol parser accuracy on corpora: step F1 and exact matches per style, this parser beside a baseline from a git revision.

A corpus folder holds ``NAME.<txt|md|json>`` and ``NAME.expected.json`` (``{"steps": [...],
"notes": {"<step number>": [...]}, "title": ...}``, written by hand); a folder of such folders
is a corpus with one style per sub-folder (``tests/protocol_dev/dev/<style>/``). By default the
bench scores the core corpus (``tests/protocol_corpus``), the development corpus and its
held-out part. ``--baseline-rev REV`` extracts ``biovl_core/`` at that git revision into a temp
folder and scores its ``read_protocol`` on the same files, in a child process (the old parser
may be a single module or a package; its imports stay its own).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biovl_core.protocol import read_protocol

DEFAULT_CORPORA = (
    ("core", Path("tests/protocol_corpus")),
    ("dev", Path("tests/protocol_dev/dev")),
    ("held-out", Path("tests/protocol_dev/heldout")),
)
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

    @property
    def f1(self) -> float:
        """Step F1: harmonic mean of precision and recall of the step texts."""
        if not self.matched:
            return 0.0
        precision, recall = self.matched / self.predicted, self.matched / self.expected
        return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Case:
    """A corpus file, what a biologist expects of it, its style and the corpus it is in."""

    path: Path
    expected: dict[str, Any]
    style: str
    split: str


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


def styled_cases(split: str, folder: Path) -> list[Case]:
    """The cases of a corpus: a flat folder is one style ("core"), else one style per sub-folder."""
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no such corpus folder")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    if not subfolders:
        return [Case(p, e, split, split) for p, e in corpus_cases(folder)]
    return [Case(p, e, sub.name, split) for sub in subfolders for p, e in corpus_cases(sub)]


def expected_notes(expected: dict[str, Any]) -> list[list[str]]:
    """The expected notes per step (``notes`` maps 1-based step numbers to lists)."""
    notes = expected.get("notes", {})
    return [list(notes.get(str(i + 1), [])) for i in range(len(expected["steps"]))]


def score_case(path: Path, expected: dict[str, Any], reader: Reader) -> CaseScore:
    """Score one protocol: step texts matched as a multiset, plus exact steps and notes."""
    try:
        got = reader(path)
    except Exception as exc:  # a parser that fails on a case scores zero on it
        return _score(path.stem, expected, None, str(exc)[:80])
    return _score(path.stem, expected, {"steps": list(got.steps), "notes": got.notes}, "")


def _score(
    name: str, expected: dict[str, Any], got: dict[str, Any] | None, error: str
) -> CaseScore:
    """Score parsed steps and notes (None when the parser failed) against what is expected."""
    want = list(expected["steps"])
    if got is None:
        return CaseScore(name, 0, 0, len(want), False, False, error)
    steps = list(got["steps"])
    matched = sum((Counter(steps) & Counter(want)).values())
    notes = got.get("notes")
    notes_exact = (
        (notes or [[] for _ in steps]) == expected_notes(expected) if steps == want else False
    )
    return CaseScore(name, matched, len(steps), len(want), steps == want, notes_exact)


def summary(scores: Sequence[CaseScore]) -> dict[str, float]:
    """Micro-averaged step precision and recall, mean step F1, and the share of exact protocols."""
    matched = sum(s.matched for s in scores)
    predicted = sum(s.predicted for s in scores)
    expected = sum(s.expected for s in scores)
    n = max(1, len(scores))
    return {
        "protocols": float(len(scores)),
        "precision": 100.0 * matched / max(1, predicted),
        "recall": 100.0 * matched / max(1, expected),
        "f1": sum(s.f1 for s in scores) / n,
        "exact_steps": 100.0 * sum(s.steps_exact for s in scores) / n,
        "exact_steps_and_notes": 100.0 * sum(s.notes_exact for s in scores) / n,
    }


_CHILD = """
import json, sys
from biovl_core.protocol import read_protocol
out = []
for path in json.load(sys.stdin):
    try:
        p = read_protocol(path)
        out.append({"steps": list(p.steps), "notes": getattr(p, "notes", None)})
    except Exception as exc:
        out.append({"error": str(exc)[:80]})
json.dump(out, sys.stdout)
"""


def baseline_scores(rev: str, cases: Sequence[Case], repo: Path | None = None) -> list[CaseScore]:
    """Score the parser of git revision ``rev`` on ``cases`` (its biovl_core/, in a child process)."""
    repo = repo or Path.cwd()
    with tempfile.TemporaryDirectory(prefix="biovl-baseline-") as tmp:
        archive = Path(tmp) / "src.tar"
        try:
            with open(archive, "wb") as fh:
                subprocess.run(
                    ["git", "-C", str(repo), "archive", "--format=tar", rev, "biovl_core"],
                    stdout=fh,
                    stderr=subprocess.PIPE,
                    check=True,
                )
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", b"") or str(exc).encode()
            raise SystemExit(
                f"--baseline-rev {rev}: cannot extract biovl_core/ from git "
                f"({detail.decode(errors='replace').strip()}); run from the repository root"
            ) from None
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        env = dict(os.environ, PYTHONPATH=tmp)
        done = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps([str(c.path.resolve()) for c in cases]),
            capture_output=True,
            text=True,
            cwd=tmp,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"--baseline-rev {rev}: the old parser failed: {done.stderr[-400:]}")
    results = json.loads(done.stdout)
    return [
        _score(c.path.stem, c.expected, None if "error" in r else r, r.get("error", ""))
        for c, r in zip(cases, results, strict=True)
    ]


def style_table(cases: Sequence[Case], columns: dict[str, Sequence[CaseScore]]) -> list[str]:
    """A Markdown table: one row per (corpus, style) and the totals, F1 and exact per parser."""
    head = "| corpus | style | protocols |" + "".join(
        f" {label} F1 | {label} exact |" for label in columns
    )
    rows = [head, "|---|---|---:|" + "---:|---:|" * len(columns)]
    groups: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(cases):
        groups.setdefault((c.split, c.style), []).append(i)
    splits = list(dict.fromkeys(c.split for c in cases))
    for split in splits:
        keys = [k for k in groups if k[0] == split]
        for key in [*keys, (split, "all")]:
            idx = groups.get(key) or [i for k in keys for i in groups[k]]
            name = f"**{split} (all)**" if key[1] == "all" else key[1]
            cells = ""
            for scores in columns.values():
                s = summary([scores[i] for i in idx])
                exact = sum(scores[i].steps_exact for i in idx)
                cells += f" {s['f1']:.3f} | {exact}/{len(idx)} |"
            rows.append(f"| {split} | {name} | {len(idx)} |{cells}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Print the per-style table (this parser, and a baseline revision if given) and the misses."""
    parser = argparse.ArgumentParser(prog="python -m biovl_core.bench protocols")
    parser.add_argument(
        "corpus",
        type=Path,
        nargs="*",
        help="corpus folders (default: the core, development and held-out corpora)",
    )
    parser.add_argument(
        "--baseline-rev",
        metavar="REV",
        help="a git revision whose parser is scored beside this one (e.g. 4f818d7)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="accepted for `bench all --quick` (the corpora are small)",
    )
    args = parser.parse_args(argv)
    corpora = [(p.name, p) for p in args.corpus] or list(DEFAULT_CORPORA)
    cases = [c for split, folder in corpora for c in styled_cases(split, folder)]
    columns: dict[str, Sequence[CaseScore]] = {
        "new": [score_case(c.path, c.expected, read_protocol) for c in cases]
    }
    if args.baseline_rev:
        columns[f"old ({args.baseline_rev})"] = baseline_scores(args.baseline_rev, cases)
    print("\n".join(style_table(cases, columns)))
    for label, scores in columns.items():
        misses = [(c, s) for c, s in zip(cases, scores, strict=True) if not s.notes_exact]
        print(
            f"\n{label}: {len(misses)} of {len(cases)} protocols not exactly right (steps + notes)"
        )
        for c, s in misses:
            why = s.error or f"{s.matched}/{s.expected} steps matched, {s.predicted} found"
            print(f"    {c.split}/{c.style}/{c.path.name}: F1 {s.f1:.2f}; {why}")
    return 0

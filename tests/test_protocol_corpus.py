"""The protocol corpus: every style labs write, each with the steps a biologist expects."""

from __future__ import annotations

from pathlib import Path

import pytest

from biovl_core.bench.protocols import corpus_cases, expected_notes, score_case, summary
from biovl_core.protocol import parse_protocol, read_protocol

CORPUS = Path(__file__).parent / "protocol_corpus"
CASES = corpus_cases(CORPUS)
# Known misses, reported in docs/PROTOCOLS.md; strict, so a fix shows up as a pass to record.
KNOWN_MISSES = {
    "japanese_prose_verbs": "janome reads 風乾し as the verb 乾す, so the piece reads 風乾す。",
}


def test_corpus_is_large_and_varied() -> None:
    assert len(CASES) >= 40
    assert {p.suffix for p, _ in CASES} == {".txt", ".md", ".json"}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param(
            p,
            e,
            id=p.stem,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[p.stem])]
            if p.stem in KNOWN_MISSES
            else [],
        )
        for p, e in CASES
    ],
)
def test_corpus_case(path: Path, expected: dict) -> None:
    protocol = read_protocol(path)
    assert protocol.steps == expected["steps"]
    assert protocol.notes == expected_notes(expected)
    if "title" in expected:
        assert protocol.title == expected["title"]


def test_corpus_summary_counts_every_step() -> None:
    scores = [score_case(p, e, read_protocol) for p, e in CASES]
    s = summary(scores)
    assert s["protocols"] == len(CASES)
    assert s["exact_steps"] == pytest.approx(100.0 * (len(CASES) - len(KNOWN_MISSES)) / len(CASES))
    assert 0.0 < s["precision"] <= 100.0 and 0.0 < s["recall"] <= 100.0


def test_steps_keep_their_source_lines() -> None:
    protocol = read_protocol(CORPUS / "nested_three_levels.txt")
    assert protocol.lines == [3, 4, 6, 8, 9, 10, 11]
    protocol = read_protocol(CORPUS / "prose_wrapped.txt")
    assert protocol.lines == [1, 1, 2, 2]
    protocol = read_protocol(CORPUS / "json_object.json")
    assert protocol.lines == [4, 5, 6, 7, 8, 9]
    assert read_protocol(CORPUS / "protocols_io_v3.json").lines == [None, None, None]


def test_five_thousand_items_are_five_thousand_steps() -> None:
    text = "\n".join(f"{i}. Add {i} µl of water." for i in range(1, 5001))
    protocol = parse_protocol(text)
    assert len(protocol) == 5000
    assert protocol.steps[-1] == "Add 5000 µl of water."
    assert protocol.lines[-1] == 5000


def test_notes_are_exported_in_to_dict() -> None:
    d = read_protocol(CORPUS / "notes_after_steps.txt").to_dict()
    assert d["num_steps"] == 4
    assert d["steps"][0] == {
        "number": 1,
        "text": "Thaw the competent cells on ice.",
        "line": 1,
        "notes": ["Note: do not vortex the cells."],
        "details": [],
    }

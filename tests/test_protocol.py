"""Protocol parsing: every accepted input form, verb splitting, hints, and user errors."""

from __future__ import annotations

import json

import pytest

from biovl_core.errors import ProtocolError
from biovl_core.protocol import (
    Protocol,
    parse_protocol,
    read_protocol,
    split_sentences,
    split_step,
    step_duration_hint,
    step_verb,
)

PCR_STEPS = [
    "add sterile distilled water",
    "add primer1",
    "add primer2",
    "add template",
    "add primeSTAR",
    "set in DNA engine",
]


def test_paper_example_prose_is_split_per_verb() -> None:
    p = parse_protocol("Invert 4 times to mix and add 10 µl of Alkaline Protease Solution.")
    assert p.steps == ["Invert 4 times to mix.", "Add 10 µl of Alkaline Protease Solution."]


def test_one_step_per_line_with_title_block() -> None:
    p = parse_protocol("PCR\n\n" + "\n".join(PCR_STEPS) + "\n")
    assert p == Protocol(title="PCR", steps=PCR_STEPS)


def test_lines_are_not_split_unless_asked() -> None:
    text = "Invert 4 times to mix and add 10 µl of X.\nIncubate 5 min at 37 °C.\n"
    assert parse_protocol(text).steps == [
        "Invert 4 times to mix and add 10 µl of X.",
        "Incubate 5 min at 37 °C.",
    ]
    assert parse_protocol(text, split_verbs=True).steps == [
        "Invert 4 times to mix.",
        "Add 10 µl of X.",
        "Incubate 5 min at 37 °C.",
    ]


@pytest.mark.parametrize(
    "marker",
    ["1. ", "1) ", "(1) ", "Step 1: ", "- ", "* ", "• ", "[1] "],
)
def test_list_markers(marker: str) -> None:
    text = "\n".join(f"{marker.replace('1', str(i + 1))}{s}" for i, s in enumerate(PCR_STEPS))
    assert parse_protocol(text).steps == PCR_STEPS


def test_markdown_list_with_title_and_wrapped_item() -> None:
    text = (
        "# Miniprep\n\n1. Resuspend the pellet in 250 µl P1 and\n   transfer to a tube.\n"
        "2) Add 250 µl P2.\n## Day 2\nStep 3: Invert 4 times.\n"
    )
    p = parse_protocol(text)
    assert p.title == "Miniprep"
    assert p.steps == [
        "Resuspend the pellet in 250 µl P1 and transfer to a tube.",
        "Add 250 µl P2.",
        "Invert 4 times.",
    ]


def test_quantities_are_not_list_markers() -> None:
    text = "1.5 ml of water into the tube\n10 µl of primer into the tube\n"
    assert parse_protocol(text).steps == [
        "1.5 ml of water into the tube",
        "10 µl of primer into the tube",
    ]


def test_json_object_and_bare_list() -> None:
    p = parse_protocol(json.dumps({"title": "PCR", "steps": PCR_STEPS}))
    assert p == Protocol("PCR", PCR_STEPS)
    assert parse_protocol(json.dumps(PCR_STEPS)).steps == PCR_STEPS


def test_prose_sentences_and_coordinated_verbs() -> None:
    text = (
        "Add 10 µl of water, mix, and incubate at 37 °C for 5 min. Centrifuge 1 min at "
        "13,000 rpm, then discard the supernatant. Use e.g. Tris buffer and add primer1 and "
        "primer2."
    )
    assert parse_protocol(text).steps == [
        "Add 10 µl of water.",
        "Mix.",
        "Incubate at 37 °C for 5 min.",
        "Centrifuge 1 min at 13,000 rpm.",
        "Discard the supernatant.",
        "Use e.g. Tris buffer.",
        "Add primer1 and primer2.",
    ]


def test_wrapped_prose_paragraph() -> None:
    text = (
        "Add 100 µl of buffer to the tube and then gently mix the\n"
        "solution by pipetting up and down. Incubate for 5 min.\n"
    )
    assert parse_protocol(text).steps == [
        "Add 100 µl of buffer to the tube.",
        "Gently mix the solution by pipetting up and down.",
        "Incubate for 5 min.",
    ]


@pytest.mark.parametrize(
    "sentence",
    [
        "add primer1 and primer2",
        "Add lysis buffer and wash buffer.",
        "Load and run the gel.",
        "Mix by pipetting up and down.",
        "Add buffer and heat-inactivated serum.",
        "To elute DNA, add 50 µl Buffer EB.",
    ],
)
def test_no_split_where_and_joins_nouns(sentence: str) -> None:
    assert split_step(sentence) == [sentence]


def test_split_keeps_case_and_punctuation_of_source() -> None:
    assert split_step("invert to mix and add water") == ["invert to mix", "add water"]
    assert split_step("Heat to 65 °C and cool on ice!") == ["Heat to 65 °C!", "Cool on ice!"]
    assert split_step("At 37 °C, incubate for 1 h and then vortex briefly.") == [
        "At 37 °C, incubate for 1 h.",
        "Vortex briefly.",
    ]


def test_sentences_keep_abbreviations_and_decimals() -> None:
    assert split_sentences("Use e.g. Tris. Add 1.5 ml. Incubate 5 min. Spin.") == [
        "Use e.g. Tris.",
        "Add 1.5 ml.",
        "Incubate 5 min.",
        "Spin.",
    ]


@pytest.mark.parametrize(
    ("step", "seconds"),
    [
        ("incubate for 5 min", 300.0),
        ("centrifuge 1 min at 13,000 rpm", 60.0),
        ("vortex 30 s", 30.0),
        ("incubate 1 h at 37 °C", 3600.0),
        ("incubate 2-3 min", 150.0),
        ("incubate 1 h 30 min", 5400.0),
        ("incubate overnight at 37 °C", 16 * 3600.0),
        ("add 3 M sodium acetate", None),
        ("add 1.5 ml of buffer", None),
        ("spin at 13,000 x g", None),
    ],
)
def test_duration_hint(step: str, seconds: float | None) -> None:
    assert step_duration_hint(step) == seconds


def test_step_verb() -> None:
    assert step_verb("Gently invert the tube") == "invert"
    assert step_verb("set in DNA engine") == "set"
    assert step_verb("10 µl of water") is None


def test_bytes_utf8_bom_and_cp1252_fallback() -> None:
    assert parse_protocol("\ufeffAdd 10 µl water.".encode()).steps == ["Add 10 µl water."]
    assert parse_protocol("Add 10 µl water.".encode("cp1252")).steps == ["Add 10 µl water."]
    assert parse_protocol("Add 10 µl water.\nMix.".encode("utf-16")).steps == [
        "Add 10 µl water.",
        "Mix.",
    ]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ("", "empty"),
        ("   \n\n", "empty"),
        (b"%PDF-1.4\x00\x01\x02binary", "binary"),
        ('{"title": "x"}', '"steps"'),
        ('{"steps": "add water"}', "must be a list"),
        ('{"steps": ["add water", 3]}', "step 2"),
        ('{"steps": []}', "no steps"),
        ('{"steps": [', "invalid JSON"),
    ],
)
def test_user_errors_name_the_file(data: str | bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match="protocol.txt") as info:
        parse_protocol(data, filename="protocol.txt")
    assert needle in str(info.value)


def test_limits() -> None:
    with pytest.raises(ProtocolError, match="limit of 3"):
        parse_protocol("add water\nmix\nspin\nvortex", max_steps=3)
    with pytest.raises(ProtocolError, match="step 2 is 1201 characters"):
        parse_protocol("Add water.\n" + "X" * 1201)


def test_read_protocol_file_and_title_from_name(tmp_path) -> None:
    path = tmp_path / "pcr_01.txt"
    path.write_text("\n".join(PCR_STEPS), encoding="utf-8")
    assert read_protocol(path) == Protocol("pcr_01", PCR_STEPS)
    with pytest.raises(ProtocolError, match="not found"):
        read_protocol(tmp_path / "missing.txt")

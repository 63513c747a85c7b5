"""The document read as a whole: the eight failures of issue 21, the styles public protocols
use (bracketed steps, Day 1 / Day 2, equipment lists, YAML front matter, nested details), and
every line's class and reason (`biovl protocol --explain`)."""

from __future__ import annotations

import json

import pytest

from biovl_core.errors import ProtocolError
from biovl_core.protocol import CLASSES, explain_protocol, parse_protocol

JAPANESE_FULL_WIDTH = """エタノール沈殿
１．サンプルに1/10量の3 M酢酸ナトリウムを加える。
２．2.5倍量の冷エタノールを加える。
３．10回転倒混和する。
４．4 ℃、15,000 rpmで15分間遠心する。
５．上清を捨てる。※ペレットを吸わないように注意する。
６．70%エタノールを500 µL加える。
７．5分間遠心し、上清を捨てる。
"""

PCR_PROGRAM = """PCR
1. Add 10 µl of 2x PrimeSTAR Max Premix to a PCR tube.
2. Add 1 µl of each primer.
3. Add 1 µl of template DNA.
4. Add water to 20 µl.
5. Run the program below.
Program:
95 °C 3 min
30 cycles: 98 °C 10 s, 55 °C 15 s, 72 °C 30 s
4 °C hold
"""

STEP_HEADINGS = """## Step 1
Add 200 µl of lysis buffer to the sample.

## Step 2
Incubate at 56 °C for 10 min.

## Step 3
Add 200 µl of ethanol and mix by vortexing.
"""

EXPECTED_RESULT = """## Step 1
Add 200 µl of lysis buffer to the sample.

## Step 2
Incubate at 56 °C for 10 min.

Expected result: the solution becomes viscous.

## Step 3
Add 200 µl of ethanol.
"""

WORD_TABLE = (
    "Step\tAction\tTime\n"
    "1\tAdd 100 µl of sample to the tube.\t\n"
    "2\tHeat the samples at 95 °C.\t5 min\n"
    "3\tCool on ice.\t2 min\n"
    "4\tSpin down briefly.\t\n"
)

TITLE_ABOVE_LIST = """Miniprep
- Resuspend the pellet in 250 µl of P1.
Add 250 µl of P2 and invert 4 times.
Add 350 µl of N3.
"""

JAPANESE_TITLE = """プラスミドの抽出
菌液1.5 mLを遠心する。上清を捨てる。
溶液Iを100 µL加える。
"""

SAFETY_AFTER_BLANK = """1. Add 500 µl of phenol:chloroform.
2. Vortex for 30 s.
3. Centrifuge for 5 min.

Safety: work in a fume hood.
"""


def _parsed(text: str) -> tuple[str, list[str], list[list[str]], list[list[str]]]:
    p = parse_protocol(text)
    return p.title, p.steps, p.notes, p.details


def test_full_width_numbered_japanese_keeps_every_step_and_its_note() -> None:
    title, steps, notes, _ = _parsed(JAPANESE_FULL_WIDTH)
    assert title == "エタノール沈殿"
    assert steps == [
        "サンプルに1/10量の3 M酢酸ナトリウムを加える。",
        "2.5倍量の冷エタノールを加える。",
        "10回転倒混和する。",
        "4 ℃、15,000 rpmで15分間遠心する。",
        "上清を捨てる。",
        "70%エタノールを500 µL加える。",
        "5分間遠心し、上清を捨てる。",
    ]
    assert notes[4] == ["※ペレットを吸わないように注意する。"]
    assert sum(map(len, notes)) == 1


def test_pcr_program_is_the_parameter_of_its_step() -> None:
    title, steps, _, details = _parsed(PCR_PROGRAM)
    assert title == "PCR"
    assert len(steps) == 5 and steps[-1] == "Run the program below."
    assert details[-1] == [
        "Program:",
        "95 °C 3 min",
        "30 cycles: 98 °C 10 s, 55 °C 15 s, 72 °C 30 s",
        "4 °C hold",
    ]
    assert details[:-1] == [[], [], [], []]


def test_step_headings_each_with_its_paragraph() -> None:
    title, steps, _, _ = _parsed(STEP_HEADINGS)
    assert title == ""  # "Step 1" is a step, not the title
    assert steps == [
        "Add 200 µl of lysis buffer to the sample.",
        "Incubate at 56 °C for 10 min.",
        "Add 200 µl of ethanol and mix by vortexing.",
    ]
    protocol = parse_protocol(STEP_HEADINGS)
    assert protocol.lines == [1, 4, 7]


def test_expected_result_is_not_a_step() -> None:
    _, steps, notes, _ = _parsed(EXPECTED_RESULT)
    assert steps == [
        "Add 200 µl of lysis buffer to the sample.",
        "Incubate at 56 °C for 10 min.",
        "Add 200 µl of ethanol.",
    ]
    assert notes == [[], ["Expected result: the solution becomes viscous."], []]


def test_word_table_action_column_is_the_step_and_time_a_detail() -> None:
    _, steps, _, details = _parsed(WORD_TABLE)
    assert steps == [
        "Add 100 µl of sample to the tube.",
        "Heat the samples at 95 °C.",
        "Cool on ice.",
        "Spin down briefly.",
    ]
    assert details == [[], ["Time: 5 min"], ["Time: 2 min"], []]


def test_title_line_without_marker_above_a_list() -> None:
    title, steps, _, _ = _parsed(TITLE_ABOVE_LIST)
    assert title == "Miniprep"
    assert steps == [
        "Resuspend the pellet in 250 µl of P1.",
        "Add 250 µl of P2 and invert 4 times.",
        "Add 350 µl of N3.",
    ]


def test_japanese_title_without_full_stop() -> None:
    title, steps, _, _ = _parsed(JAPANESE_TITLE)
    assert title == "プラスミドの抽出"
    assert steps == ["菌液1.5 mLを遠心する。", "上清を捨てる。", "溶液Iを100 µL加える。"]


def test_safety_line_after_a_blank_line_is_a_note() -> None:
    _, steps, notes, _ = _parsed(SAFETY_AFTER_BLANK)
    assert steps == [
        "Add 500 µl of phenol:chloroform.",
        "Vortex for 30 s.",
        "Centrifuge for 5 min.",
    ]
    assert notes == [[], [], ["Safety: work in a fume hood."]]


def test_bracketed_steps() -> None:
    text = "1. [pipette 1 ml of buffer into the tube]\n2. [spin down briefly]\n"
    assert parse_protocol(text).steps == [
        "pipette 1 ml of buffer into the tube",
        "spin down briefly",
    ]
    text = "[01] Retrieve the plate from the incubator.\n[02] Aspirate the medium.\n"
    assert parse_protocol(text).steps == [
        "Retrieve the plate from the incubator.",
        "Aspirate the medium.",
    ]


def test_day_sections_and_equipment_with_nested_durations() -> None:
    text = """Transformation

Equipment
- Water bath at 42 °C
  + Duration needed: 1 min
- Shaking incubator
  + Duration needed: 1 h

Day 1
1. Thaw the competent cells on ice.
2. Add 1 µl of plasmid.
3. Heat shock for 45 s.

Day 2
4. Pick a single colony.
5. Inoculate 5 ml of LB.
"""
    p, decisions = explain_protocol(text)
    assert p.title == "Transformation"
    assert p.steps == [
        "Thaw the competent cells on ice.",
        "Add 1 µl of plasmid.",
        "Heat shock for 45 s.",
        "Pick a single colony.",
        "Inoculate 5 ml of LB.",
    ]
    by_line = {d.number: d for d in decisions}
    assert by_line[4].cls == "material" and by_line[5].cls == "material"
    assert by_line[9].cls == "heading" and by_line[14].cls == "heading"


def test_yaml_front_matter_gives_the_title_and_no_steps() -> None:
    text = "---\ntitle: Gel staining\nauthor: A. Lab\ndate: 2024-05-01\n---\n\n1. Stain for 30 min.\n2. Rinse twice with water.\n"
    p, decisions = explain_protocol(text)
    assert p.title == "Gel staining"
    assert p.steps == ["Stain for 30 min.", "Rinse twice with water."]
    assert [d.cls for d in decisions[:5]] == ["meta", "title", "meta", "meta", "meta"]


def test_nested_bullets_are_details_or_sub_steps() -> None:
    text = """1. Run the following thermocycler protocol:
   - 37 °C for 15 min
   - 65 °C for 10 min
2. Prepare the gel:
   - Weigh 1 g of agarose.
   - Add 100 ml of TAE.
3. Centrifuge the tubes
   - 13,000 x g, 1 min
"""
    p = parse_protocol(text)
    assert p.steps == [
        "Run the following thermocycler protocol:",
        "Weigh 1 g of agarose.",
        "Add 100 ml of TAE.",
        "Centrifuge the tubes",
    ]
    assert p.details == [["37 °C for 15 min", "65 °C for 10 min"], [], [], ["13,000 x g, 1 min"]]


def test_reagent_block_under_a_step_ending_with_a_colon() -> None:
    text = """1. Prepare the master mix:

   Reagent           Conc  Each rxn
   ─────────────────────────────────
   water                   38.00 µl
   forward primer  200 µM   1.00 µl
                           40.00 µl

2. Add 10 µl of the mix to each well.
"""
    p = parse_protocol(text)
    assert p.steps == ["Prepare the master mix:", "Add 10 µl of the mix to each well."]
    assert p.details[0] == [
        "Reagent Conc Each rxn",
        "water 38.00 µl",
        "forward primer 200 µM 1.00 µl",
        "40.00 µl",
    ]


def test_explain_gives_every_line_a_class_and_a_reason() -> None:
    p, decisions = explain_protocol(PCR_PROGRAM)
    assert [d.number for d in decisions] == list(range(1, 11))
    assert all(d.cls in CLASSES and d.reason for d in decisions)
    classes = [d.cls for d in decisions]
    assert classes == ["title"] + ["step"] * 5 + ["parameter"] * 4
    assert "thermocycler" in decisions[7].reason
    _, decisions = explain_protocol(EXPECTED_RESULT)
    assert [d.cls for d in decisions if d.text.startswith("Expected")] == ["expected"]


def test_json_steps_with_notes_and_details_round_trip() -> None:
    p = parse_protocol(PCR_PROGRAM)
    edited = {
        "title": p.title,
        "steps": [
            {"text": t, "notes": n, "details": d}
            for t, n, d in zip(p.steps, p.notes, p.details, strict=True)
        ],
    }
    again = parse_protocol(json.dumps(edited))
    assert again == p and again.details == p.details and again.notes == p.notes
    with pytest.raises(ProtocolError, match='step 1 is an object without a "text"'):
        parse_protocol('{"steps": [{"notes": []}]}')
    with pytest.raises(ProtocolError, match="unknown keys"):
        parse_protocol('{"steps": [{"text": "Mix.", "colour": "red"}]}')


def test_cli_explain_prints_each_line_class_and_reason(tmp_path) -> None:
    import argparse
    import io

    from biovl_core.report import run_protocol

    path = tmp_path / "pcr.txt"
    path.write_text(PCR_PROGRAM, encoding="utf-8")
    out = io.StringIO()
    args = argparse.Namespace(file=path, json=False, explain=True, split_verbs=False)
    assert run_protocol(args, out) == 0
    rows = out.getvalue().splitlines()
    program = next(r for r in rows if "95 °C 3 min" in r)
    assert program.split()[:2] == ["8", "parameter"] and "thermocycler line" in program
    assert any(r.split()[:2] == ["6", "step"] for r in rows)
    assert "· 4 °C hold" in out.getvalue()  # the listing shows the step's details

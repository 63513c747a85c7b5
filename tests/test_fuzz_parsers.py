"""Hypothesis over the protocol and annotation parsers: any upload ends in a result or a clear error.

A clear error is a ``BioVLError`` (ProtocolError / AnnotationError) whose message names the file;
anything else (KeyError, RecursionError, ...) or a case slower than the time limit is a bug.
"""

from __future__ import annotations

import json
import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biovl_core.errors import BioVLError
from biovl_core.io import parse_annotations
from biovl_core.protocol import parse_protocol

CASE_TIME_LIMIT_S = 2.0
# Load the Japanese tokenizer's dictionary once up front: the limit is for hangs, not start-up.
parse_protocol("チューブを遠心して、上清を捨てる。")
FUZZ = settings(
    max_examples=int(os.environ.get("BIOVL_FUZZ_EXAMPLES", "300")),
    deadline=None,  # checked below against CASE_TIME_LIMIT_S, with the input in the message
    suppress_health_check=[HealthCheck.too_slow],
)

_markers = st.sampled_from(
    [
        "1.",
        "1.1",
        "1.1.1.",
        "a)",
        "(a)",
        "i.",
        "(1)",
        "-",
        "*",
        "•",
        "１．",
        "（１）",
        "#",
        "##",
        "",
    ]
)
_words = st.sampled_from(
    [
        "Add",
        "10 µl",
        "water",
        "and",
        "mix",
        "Note:",
        "Caution",
        "注意",
        "遠心して、",
        "上清を捨てる。",
        "Materials:",
        "Procedure",
        "Centrifuge",
        "for 5 min.",
        "Invert 4 times to mix",
        "。",
        "\t",
        "  ",
    ]
)
_lines = st.lists(
    st.tuples(_markers, st.lists(_words | st.text(max_size=12), max_size=8)).map(
        lambda t: (t[0] + " " + " ".join(t[1])).rstrip()
    ),
    max_size=30,
)
protocol_texts = _lines.map("\n".join) | st.text(max_size=400)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "title",
                    "steps",
                    "step",
                    "text",
                    "start",
                    "end",
                    "sections",
                    "components",
                    "protocol",
                    "payload",
                    "body",
                    "source",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


def _check(call, *args, where: str, **kwargs) -> None:
    started = time.perf_counter()
    try:
        call(*args, **kwargs)
    except BioVLError as exc:
        assert where in str(exc), f"the error does not name the file: {exc}"
    elapsed = time.perf_counter() - started
    assert elapsed < CASE_TIME_LIMIT_S, f"took {elapsed:.2f} s on {args[0]!r:.200}"


@FUZZ
@given(protocol_texts)
def test_protocol_text(text: str) -> None:
    _check(parse_protocol, text, where="upload.txt", filename="upload.txt")


@FUZZ
@given(st.binary(max_size=600))
def test_protocol_bytes(data: bytes) -> None:
    _check(parse_protocol, data, where="upload.txt", filename="upload.txt")


@FUZZ
@given(json_values)
def test_protocol_json(value: object) -> None:
    _check(parse_protocol, json.dumps(value), where="upload.json", filename="upload.json")


_cells = st.sampled_from(
    ["", "1", "2.5", "-3", "1e309", "nan", "inf", "00:01:05", "1:2:3:4", "x", "step"]
)
csv_texts = st.lists(
    st.lists(_cells | st.text(max_size=6), min_size=0, max_size=5).map(",".join), max_size=20
).map(lambda rows: "\n".join(["step,start,end", *rows]))


@FUZZ
@given(csv_texts | st.text(max_size=300))
def test_annotations_csv(text: str) -> None:
    _check(parse_annotations, text, where="ann.csv", filename="ann.csv")


@FUZZ
@given(json_values)
def test_annotations_json(value: object) -> None:
    _check(parse_annotations, json.dumps(value), where="ann.json", filename="ann.json")


@FUZZ
@given(st.binary(max_size=400))
def test_annotations_bytes(data: bytes) -> None:
    _check(parse_annotations, data, where="ann.csv", filename="ann.csv")

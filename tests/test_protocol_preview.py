"""The upload form's protocol preview route: the steps, lines and notes the worker will align."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from biovl_core.protocol import read_protocol
from tests import service_fixtures as sf
from tests.service_fixtures import AUTH_A

checkpoint, runner, make_env = sf.checkpoint, sf.runner, sf.make_env
CORPUS = Path(__file__).parent / "protocol_corpus"


def test_preview_returns_steps_lines_and_notes(make_env: Any) -> None:
    env = make_env()
    path = CORPUS / "nature_protocols_marks.txt"
    files = {"protocol": (path.name, path.read_bytes(), "text/plain")}
    response = env.client.post("/v1/protocol/preview", files=files, headers=AUTH_A)
    assert response.status_code == 200
    body = response.json()
    assert body == {"filename": path.name, **read_protocol(path).to_dict()}
    assert body["steps"][0]["line"] == 1 and body["steps"][0]["notes"]
    assert env.queue.depth() == 0  # a preview submits nothing


def test_preview_needs_a_token_and_names_protocol_errors(make_env: Any) -> None:
    env = make_env()
    files = {"protocol": ("p.txt", b"1. Add water.\n", "text/plain")}
    assert env.client.post("/v1/protocol/preview", files=files).status_code == 401
    empty = env.client.post(
        "/v1/protocol/preview", files={"protocol": ("p.txt", b"  \n")}, headers=AUTH_A
    )
    assert empty.status_code == 422 and "p.txt" in empty.json()["error"]
    missing = env.client.post("/v1/protocol/preview", data={"x": "1"}, headers=AUTH_A)
    assert missing.status_code == 422 and '"protocol"' in missing.json()["error"]

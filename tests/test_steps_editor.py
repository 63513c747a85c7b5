"""The upload form's step editor in a real browser (Debian chromium via playwright) against a
live service (real Redis, real worker, tiny CPU model): the lab edits a step, merges two, splits
one at the cursor, moves one, adds and deletes one, submits; the job aligns exactly that list
and the uploaded protocol is archived beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from service_fixtures import poll
from test_viewer import (  # noqa: F401  (browser, live_service: fixtures, one per module)
    JOB_TIMEOUT_MS,
    TOKEN,
    LiveService,
    PageWatch,
    _shot,
    browser,
    live_service,
    wait_in_page,
)

from biovl_core.protocol import read_protocol
from biovl_core.synthetic import make_recording

pytestmark = pytest.mark.slow

HEADERS = {"Authorization": f"Bearer {TOKEN}"}
ROWS = "#protocol-preview .step-row"


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated PCR recording (six steps)."""
    return make_recording(tmp_path_factory.mktemp("editor-rec"), "pcr", seed=5, duration_s=40)


def _texts(page: Any) -> list[str]:
    return page.evaluate(
        "() => [...document.querySelectorAll('#protocol-preview .step-text')].map((t) => t.value)"
    )


def _row(page: Any, index: int) -> Any:
    return page.locator(f"{ROWS}[data-index='{index}']")


def test_edit_merge_split_reorder_submit_and_the_job_aligns_the_edited_steps(
    browser: Any,  # noqa: F811
    live_service: LiveService,  # noqa: F811
    recording: Path,
) -> None:
    base = live_service.base
    parsed = read_protocol(recording / "protocol.txt").steps
    assert parsed[2:4] == ["Add primer2.", "Add template."]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = PageWatch(page, base)
    page.goto(f"{base}/#token={TOKEN}")
    page.wait_for_selector("[data-signin-state]:has-text('Signed in')")
    page.set_input_files("#video", str(recording / "video.mp4"))
    page.set_input_files("#protocol", str(recording / "protocol.txt"))
    wait_in_page(
        page,
        "(n) => document.querySelectorAll('#protocol-preview .step-row').length === n",
        len(parsed),
    )
    assert _texts(page) == parsed
    assert page.locator("#protocol-preview .step-reset").is_disabled()

    # Edit the first step.
    _row(page, 0).locator(".step-text").fill("Add 20 µl of sterile distilled water.")
    assert page.locator("#protocol-preview").get_attribute("data-edited") == "true"
    # Merge steps 2 and 3.
    _row(page, 1).locator(".step-merge").click()
    assert _texts(page)[1] == "Add primer1. Add primer2."
    # Write a second action into "Add template." and split it at the cursor.
    area = _row(page, 2).locator(".step-text")
    area.fill("Add template. Mix by pipetting.")
    page.evaluate(
        "() => { const t = document.querySelector(\"#protocol-preview .step-row[data-index='2'] "
        '.step-text"); t.focus(); t.setSelectionRange(13, 13); }'
    )
    _row(page, 2).locator(".step-split").click()
    assert _texts(page)[2:4] == ["Add template.", "Mix by pipetting."]
    # Move "Mix by pipetting." below "Add PrimeSTAR.".
    _row(page, 3).locator(".step-down").click()
    # Add a step, then delete it again.
    page.locator("#protocol-preview .step-add").click()
    assert _texts(page)[-1] == ""
    _row(page, len(_texts(page)) - 1).locator(".step-delete").click()
    edited = [
        "Add 20 µl of sterile distilled water.",
        "Add primer1. Add primer2.",
        "Add template.",
        "Add PrimeSTAR.",
        "Mix by pipetting.",
        "Set in DNA engine.",
    ]
    assert _texts(page) == edited
    summary = page.locator("#protocol-preview .steps-summary").inner_text()
    assert "6 steps (edited)" in summary
    _shot(page, "steps-editor-1280x900.png")

    page.click("#upload-submit")
    link = page.wait_for_selector("#new-job-link", timeout=60_000)
    job_id = (link.get_attribute("href") or "").removeprefix("/jobs/")
    assert job_id
    with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as client:
        body = poll(
            lambda: client.get(f"/v1/jobs/{job_id}"),
            lambda b: b["status"] in ("succeeded", "failed", "dead"),
            JOB_TIMEOUT_MS / 1000,
        )
        assert body["status"] == "succeeded", body
        assert body["protocol_edited"] is True and body["num_steps"] == len(edited)
        alignment = client.get(f"/v1/jobs/{job_id}/alignment.json").json()
    assert [s["text"] for s in alignment["steps"]] == edited
    jf = live_service.service.archive.job("lab-a", job_id)
    assert jf.protocol_original_path.read_text() == (recording / "protocol.txt").read_text()
    assert not watch.foreign, f"requests left the service's origin: {watch.foreign}"
    assert not watch.errors, f"console errors: {watch.errors}"
    context.close()

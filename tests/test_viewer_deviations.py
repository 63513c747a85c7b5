"""The deviation report in a real browser (Debian chromium via playwright) against a live service:
a lab's first recording is corrected (one step made very short), the next recording of that
protocol is aligned with it, and its page lists the findings of its result JSON and, per step,
the lab's usual range beside this recording's duration. Screenshot: docs/img/deviations.png."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_fixtures import TOKENS
from test_viewer import (  # noqa: F401  (browser, live_service: fixtures, one per module)
    ROOT,
    TOKEN,
    LiveService,
    PageWatch,
    _shot,
    browser,
    live_service,
    wait_in_page,
)
from test_viewer_corrections import _submit, _truth

from biovl_core.synthetic import make_recording

pytestmark = pytest.mark.slow

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two PCR recordings of one protocol (other timings and noise)."""
    base = tmp_path_factory.mktemp("deviations-rec")
    return [make_recording(base / f"r{s}", "pcr", seed=s, duration_s=40) for s in (5, 6)]


def test_the_page_shows_the_report_with_the_lab_range(
    browser: Any,  # noqa: F811
    live_service: LiveService,  # noqa: F811
    recordings: list[Path],
) -> None:
    live = live_service
    first = _submit(live, recordings[0])
    assert "deviations" not in first
    truth = [list(s) for s in _truth(recordings[0])]
    k = len(truth)
    truth[-1] = [truth[-1][0], truth[-1][0] + 0.4]  # the lab's usual last step: 0.4 s
    with httpx.Client(base_url=live.base, headers=HEADERS, timeout=60) as client:
        put = client.put(f"/v1/jobs/{first['job_id']}/annotations", json=truth)
        assert put.status_code == 200, put.text
    second = _submit(live, recordings[1])
    assert second["method"] == "group" and second["group"]["corrections"] == 1
    findings = second["deviations"]
    last = second["steps"][-1]
    assert last["lab"]["median_s"] == pytest.approx(0.4, abs=0.01)
    if last["start"] is not None:  # performed: at least a segment long, far above 0.4 s
        assert any(e["kind"] == "longer" and e["step"] == k - 1 for e in findings)

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    watch = PageWatch(page, live.base)
    page.goto(f"{live.base}/jobs/{second['job_id']}#token={TOKEN}")
    page.wait_for_selector("#deviations[data-loaded='true']", timeout=30_000)
    wait_in_page(page, "() => document.getElementById('video').readyState >= 1", timeout_ms=30_000)
    assert page.locator("#deviations .dev-table tbody tr").count() == k
    assert page.locator("#dev-list li").count() == len(findings)
    if not findings:
        assert page.locator("#dev-none").is_visible()
    for i, e in enumerate(findings):  # in the JSON's order, each with its confidence
        row = page.locator("#dev-list li").nth(i)
        assert row.get_attribute("data-kind") == e["kind"]
        assert row.inner_text().endswith(f"{round(e['confidence'] * 100)}%")
    ranges = page.locator("#deviations .dev-range").all_inner_texts()
    lo, hi = last["lab"]["range_s"]
    assert ranges[-1].replace(" ", "") == f"0:{lo:04.1f}–0:{hi:04.1f}"
    flagged = {e["step"] for e in findings if "step" in e}
    assert page.locator("#deviations tr.dev-flagged").count() == len(flagged)
    longer = page.locator("#dev-list li[data-kind='longer']")
    if longer.count():
        assert "× the lab's usual" in longer.first.inner_text()
        longer.first.locator(".dev-step").click()
        start = second["steps"][int(longer.first.get_attribute("data-step"))]["start"]
        wait_in_page(
            page,
            "(t) => Math.abs(document.getElementById('video').currentTime - t) < 0.3",
            start,
        )
    page.locator("#deviations").scroll_into_view_if_needed()
    shot = _shot(page, "deviations-1280x800.png")
    if os.environ.get("BIOVL_UPDATE_DOC_IMAGES") == "1":  # a run never dirties the checkout
        shutil.copyfile(shot, ROOT / "docs" / "img" / "deviations.png")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "horizontal overflow"
    _shot(page, "deviations-390x844.png")
    _check_lab_page(page, live, k)
    _check_lab_page_with_other_tokens(browser, live)
    assert not watch.foreign, f"requests left the service's origin: {watch.foreign}"
    assert not watch.errors, f"console errors: {watch.errors}"
    context.close()


def _check_lab_page(page: Any, live: LiveService, k: int) -> None:
    """The jobs page lists the lab's protocol with its k steps, most varying first, as the API
    says (shares and the usual range), and fits a phone's width."""
    with httpx.Client(base_url=live.base, headers=HEADERS, timeout=60) as client:
        api = client.get("/v1/protocols").json()["protocols"]
    assert len(api) == 1 and api[0]["recordings"] == 2 and api[0]["annotated"] == 1, api
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{live.base}/#token={TOKEN}")
    page.wait_for_selector("#protocols[data-loaded='true']", timeout=30_000)
    rows = page.locator("#protocols .var-table tbody tr")
    assert rows.count() == k
    want = api[0]["steps"]
    assert [int(rows.nth(i).get_attribute("data-step")) for i in range(k)] == [
        s["step"] for s in want
    ]
    shares = [float(rows.nth(i).get_attribute("data-share")) for i in range(k)]
    assert shares == sorted(shares, reverse=True)
    top = rows.first
    assert top.locator(".var-total").inner_text() == f"{round(want[0]['deviation_share'] * 100)}%"
    if want[0]["range_s"]:
        lo, hi = want[0]["range_s"]
        text = top.locator(".var-range").inner_text().replace(" ", "")
        assert text == f"0:{lo:04.1f}–0:{hi:04.1f}", text
    page.locator("#protocols").scroll_into_view_if_needed()
    shot = _shot(page, "lab-protocols-1280x800.png")
    if os.environ.get("BIOVL_UPDATE_DOC_IMAGES") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "img" / "lab-protocols.png")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "horizontal overflow"


def _check_lab_page_with_other_tokens(browser: Any, live: LiveService) -> None:  # noqa: F811
    """Another lab's token sees none of lab A's protocols; a wrong token gets one line."""
    for token, said in ((TOKENS["lab-b"], "No protocol aligned yet."), ("wrong-token", "HTTP 401")):
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(f"{live.base}/#token={token}")
        status = page.locator("#protocols [data-protocols-status]")
        status.filter(has_text=said).wait_for(timeout=30_000)
        assert page.locator("#protocols .var-table").count() == 0
        context.close()

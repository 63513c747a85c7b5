"""Corrections in a real browser (Debian chromium via playwright) against a live service (real
Redis, real worker, tiny CPU model): edit a step's span by dragging, "start here" / "end here" at
the playhead and "not performed", undo, save, reload and see the correction; then the next
recording of that protocol is aligned with it (its result counts one correction)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from service_fixtures import poll, upload
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

from biovl_core.io import annotations_to_spans, read_annotations
from biovl_core.pipeline import align_video
from biovl_core.protocol import parse_protocol
from biovl_core.synthetic import make_recording

pytestmark = pytest.mark.slow

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two PCR recordings of one protocol (other timings and noise)."""
    base = tmp_path_factory.mktemp("corrections-rec")
    return [make_recording(base / f"r{s}", "pcr", seed=s, duration_s=40) for s in (3, 4)]


def _submit(live: LiveService, recording: Path) -> dict[str, Any]:
    """POST a recording without annotations, wait for its result; its alignment JSON."""
    files, data = upload(recording, annotations=False)
    with httpx.Client(base_url=live.base, headers=HEADERS, timeout=60) as client:
        r = client.post("/v1/jobs", files=files, data=data)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        body = poll(
            lambda: client.get(f"/v1/jobs/{job_id}"),
            lambda b: b["status"] in ("succeeded", "failed", "dead"),
            JOB_TIMEOUT_MS / 1000,
        )
        assert body["status"] == "succeeded", body
        alignment = client.get(f"/v1/jobs/{job_id}/alignment.json").json()
    return {"job_id": job_id, **alignment}


def _truth(recording: Path) -> list[tuple[float, float] | None]:
    steps = parse_protocol((recording / "protocol.txt").read_text(), "protocol.txt").steps
    return annotations_to_spans(read_annotations(recording / "annotations.csv"), steps)


def _seek(page: Any, t: float) -> None:
    page.evaluate("(t) => { document.getElementById('video').currentTime = t; }", t)
    wait_in_page(
        page, "(t) => Math.abs(document.getElementById('video').currentTime - t) < 0.05", t
    )


def _span_texts(page: Any) -> list[str]:
    return page.locator("#corr-steps .corr-span").all_inner_texts()


def _open(page: Any, base: str, job_id: str) -> None:
    page.goto(f"{base}/jobs/{job_id}#token={TOKEN}")
    page.wait_for_selector("#corrections[data-loaded='true']", timeout=30_000)
    wait_in_page(page, "() => document.getElementById('video').readyState >= 1", timeout_ms=30_000)


def test_edit_save_reload_and_the_next_recording_learns(
    browser: Any,  # noqa: F811
    live_service: LiveService,  # noqa: F811
    recordings: list[Path],
) -> None:
    live = live_service
    first = _submit(live, recordings[0])
    k = len(first["steps"])
    assert first["group"]["recordings"] == 0 and first["method"] == "biovl"
    truth = _truth(recordings[0])
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    watch = PageWatch(page, live.base)
    _open(page, live.base, first["job_id"])
    assert page.locator("#corr-steps li").count() == k
    assert page.locator("#corr-save").is_disabled() and page.locator("#corr-undo").is_disabled()
    assert page.locator("#group-note").inner_text().startswith("The first recording")

    # "Start here" / "end here" at the playhead: step 1 gets its true span.
    row0 = page.locator("#corr-steps li[data-index='0']")
    _seek(page, truth[0][0])
    row0.locator(".corr-start-here").click()
    _seek(page, truth[0][1])
    row0.locator(".corr-end-here").click()
    assert _span_texts(page)[0].replace(" ", "") == "0:{:04.1f}–0:{:04.1f}".format(*truth[0])

    # Drag step 2's end edge to its true end.
    handle = page.locator(".corr-block[data-index='1'] .corr-end")
    track = page.locator("#corr-track").bounding_box()
    box = handle.bounding_box()
    assert track and box
    x = track["x"] + track["width"] * truth[1][1] / first["duration_s"]
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(x, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    dragged = page.evaluate(
        "() => document.querySelector('#corr-steps li[data-index=\"1\"] .corr-span').textContent"
    )
    end_s = _seconds(dragged.split("–")[1])
    assert abs(end_s - truth[1][1]) < 0.6, dragged

    # "Not performed" on the last step, undo, and again; then save.
    last = page.locator(f"#corr-steps li[data-index='{k - 1}']")
    before = _span_texts(page)[k - 1]
    last.locator(".corr-skip").click()
    assert _span_texts(page)[k - 1] == "not performed"
    page.click("#corr-undo")
    assert _span_texts(page)[k - 1] == before
    last.locator(".corr-skip").click()
    edited = _span_texts(page)
    page.locator("#corr-steps li[data-index='2'] .corr-end-here").click()  # at 0:0x.x: a slip
    assert _span_texts(page) != edited
    page.keyboard.press("Control+z")
    assert _span_texts(page) == edited
    page.click("#corr-save")
    page.wait_for_selector("#corr-status:has-text('Saved as correction v1')")
    assert page.locator("#corr-save").is_disabled()
    _shot(page, "corrections-1280x800.png")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "horizontal overflow"
    _shot(page, "corrections-390x844.png")
    page.set_viewport_size({"width": 1280, "height": 800})

    # Reload: the saved correction is what the editor shows.
    page.reload()
    page.wait_for_selector("#corrections[data-loaded='true']", timeout=30_000)
    page.wait_for_selector("#corr-status:has-text('Correction v1 saved by lab-a')")
    assert _span_texts(page) == edited
    saved = httpx.get(f"{live.base}/v1/jobs/{first['job_id']}/annotations", headers=HEADERS).json()
    assert saved["source"] == "correction" and saved["spans"][k - 1] is None
    assert saved["spans"][0] == pytest.approx(list(truth[0]), abs=0.06)

    # The next recording of that protocol is aligned with the corrected one.
    second = _submit(live, recordings[1])
    assert second["group"]["recordings"] == 1
    assert second["group"]["annotated"] == 1 and second["group"]["corrections"] == 1
    assert second["method"] == "group" and len(second["steps"]) == k
    cfg = live.settings.pipeline_config().replace(
        cache_dir=str(live.service.archive.root / "embeddings")
    )
    text_only = align_video(
        recordings[1] / "video.mp4",
        parse_protocol((recordings[1] / "protocol.txt").read_text(), "protocol.txt"),
        cfg,
        embedder=live.worker.runner.embedder(cfg),
    )
    assert second["labels"] != text_only.labels.tolist()

    # Its page shows each step's confidence and the steps judged not performed.
    _open(page, live.base, second["job_id"])
    assert page.locator("#steps .badge-confidence").count() == k
    assert page.locator("#corr-steps .corr-conf").count() == k
    missing = [s for s in second["steps"] if s["start"] is None]
    assert page.locator("#steps .badge-not-performed").count() == len(missing)
    assert "1 other recording" in page.locator("#group-note").inner_text()
    assert not watch.foreign, f"requests left the service's origin: {watch.foreign}"
    assert not watch.errors, f"console errors: {watch.errors}"
    context.close()


def _seconds(text: str) -> float:
    """ "1:05.3" -> 65.3."""
    minutes, seconds = text.strip().split(":")
    return int(minutes) * 60 + float(seconds)

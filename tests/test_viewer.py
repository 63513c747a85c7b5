"""The viewer in a real browser (Debian chromium driven by playwright) against a live service.

A generated recording is uploaded through the job list's form, processed by a real worker
(tiny CPU model), and opened in the viewer; the test clicks a step and checks the video
seeks to it, the heatmap is drawn, the WebVTT track is loaded, no request leaves the
service's origin or carries the lab token in its URL (the video, track and downloads use signed
links), and the layout fits 1280x800 and 390x844 (screenshots in artifacts/).
"""

from __future__ import annotations

import csv
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_embed import make_tiny_clip_checkpoint
from service_fixtures import TOKENS, make_settings, poll, upload

from biovl_core.protocol import read_protocol
from biovl_core.synthetic import make_recording

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = Path(os.environ.get("BIOVL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = TOKENS["lab-a"]
JOB_TIMEOUT_MS = 180_000


def _browser_deps() -> Any:
    """The playwright sync API, failing (not skipping) with the fix when something is missing."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser test needs Debian's chromium. "
            "Run `python scripts/ensure_test_deps.py` (make test does) or `apt-get install -y chromium`."
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the `playwright` Python package is missing: pip install -c constraints.txt playwright "
            "(its wheel bundles the driver; do not run `playwright install`)."
        )
    return sync_playwright


def wait_in_page(page: Any, script: str, arg: Any = None, timeout_ms: float = 10_000) -> Any:
    """Poll ``script`` (a JS function) with ``page.evaluate`` until it returns a truthy value.

    Playwright's ``wait_for_function`` evaluates its predicate with ``eval`` inside the page, which
    the viewer's CSP (``script-src 'self'``, no ``unsafe-eval``) forbids; ``page.evaluate`` runs
    through the DevTools protocol and is not subject to the page's CSP.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        value = page.evaluate(script, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_ms} ms waiting for {script!r} ({arg!r})"
            )
        page.wait_for_timeout(100)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveService:
    """The FastAPI ingress served by uvicorn on 127.0.0.1 plus one queue worker thread."""

    def __init__(self, settings: Any) -> None:
        import uvicorn

        from services.api import JobService, create_app
        from services.runner import LocalRunner
        from services.worker import Worker

        self.settings = settings
        self.service = JobService(settings)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(self.service), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.worker = Worker(
            settings, LocalRunner(), queue=self.service.queue, archive=self.service.archive
        )
        self._threads = [
            threading.Thread(target=self.server.run, name="uvicorn", daemon=True),
            threading.Thread(target=self.worker.run_forever, name="worker", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.05)

    def stop(self) -> None:
        self.worker.stop()
        self.server.should_exit = True
        for t in self._threads:
            t.join(timeout=30)
        keys = list(self.service.redis.scan_iter(f"{self.settings.redis_prefix}:*"))
        if keys:
            self.service.redis.delete(*keys)


@pytest.fixture(scope="module")
def live_service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[LiveService]:
    """A running service with the tiny CPU model on a private archive and Redis prefix."""
    root = tmp_path_factory.mktemp("viewer-service")
    checkpoint = make_tiny_clip_checkpoint(root / "tiny.pt", seed=0)
    live = LiveService(make_settings(root, redis_url, checkpoint))
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 40 s PCR recording (H.264 MP4, protocol, annotations)."""
    return make_recording(tmp_path_factory.mktemp("viewer-rec"), "pcr", seed=3, duration_s=40)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian chromium, headless, through playwright's bundled driver."""
    sync_playwright = _browser_deps()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class PageWatch:
    """Records every request a page makes and every console error / page error."""

    def __init__(self, page: Any, origin: str) -> None:
        self.origin = origin
        self.foreign: list[str] = []
        self.urls: list[str] = []
        self.errors: list[str] = []
        page.on("request", self._request)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

    def _request(self, request: Any) -> None:
        url = request.url
        self.urls.append(url.split("#")[0])  # a fragment never leaves the browser
        if not (url.startswith(self.origin + "/") or url.startswith("data:")):
            self.foreign.append(url)


def _annotations(recording: Path) -> list[dict[str, Any]]:
    with open(recording / "annotations.csv", newline="", encoding="utf-8") as fh:
        return [
            {"step": r["step"], "start": float(r["start"]), "end": float(r["end"])}
            for r in csv.DictReader(fh)
        ]


def _shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5_000, f"{path} looks empty"
    return path


def _upload_through_form(page: Any, base: str, recording: Path) -> str:
    """Sign in via the URL fragment, fill the upload form, submit; returns the job id."""
    page.goto(f"{base}/#token={TOKEN}")
    page.wait_for_selector("[data-signin-state]:has-text('Signed in')")
    assert "token" not in page.url, "the token must be removed from the address bar"
    page.set_input_files("#video", str(recording / "video.mp4"))
    page.set_input_files("#protocol", str(recording / "protocol.txt"))
    steps = read_protocol(recording / "protocol.txt").steps
    shown = wait_in_page(
        page,
        "(n) => { const s = [...document.querySelectorAll('#protocol-preview .preview-text')];"
        " return s.length === n && s.map((e) => e.textContent); }",
        len(steps),
    )
    assert shown == steps, "the upload form previews the steps the worker will align"
    page.set_input_files("#annotations", str(recording / "annotations.csv"))
    # The video goes up resumably (tus-js-client): the first PATCH's connection is reset, and
    # the form asks the server where the upload stands (HEAD) and resumes from there.
    dropped: list[str] = []
    methods: list[str] = []

    def drop_first_patch(route: Any) -> None:
        if route.request.method == "PATCH" and not dropped:
            dropped.append(route.request.url)
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/v1/uploads**", drop_first_patch)
    page.on("request", lambda r: methods.append(r.method) if "/v1/uploads" in r.url else None)
    page.click("#upload-submit")
    link = page.wait_for_selector("#new-job-link", timeout=60_000)
    page.unroute("**/v1/uploads**")
    assert dropped, "the first PATCH was cut off"
    assert methods.count("POST") == 1 and "HEAD" in methods, methods
    assert methods.count("PATCH") >= 2, methods
    href = link.get_attribute("href")
    assert href and href.startswith("/jobs/"), href
    return href.removeprefix("/jobs/")


def _submit_by_api(live: LiveService, recording: Path) -> str:
    """POST the recording through the API and wait for success (when run on its own)."""
    import httpx

    files, data = upload(recording)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=live.base, headers=headers, timeout=60) as client:
        r = client.post("/v1/jobs", files=files, data=data)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        poll(
            lambda: client.get(f"/v1/jobs/{job_id}"),
            lambda body: body["status"] in ("succeeded", "failed", "dead"),
            JOB_TIMEOUT_MS / 1000,
        )
    return job_id


def test_upload_view_seek_and_layout(
    browser: Any, live_service: LiveService, recording: Path
) -> None:
    base = live_service.base
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    watch = PageWatch(page, base)

    job_id = _upload_through_form(page, base, recording)
    # The job list refreshes itself while the job is pending.
    row = f"#jobs tr[data-job-id='{job_id}']"
    page.wait_for_selector(row, timeout=30_000)
    page.wait_for_selector(f"{row}[data-status='succeeded']", timeout=JOB_TIMEOUT_MS)
    _shot(page, "jobs-1280x800.png")

    page.click(f"{row} a")
    page.wait_for_url(f"**/jobs/{job_id}")
    page.wait_for_selector("#heatmap[data-drawn='true']", timeout=30_000)
    wait_in_page(page, "() => document.getElementById('video').readyState >= 1", timeout_ms=30_000)

    alignment = page.evaluate(
        """async (id) => (await fetch(`/v1/jobs/${id}/alignment.json?similarity=1`,
             {headers: {Authorization: `Bearer ${sessionStorage.getItem('biovl.token')}`}})).json()""",
        job_id,
    )
    steps = alignment["steps"]
    found = [s for s in steps if s["start"] is not None]
    assert found, "the alignment found no step; nothing to click"
    assert page.locator("#steps li").count() == len(steps)
    assert page.locator("#steps .badge-missing").count() == len(steps) - len(found)

    # Clicking a step seeks the video to its start and marks it current.
    target = max(found, key=lambda s: s["start"])
    button = page.locator(f"#steps .step-button[data-index='{target['index']}']")
    button.click()
    wait_in_page(
        page,
        "(t) => Math.abs(document.getElementById('video').currentTime - t) < 0.5",
        target["start"],
    )
    assert button.get_attribute("aria-current") == "step"
    assert page.locator("#steps [aria-current]").count() == 1

    # Keyboard: focus another step's button and press Enter.
    first = min(found, key=lambda s: s["start"])
    if first["index"] != target["index"]:
        page.locator(f"#steps .step-button[data-index='{first['index']}']").focus()
        page.keyboard.press("Enter")
        wait_in_page(
            page,
            "(t) => Math.abs(document.getElementById('video').currentTime - t) < 0.5",
            first["start"],
        )

    # The heatmap canvas holds pixels: K rows of cells plus the path.
    drawn = page.evaluate(
        """() => { const c = document.getElementById('heatmap');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let opaque = 0, colours = new Set();
                   for (let i = 0; i < d.length; i += 4 * 7) {
                     if (d[i + 3] > 0) { opaque++; colours.add(d[i] << 16 | d[i + 1] << 8 | d[i + 2]); } }
                   return {w: c.width, h: c.height, opaque, colours: colours.size}; }"""
    )
    assert drawn["w"] > 200 and drawn["h"] > 40, drawn
    assert drawn["opaque"] > 100 and drawn["colours"] > 5, drawn

    # The WebVTT track is loaded into the player: one cue per found step.
    wait_in_page(page, "() => document.querySelector('#video track').readyState === 2")
    cues = page.evaluate("document.getElementById('video').textTracks[0].cues.length")
    assert cues == len(found)
    assert page.evaluate("document.querySelector('#video track').kind") == "chapters"

    # Timeline: one predicted block per found step.
    assert page.locator(".tl-pred .tl-block").count() == len(found)
    if alignment.get("annotations") or alignment.get("annotation_spans"):
        assert page.locator(".tl-gt .tl-block").count() > 0
        assert page.locator("#steps .badge-iou").count() > 0

    # Downloads work through their signed links (a link cannot send headers), without the token.
    for link_id, prefix in (("dl-json", "{"), ("dl-csv", "step,start,end"), ("dl-vtt", "WEBVTT")):
        href = page.get_attribute(f"#{link_id}", "href")
        assert href and href.startswith(f"/v1/jobs/{job_id}/alignment."), href
        assert "sig=" in href and TOKEN not in href, href
        response = page.request.get(base + href)
        assert response.ok and response.text().startswith(prefix), (link_id, response.status)
    video_src = page.evaluate("document.getElementById('video').getAttribute('src')")
    assert video_src.startswith(f"/v1/jobs/{job_id}/video?") and "sig=" in video_src, video_src

    assert page.locator("#demo-banner").is_hidden(), "banner shown for real (tiny) weights"
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    _shot(page, "viewer-1280x800.png")

    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "horizontal overflow"
    box = page.locator("#heatmap").bounding_box()
    assert box and box["width"] <= 390
    _shot(page, "viewer-390x844.png")

    page.goto(f"{base}/")
    page.wait_for_selector(f"{row}[data-status='succeeded']")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    _shot(page, "jobs-390x844.png")

    assert not watch.foreign, f"requests left the service's origin: {watch.foreign}"
    # the one PATCH the test cut off is logged by the browser; nothing else may be
    errors = list(watch.errors)
    if "Failed to load resource: net::ERR_CONNECTION_RESET" in errors:
        errors.remove("Failed to load resource: net::ERR_CONNECTION_RESET")
    assert not errors, f"console errors: {watch.errors}"
    assert any("/video?" in u for u in watch.urls), "the page never requested the video"
    leaked = [u for u in watch.urls if TOKEN in u]
    assert not leaked, f"the lab token travelled in a URL: {leaked}"
    context.close()
    live_service.job_id = job_id  # for the next test


def test_demo_banner_and_annotation_ious(
    browser: Any, live_service: LiveService, recording: Path
) -> None:
    """With random-demo weights the banner shows; with annotations each step shows its IoU."""
    job_id = getattr(live_service, "job_id", None) or _submit_by_api(live_service, recording)
    base = live_service.base
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    watch = PageWatch(page, base)
    annotations = _annotations(recording)

    def demo_alignment(route: Any) -> None:
        body = route.fetch().json()
        body["weights"] = "random-demo"
        body.setdefault("annotations", annotations)
        route.fulfill(json=body)

    page.route("**/alignment.json?similarity=1", demo_alignment)
    page.goto(f"{base}/jobs/{job_id}#token={TOKEN}")
    page.wait_for_selector("#heatmap[data-drawn='true']", timeout=30_000)
    banner = page.locator("#demo-banner")
    assert banner.is_visible()
    assert "random demo weights: this alignment means nothing" in banner.inner_text().lower()

    assert page.locator(".tl-gt .tl-block").count() == len(annotations)
    ious = page.locator("#steps .badge-iou").all_inner_texts()
    assert len(ious) == len(annotations) and all(t.startswith("IoU ") for t in ious)
    assert "mIoU" in page.locator(".tl-gt").locator("xpath=..").inner_text()
    assert not watch.foreign and not watch.errors, (watch.foreign, watch.errors)
    assert not [u for u in watch.urls if TOKEN in u], watch.urls
    context.close()


def test_viewer_asks_for_a_token(browser: Any, live_service: LiveService) -> None:
    """Without a token the job page shows a sign-in form instead of failing silently."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{live_service.base}/jobs/0123456789abcdef")
    form = page.locator("#signin")
    form.wait_for(state="visible")
    page.fill("#token-input", "not-a-valid-token")
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#job-status:has-text('401')")
    assert form.is_visible()
    context.close()

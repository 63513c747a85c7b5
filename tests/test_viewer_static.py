"""Fast checks of the viewer's static files (no browser): self-contained, consistent, accessible."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "services" / "static"
PAGES = {"index.html": "jobs.js", "viewer.html": "viewer.js"}
TEXT_SUFFIXES = {".html", ".js", ".css"}
DEMO_BANNER = "random demo weights: this alignment means nothing"


class _Page(HTMLParser):
    """Collects the tags, attributes and text of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script":
            self._in_script = True
            if "src" not in a:
                self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if not self._in_script:
            self.text.append(data)

    def ids(self) -> list[str]:
        return [a["id"] for _, a in self.tags if a.get("id")]

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def _parse(name: str) -> _Page:
    page = _Page()
    page.feed((STATIC / name).read_text(encoding="utf-8"))
    return page


def _static_files() -> list[Path]:
    return sorted(p for p in STATIC.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)


def _static_path(url: str) -> Path:
    assert url.startswith("/static/"), f"asset {url!r} is not served from /static/"
    return STATIC / url.removeprefix("/static/")


def test_static_folder_has_the_pages() -> None:
    for name in ("index.html", "viewer.html", "viewer.js", "app.js", "jobs.js", "style.css"):
        assert (STATIC / name).is_file(), f"services/static/{name} is missing"


@pytest.mark.parametrize("path", _static_files(), ids=lambda p: p.name)
def test_no_external_urls(path: Path) -> None:
    """Nothing may point off this origin: no http(s) URL, no protocol-relative //host."""
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text, re.I), f"{path.name} contains an absolute URL"
    refs = re.findall(
        r"""(?:src|href|action)\s*=\s*["']([^"']*)["']|url\(\s*["']?([^"')]*)|(?:import|from)\s*\(?\s*["']([^"']+)["']""",
        text,
    )
    for ref in (r for group in refs for r in group if r):
        assert not ref.startswith("//"), f"{path.name}: protocol-relative URL {ref!r}"
        assert ":" not in ref.split("?")[0] or ref.startswith("data:"), (
            f"{path.name}: {ref!r} has a scheme"
        )


@pytest.mark.parametrize("page", sorted(PAGES))
def test_referenced_assets_exist(page: str) -> None:
    parsed = _parse(page)
    refs = [a["src"] for a in parsed.all("script") if a.get("src")]
    refs += [a["href"] for a in parsed.all("link") if a.get("rel") == "stylesheet"]
    assert refs, f"{page} loads no script or stylesheet"
    for ref in refs:
        assert _static_path(ref).is_file(), f"{page} references {ref}, which does not exist"
    scripts = parsed.all("script")
    ours = [s for s in scripts if not s.get("src", "").startswith("/static/vendor/")]
    assert all(s.get("type") == "module" for s in ours), f"{page}: our scripts must be ES modules"
    vendored = [s for s in scripts if s not in ours]
    assert all("defer" in s for s in vendored), f"{page}: vendored classic scripts must be deferred"
    assert PAGES[page] in " ".join(refs), f"{page} does not load {PAGES[page]}"


@pytest.mark.parametrize("path", sorted(STATIC.glob("*.js")), ids=lambda p: p.name)
def test_module_syntax(path: Path) -> None:
    """Each module parses (node --check); skipped where node is not installed."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: JavaScript syntax is checked by the browser test only")
    proc = subprocess.run(
        [node, "--input-type=module", "--check"],
        input=path.read_text(encoding="utf-8"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"{path.name}: {proc.stderr}"


def _exports(js: str) -> set[str]:
    names = set(re.findall(r"export\s+(?:async\s+)?(?:function|const|let|class)\s+(\w+)", js))
    for group in re.findall(r"export\s*\{([^}]*)\}", js):
        names |= {n.strip().split(" as ")[-1] for n in group.split(",") if n.strip()}
    return names


@pytest.mark.parametrize("path", sorted(STATIC.glob("*.js")), ids=lambda p: p.name)
def test_module_imports_resolve(path: Path) -> None:
    """Every relative import exists and exports the names imported from it."""
    js = path.read_text(encoding="utf-8")
    for names, spec in re.findall(r"import\s*\{([^}]*)\}\s*from\s*[\"']([^\"']+)[\"']", js):
        assert spec.startswith("./"), f"{path.name}: import {spec!r} must be relative"
        target = (path.parent / spec).resolve()
        assert target.is_file(), f"{path.name} imports {spec}, which does not exist"
        wanted = {n.strip() for n in names.split(",") if n.strip()}
        missing = wanted - _exports(target.read_text(encoding="utf-8"))
        assert not missing, f"{path.name} imports {sorted(missing)} that {spec} does not export"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_ids_used_by_script_exist(page: str) -> None:
    """Every #id the page's script looks up is in the page (catches renames on one side)."""
    ids = set(_parse(page).ids())
    js = (STATIC / PAGES[page]).read_text(encoding="utf-8")
    used = set(re.findall(r"""\$\(\s*["']#([\w-]+)""", js))
    used |= set(re.findall(r"""getElementById\(\s*["']([\w-]+)["']\)""", js))
    used |= set(re.findall(r"""querySelector(?:All)?\(\s*["']#([\w-]+)""", js))
    created = set(re.findall(r"""\bid:\s*["']([\w-]+)["']""", js))  # elements the script makes
    missing = used - ids - created
    assert not missing, f"{PAGES[page]} looks up {sorted(missing)}, not in {page}"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_basics_and_accessibility(page: str) -> None:
    parsed = _parse(page)
    html = parsed.all("html")
    assert html and html[0].get("lang"), f"{page}: <html> needs a lang attribute"
    metas = parsed.all("meta")
    assert any(m.get("name") == "viewport" for m in metas), f"{page}: no viewport meta"
    csp = [m for m in metas if (m.get("http-equiv") or "").lower() == "content-security-policy"]
    assert csp, f"{page}: no Content-Security-Policy meta"
    policy = csp[0]["content"] or ""
    for directive in ("default-src 'self'", "connect-src 'self'", "media-src 'self'"):
        assert directive in policy, f"{page}: CSP lacks {directive!r}"
    assert any(m.get("name") == "referrer" and m.get("content") == "no-referrer" for m in metas)
    assert parsed.all("title"), f"{page}: no <title>"
    assert parsed.all("h1"), f"{page}: no <h1>"
    assert parsed.inline_scripts == 0, f"{page}: inline <script> (blocked by the CSP)"
    ids = parsed.ids()
    assert len(ids) == len(set(ids)), (
        f"{page}: duplicate ids {sorted({i for i in ids if ids.count(i) > 1})}"
    )
    for tag, attrs in parsed.tags:
        assert "style" not in attrs, f"{page}: inline style on <{tag}> (blocked by the CSP)"
        assert not any(k.startswith("on") for k in attrs), f"{page}: inline handler on <{tag}>"
    for button in parsed.all("button"):
        assert button.get("type") in ("button", "submit"), f"{page}: <button> without a type"
    labelled = {a.get("for") for a in parsed.all("label")}
    for tag in ("input", "textarea", "select"):
        for field in parsed.all(tag):
            assert field.get("id") in labelled or field.get("aria-label"), (
                f"{page}: <{tag} id={field.get('id')!r}> has no label"
            )
    for canvas in parsed.all("canvas"):
        assert canvas.get("role") == "img" and canvas.get("aria-label"), (
            f"{page}: unlabelled canvas"
        )


def test_viewer_has_the_required_parts() -> None:
    parsed = _parse("viewer.html")
    text = " ".join(" ".join(parsed.text).split())
    assert DEMO_BANNER in text.lower(), "the random-demo banner text is missing"
    banner = next(a for t, a in parsed.tags if a.get("id") == "demo-banner")
    assert banner.get("role") == "alert" and "hidden" in banner, "banner must be a hidden alert"
    ids = set(parsed.ids())
    for needed in ("video", "steps", "timeline", "heatmap", "dl-json", "dl-csv", "dl-vtt"):
        assert needed in ids, f"viewer.html lacks #{needed}"
    js = (STATIC / "viewer.js").read_text(encoding="utf-8")
    # the track loads from the job's signed link (the API's "links")
    for needle in ('kind: "chapters"', '"aria-current"', 'mediaUrl("vtt")', "similarity=1"):
        assert needle in js, f"viewer.js lacks {needle}"


def test_index_has_upload_form() -> None:
    parsed = _parse("index.html")
    inputs = {a.get("name"): a for a in parsed.all("input")}
    for name in ("video", "protocol", "annotations"):
        assert inputs.get(name, {}).get("type") == "file", f"upload form lacks a {name} file input"
    assert "required" in inputs["video"] and "required" in inputs["protocol"]
    assert "required" not in inputs["annotations"]


def test_css_has_focus_styles_and_narrow_layout() -> None:
    css = (STATIC / "style.css").read_text(encoding="utf-8")
    assert ":focus-visible" in css
    assert re.search(r"@media\s*\(max-width:\s*\d+px\)", css), "no narrow-screen media query"
    assert '[aria-current="step"]' in css, "the current step is not styled"


def test_no_token_in_urls_of_pages() -> None:
    """The token travels in sessionStorage and headers, never in a URL: media and download URLs
    are the signed links the API returns (the server refuses ?token= anyway)."""
    js = "".join(
        (STATIC / n).read_text(encoding="utf-8") for n in ("app.js", "jobs.js", "viewer.js")
    )
    assert "sessionStorage" in js and "localStorage" not in js
    assert "replaceState" in js, "the #token fragment must be removed from the address bar"
    assert not re.search(r"""searchParams\.(set|append)\(\s*["']token""", js)
    assert not re.search(r"""[?&]token=""", js), "a script puts the token in a URL"


# ---- scripts/ensure_test_deps.py ----------------------------------------------------------


def _ensure_module():
    spec = importlib.util.spec_from_file_location(
        "ensure_test_deps", ROOT / "scripts" / "ensure_test_deps.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ensure_deps_reports_missing_playwright(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _ensure_module()
    real = importlib.util.find_spec
    monkeypatch.setattr(
        mod.importlib.util, "find_spec", lambda n, *a: None if n == "playwright" else real(n, *a)
    )
    msg = mod.ensure_playwright()
    assert msg and "playwright" in msg and "pip install" in msg


def test_ensure_deps_no_install_when_present(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mod = _ensure_module()
    fake = tmp_path / "chromium"
    fake.write_text("")
    monkeypatch.setattr(mod, "CHROMIUM", fake)
    monkeypatch.setattr(mod, "_run", lambda cmd: pytest.fail(f"ran {cmd} although present"))
    assert mod.ensure_chromium() is None


def test_ensure_deps_fails_clearly_without_privileges(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mod = _ensure_module()
    monkeypatch.setattr(mod, "CHROMIUM", tmp_path / "missing")
    monkeypatch.setattr(mod, "_privilege_prefix", lambda: None)
    monkeypatch.setattr(mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    msg = mod.ensure_chromium()
    assert msg and "apt-get install -y chromium" in msg
    monkeypatch.setattr(mod, "ensure_playwright", lambda: None)
    assert mod.main() == 1


def test_ensure_deps_runs_apt_update_then_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mod = _ensure_module()
    target = tmp_path / "chromium"
    ran: list[list[str]] = []

    def fake_run(cmd: list[str]) -> None:
        ran.append(cmd)
        if "install" in cmd:
            target.write_text("")

    monkeypatch.setattr(mod, "CHROMIUM", target)
    monkeypatch.setattr(mod, "_privilege_prefix", lambda: [])
    monkeypatch.setattr(mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(mod, "_run", fake_run)
    assert mod.ensure_chromium() is None
    assert [c[:2] for c in ran] == [["apt-get", "update"], ["apt-get", "install"]]
    assert "-y" in ran[1] and "chromium" in ran[1]
    assert mod.APT_ENV["DEBIAN_FRONTEND"] == "noninteractive"


def test_ensure_deps_installs_prometheus_and_promtool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Debian's prometheus package brings both binaries the metrics and alert tests run."""
    mod = _ensure_module()
    server, tool = tmp_path / "prometheus", tmp_path / "promtool"
    ran: list[list[str]] = []

    def fake_run(cmd: list[str]) -> None:
        ran.append(cmd)
        if "install" in cmd:
            server.write_text("")
            tool.write_text("")

    monkeypatch.setattr(mod, "PROMETHEUS", server)
    monkeypatch.setattr(mod, "PROMTOOL", tool)
    monkeypatch.setattr(mod, "_privilege_prefix", lambda: [])
    monkeypatch.setattr(mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(mod, "_run", fake_run)
    assert mod.ensure_prometheus() is None
    assert ran[-1][-1] == "prometheus" and len(ran) == 2  # one install gives both
    server.unlink()
    monkeypatch.setattr(mod, "_privilege_prefix", lambda: None)
    msg = mod.ensure_prometheus()
    assert msg and "apt-get install -y prometheus" in msg

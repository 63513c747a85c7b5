"""The device side: verify the folders, check versions and requirements, merge namespaces."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from .config import (
    DEVICE_TOOLS,
    INSTALL_LIST,
    JOINED,
    MIB,
    NVCUVID,
    TESTED_HERE,
    normalise,
    packaging_modules,
)
from .packing import load_manifest, sha256_of


def verify_kit(kit: Path, manifest: dict, join: bool = True) -> tuple[int, list[str]]:
    """Check the carried folders, join split wheels into kit/joined, check every sha256, and
    list the wheels to install (exactly the manifest's) in kit/install.txt.

    Returns (code, messages): 0 all good, 3 a folder is missing (the machine went cold),
    4 a file is missing or a sha256/size differs.
    """
    missing = [f["name"] for f in manifest["folders"] if not (kit / f["name"]).is_dir()]
    if missing:
        return 3, [f"missing folders: {' '.join(missing)} (the machine went cold: start over)"]
    problems: list[str] = []
    verified: list[Path] = []
    joined = kit / JOINED
    for wheel in manifest["wheels"]:
        if wheel["parts"]:
            paths = [kit / p["folder"] / p["file"] for p in wheel["parts"]]
            absent = [str(p) for p in paths if not p.is_file()]
            if absent:
                problems.append(f"missing parts: {' '.join(absent)}")
                continue
            target = joined / wheel["file"]
            if join:
                joined.mkdir(exist_ok=True)
                with open(target, "wb") as out:
                    for p in paths:
                        with open(p, "rb") as fh:
                            shutil.copyfileobj(fh, out, MIB)
            paths = [target]
        else:
            paths = [kit / wheel["folder"] / wheel["file"]]
            if not paths[0].is_file():
                problems.append(f"missing wheel: {paths[0]}")
                continue
        size = sum(p.stat().st_size for p in paths)
        if size != wheel["size"]:
            problems.append(f"{wheel['file']}: {size} bytes, manifest says {wheel['size']}")
        elif sha256_of(paths) != wheel["sha256"]:
            problems.append(f"{wheel['file']}: sha256 differs from the manifest")
        else:
            verified.append(paths[0])
    if problems:
        return 4, problems
    (kit / INSTALL_LIST).write_text("".join(f"{p}\n" for p in verified))
    return 0, problems


def installed_versions() -> dict[str, str]:
    """{normalised name: version} of every distribution on sys.path, first one wins."""
    import importlib.metadata as md

    out: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(normalise(name), dist.version)
    return out


def unmet(wanted: Iterable[tuple[str, str, str]], have: dict[str, str]) -> list[str]:
    """[(name, specifier, by)] not satisfied by `have` ({normalised name: version})."""
    _, specifiers, version = packaging_modules()
    out = []
    for name, spec, by in wanted:
        got = have.get(normalise(name))
        if got is None:
            out.append(f"{by} needs {name}{spec}: not installed")
        elif spec and not specifiers.SpecifierSet(spec).contains(
            version.Version(got), prereleases=True
        ):
            out.append(f"{by} needs {name}{spec}: {name} {got} here")
    return out


EXTEND_PATH = "__path__ = __import__('pkgutil').extend_path(__path__, __name__)"


def trivial_init(text: str) -> bool:
    """True for an __init__.py of only comments, blank lines and an extend_path line."""
    lines = [ln.strip() for ln in text.splitlines()]
    return all(not ln or ln.startswith("#") or "extend_path(" in ln for ln in lines)


def merge_namespaces(target: Path, path: list[str]) -> list[str]:
    """Let a top-level package split between `target` and another `path` entry import from both.

    Wheels such as nvidia-nvjpeg2k-cu13 ship an empty nvidia/__init__.py, which would make
    target/nvidia a regular package hiding the device's nvidia/* (or the device's hiding ours).
    Where either side has an __init__.py and ours is trivial, ours gets pkgutil's extend_path.
    Returns the packages changed.
    """
    changed = []
    target = target.resolve()
    others = [Path(p) for p in path if p and Path(p).is_dir() and Path(p).resolve() != target]
    for pkg in sorted(target.iterdir()):
        if not pkg.is_dir() or not pkg.name.isidentifier():
            continue
        elsewhere = [o / pkg.name for o in others if (o / pkg.name).is_dir()]
        if not elsewhere:
            continue
        init = pkg / "__init__.py"
        text = init.read_text() if init.is_file() else ""
        if not init.is_file() and not any((e / "__init__.py").is_file() for e in elsewhere):
            continue  # namespace packages on both sides merge by themselves
        if not trivial_init(text) or EXTEND_PATH in text:
            continue
        init.write_text(
            text + ("\n" if text and not text.endswith("\n") else "") + EXTEND_PATH + "\n"
        )
        changed.append(pkg.name)
    return changed


def namespaces(args: argparse.Namespace) -> int:
    changed = merge_namespaces(Path(args.target), sys.path)
    print(f"namespaces: extend_path added to {', '.join(changed) or 'none'}")
    return 0


def verify(args: argparse.Namespace) -> int:
    kit = Path(args.kit)
    manifest = load_manifest(kit)
    code, problems = verify_kit(kit, manifest)
    for p in problems:
        print(p)
    if code == 0:
        joined = sum(bool(w["parts"]) for w in manifest["wheels"])
        print(f"verify: {len(manifest['wheels'])} wheels, sha256 ok ({joined} joined)")
    return code


def nvcuvid_loads() -> str | None:
    """The name of the NVDEC library that loads here, or None."""
    import ctypes

    for name in NVCUVID:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return name
    return None


def device_problems(
    kit_python: str,
    python: tuple[int, int] = sys.version_info[:2],
    nvcuvid: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    tools: Iterable[str] = DEVICE_TOOLS,
) -> list[str]:
    """What this machine lacks for the kit's last call: the Python version its wheels were
    resolved for, libnvcuvid (`nvcuvid`: the name that loaded, None if none), every tool."""
    out = []
    here = f"{python[0]}.{python[1]}"
    if kit_python and here != kit_python:
        out.append(
            f"python3 is {here}, the kit's wheels are for {kit_python}: rebuild with "
            f"`build --python python{here}` (and PYTHON_VERSION) before spending device time"
        )
    if nvcuvid is None:
        out.append(
            "libnvcuvid (NVDEC) does not load: the image lacks the driver's video capability "
            "(NVIDIA_DRIVER_CAPABILITIES=video); DALI cannot decode on this machine"
        )
    for tool in tools:
        if which(tool) is None:
            out.append(f"`{tool}` is not on PATH; the kit's last call runs it")
    return out


def version_drift(have: dict[str, str], tested: dict[str, str] = TESTED_HERE) -> list[str]:
    """Device packages whose version differs from the one this box tested."""
    return [
        f"{name} {have[name]} here, {version} tested"
        for name, version in sorted(tested.items())
        if name in have and have[name] != version
    ]


def precheck(args: argparse.Namespace) -> int:
    """Call 1 (and the last call): abort with 6 unless the device has what the last call needs;
    list the device's versions of what the carried wheels need (unmet ones are warnings)."""
    manifest = load_manifest(Path(args.kit))
    have = installed_versions()
    if args.freeze:
        Path(args.freeze).write_text("".join(f"{n}=={v}\n" for n, v in sorted(have.items())))
    wanted = [(r["name"], r["specifier"], r["by"]) for r in manifest["requires_of_device"]]
    bad = unmet(wanted, have)
    for b in bad:
        print(f"precheck: UNMET {b}")
    print(f"precheck: {len(bad)} of {len(wanted)} requirements on device packages unmet")
    for d in version_drift(have):
        print(f"precheck: differs from this box's tests: {d}")
    problems = device_problems(manifest.get("python", ""), nvcuvid=nvcuvid_loads())
    for p in problems:
        print(f"precheck: ABORT {p}")
    if problems:
        print("precheck: aborting now rather than in the last call")
        return 6
    print(f"precheck: python {sys.version.split()[0]}, {nvcuvid_loads()}, tools ok")
    return 0


def deps(args: argparse.Namespace) -> int:
    """After install: every carried wheel's requirements against what is importable now."""
    import importlib.metadata as md

    manifest = load_manifest(Path(args.kit))
    reqs = packaging_modules()[0]
    have = installed_versions()
    wanted = []
    missing = []
    for wheel in manifest["wheels"]:
        try:
            dist = md.distribution(wheel["name"])
        except md.PackageNotFoundError:
            missing.append(f"{wheel['name']} is not installed")
            continue
        for text in dist.requires or []:
            r = reqs.Requirement(text)
            if r.marker is None or any(
                r.marker.evaluate({"extra": e}) for e in ["", *wheel.get("extras", [])]
            ):
                wanted.append((r.name, str(r.specifier), wheel["name"]))
    bad = missing + unmet(wanted, have)
    for b in bad:
        print(f"deps: {b}")
    print(f"deps: {len(bad)} unmet requirement(s) of {len(manifest['wheels'])} carried wheels")
    return 1 if bad and args.strict else 0

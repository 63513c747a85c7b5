"""`build`: resolve with pip what the device lacks, download it and lay out .whl/c1..cN."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import zipfile
from collections.abc import Iterable
from pathlib import Path

from .config import (
    DEFAULT_FREEZE,
    DEVICE_PYTHON,
    DEVICE_VERSIONS,
    DOWNLOAD,
    JOINED,
    KIT,
    KIT_LIGHT,
    LOCAL_WHEEL_DIRS,
    MANIFEST,
    MIB,
    PLATFORMS,
    PYTHON_VERSION,
    ROOT,
    kit_requirements,
    normalise,
    on_device,
    packaging_modules,
)
from .packing import make_manifest, pack, sha256_of, write_parts

TARGET_ENV = {
    "python_version": PYTHON_VERSION,
    "python_full_version": DEVICE_PYTHON,
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


def stub_version(version: str) -> str:
    """A version no index has, equal to `version` for every specifier without a local label."""
    return version if "+" in version else f"{version}+stub"


def stub_wheel(directory: Path, name: str, version: str) -> Path:
    """A wheel with only metadata: pip takes it for `name==version` and stops there."""
    dist = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    path = directory / f"{dist}-py3-none-any.whl"
    info = f"{dist}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: device_kit\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for f, text in files.items():
            zf.writestr(f, text)
        zf.writestr(f"{info}/RECORD", record)
    return path


def read_freeze(path: Path) -> dict[str, str]:
    """`name==version` lines (pip freeze / $OUT/device_freeze.txt) of device packages."""
    out = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and on_device(name) and version:
            out[normalise(name)] = version.strip()
    return out


def target_args(platforms: list[str]) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for p in platforms:
        args += ["--platform", p]
    return args


def find_python() -> str:
    """A Python 3.12 to run pip with (so markers are evaluated for 3.12), else this one."""
    cands = [shutil.which("python3.12")]
    cands += [str(p) for p in sorted(Path("/root/.pyenv/versions").glob("3.12*/bin/python3.12"))]
    for cand in cands:
        if not cand:
            continue
        try:
            out = subprocess.run(
                [cand, "-c", "import sys, pip; print(sys.version_info[:2] == (3, 12))"],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out == "True":
            return cand
    return sys.executable


def resolve(
    python: str, platforms: list[str], work: Path, requirements: list[str], pins: dict[str, str]
) -> list[dict]:
    """pip's dry-run report of the whole closure, the device's known versions as stubs."""
    stubs = work / "stubs"
    stubs.mkdir()
    for name, version in pins.items():
        stub_wheel(stubs, name, stub_version(version))
    links = ["--find-links", str(stubs)]
    links += [x for d in LOCAL_WHEEL_DIRS if Path(d).is_dir() for x in ("--find-links", d)]
    report = work / "report.json"
    cmd = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    cmd += ["--report", str(report), *target_args(platforms), "--target", str(work / "t")]
    cmd += [*links, *requirements, *(f"{n}=={stub_version(v)}" for n, v in pins.items())]
    print(f"resolving {len(requirements)} requirements ({len(pins)} device stand-ins)", flush=True)
    if subprocess.run(cmd).returncode:
        raise SystemExit(
            "pip found no versions that fit the device's (its ERROR lines above name them); "
            "`build --carry NAME` carries device package NAME too, in a version that fits"
        )
    return json.loads(report.read_text())["install"]


def _applies(req, extras: Iterable[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**TARGET_ENV, "extra": e}) for e in ["", *extras])


def closure(
    items: list[dict], requirements: list[str], force: Iterable[str] = ()
) -> dict[str, set[str]]:
    """Packages to carry: reachable from `requirements` without passing through a device
    package (those in `force` count as not on the device).
    Returns {normalised name: names of what needs it ("" = asked for directly)}."""
    forced = {normalise(n) for n in force}
    reqs = packaging_modules()[0]
    by_name = {normalise(i["metadata"]["name"]): i for i in items}
    needed_by: dict[str, set[str]] = {}
    todo: list[tuple[str, set[str], str]] = []
    for text in requirements:
        r = reqs.Requirement(text)
        todo.append((normalise(r.name), set(r.extras), ""))
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras, parent = todo.pop()
        if on_device(name) and name not in forced:
            continue
        needed_by.setdefault(name, set()).add(parent)
        key = (name, frozenset(extras))
        if key in seen:
            continue
        seen.add(key)
        if name not in by_name:
            raise SystemExit(f"{name} is needed but pip's report has no {name}")
        for text in by_name[name]["metadata"].get("requires_dist") or []:
            r = reqs.Requirement(text)
            if _applies(r, extras):
                todo.append((normalise(r.name), set(r.extras), name))
    return needed_by


def requires_of_device(items: list[dict], carried: dict[str, set[str]]) -> list[dict]:
    """What the carried packages require of the device's own packages (checked on call 1)."""
    reqs = packaging_modules()[0]
    out = {}
    for item in items:
        name = normalise(item["metadata"]["name"])
        if name not in carried:
            continue
        extras = item.get("requested_extras") or []
        for text in item["metadata"].get("requires_dist") or []:
            r = reqs.Requirement(text)
            if on_device(r.name) and normalise(r.name) not in carried and _applies(r, extras):
                dep = normalise(r.name)
                out[(dep, str(r.specifier), name)] = {
                    "name": dep,
                    "specifier": str(r.specifier),
                    "by": name,
                }
    return [out[k] for k in sorted(out)]


def ensure_ignored(root: Path = ROOT) -> None:
    """Append /.whl/ to .git/info/exclude when absent there."""
    try:
        rel = subprocess.run(
            ["git", "rev-parse", "--git-path", "info/exclude"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return
    exclude = root / rel
    text = exclude.read_text() if exclude.exists() else ""
    if f"/{KIT}/" not in text.split():
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with open(exclude, "a") as fh:
            fh.write(("" if not text or text.endswith("\n") else "\n") + f"/{KIT}/\n")


def wheel_file(item: dict) -> str:
    return urllib.parse.unquote(item["download_info"]["url"].rsplit("/", 1)[-1])


def download(python: str, platforms: list[str], items: list[dict], dest: Path) -> dict[str, Path]:
    """Fetch each wheel (exact version, --no-deps) into `dest`; {file name: path}."""
    dest.mkdir(parents=True, exist_ok=True)
    need = []
    for item in items:
        fname = wheel_file(item)
        if (dest / fname).is_file():
            continue
        local = [Path(d) / fname for d in LOCAL_WHEEL_DIRS if (Path(d) / fname).is_file()]
        if local:
            shutil.copyfile(local[0], dest / fname)
            continue
        need.append(f"{item['metadata']['name']}=={item['metadata']['version']}")
    if need:
        cmd = [python, "-m", "pip", "download", "--quiet", "--no-deps"]
        cmd += [*target_args(platforms), "-d", str(dest), *need]
        print(f"downloading {len(need)} wheels", flush=True)
        subprocess.run(cmd, check=True)
    got = {}
    for item in items:
        fname = wheel_file(item)
        if not (dest / fname).is_file():
            raise SystemExit(f"pip did not download {fname}")
        got[fname] = dest / fname
    return got


def build(args: argparse.Namespace) -> int:
    kit_name = KIT_LIGHT if args.light else KIT
    requirements = kit_requirements(kit_name)
    kit = ROOT / kit_name
    kit.mkdir(parents=True, exist_ok=True)
    ensure_ignored()
    platforms = PLATFORMS + [f"manylinux_2_{n}_x86_64" for n in args.extra_glibc]
    forced = {normalise(n) for n in args.carry}
    pins = dict(DEVICE_VERSIONS)
    freeze = args.device_freeze or (DEFAULT_FREEZE if DEFAULT_FREEZE.is_file() else None)
    if freeze:
        pins.update(read_freeze(Path(freeze)))
        print(f"device versions from {freeze}")
    pins = {n: v for n, v in pins.items() if n not in forced}
    python = args.python or find_python()
    ver = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True)
    print(f"pip: {ver.stdout.strip()}")
    with tempfile.TemporaryDirectory() as tmp:
        items = resolve(python, platforms, Path(tmp), requirements, pins)
    names = [normalise(i["metadata"]["name"]) for i in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SystemExit(f"more than one version of: {', '.join(dupes)}")
    needed_by = closure(items, requirements, forced)
    carried = [i for i in items if normalise(i["metadata"]["name"]) in needed_by]
    dropped = sorted(
        n for n in names if not on_device(n) and n not in needed_by
    )  # needed only by device packages
    files = download(python, platforms, carried, kit / DOWNLOAD)
    wheels: dict[str, dict] = {}
    for item in carried:
        fname, meta = wheel_file(item), item["metadata"]
        name = normalise(meta["name"])
        wheels[fname] = {
            "name": name,
            "version": meta["version"],
            "size": files[fname].stat().st_size,
            "sha256": sha256_of([files[fname]]),
            "extras": sorted(item.get("requested_extras") or []),
            "needed_by": sorted(n or "(asked for)" for n in needed_by[name]),
        }
    for stale in (kit / DOWNLOAD).iterdir():
        if stale.name not in files:
            stale.unlink()
    limit = int(args.folder_mib * MIB)
    folders = pack({f: w["size"] for f, w in wheels.items()}, limit=limit)
    for old in kit.glob("c[0-9]*"):
        shutil.rmtree(old)
    shutil.rmtree(kit / JOINED, ignore_errors=True)
    for i in range(1, len(folders) + 1):
        (kit / f"c{i}").mkdir()
    manifest = make_manifest(
        folders,
        wheels,
        {
            "python": PYTHON_VERSION,
            "platforms": platforms,
            "requirements": requirements,
            "carried_although_on_device": sorted(forced),
            "device_versions": pins,
            "requires_of_device": requires_of_device(items, needed_by),
        },
        limit=limit,
    )
    for wheel in manifest["wheels"]:
        src = files[wheel["file"]]
        if wheel["parts"]:
            write_parts(src, [(kit / p["folder"] / p["file"], p["size"]) for p in wheel["parts"]])
        else:
            dest = kit / wheel["folder"] / wheel["file"]
            try:
                os.link(src, dest)
            except OSError:
                shutil.copyfile(src, dest)
    (kit / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    also = f"; carried although on the device: {', '.join(sorted(forced))}" if forced else ""
    print(f"\ncarried: {len(wheels)} wheels{also}")
    for w in manifest["wheels"]:
        print(
            f"  {w['name']}=={w['version']}  {w['size'] / MIB:.1f} MiB"
            f"  <- {', '.join(w['needed_by'])}"
        )
    if dropped:
        print(f"not carried, needed only by device packages: {', '.join(dropped)}")
    print(f"\nfolders: {len(folders)}, {manifest['total_bytes'] / MIB:.1f} MiB in all")
    for f in manifest["folders"]:
        print(f"  {kit_name}/{f['name']}: {f['bytes'] / MIB:.1f} MiB, {len(f['files'])} files")
    light = " --light" if args.light else ""
    print(f"\nwrote {kit_name}/{MANIFEST}; next: python3 scripts/device_kit plan{light}")
    return 0

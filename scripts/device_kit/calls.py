"""The device calls in order: their carry, timeout and command, and `plan`, which prints them."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from .config import (
    CALL_LIMIT,
    COMMAND_BUDGET,
    COMMAND_LIMIT,
    INSTALL_LIST,
    KIT,
    KIT_LIGHT,
    MANIFEST,
    MIB,
    ROOT,
    kit_check_args,
)
from .packing import load_manifest


def check_command(command: str) -> str:
    """Return `command`, or raise ValueError when it is over this script's length budget."""
    if len(command) > COMMAND_BUDGET:
        raise ValueError(
            f"device command is {len(command)} chars; the budget is {COMMAND_BUDGET} "
            f"(the tool's limit is {COMMAND_LIMIT})"
        )
    return command


def precheck_step(kit: str = KIT) -> str:
    """The device check that aborts a call (exit 6) unless the device has what the last call
    needs: the kit's Python version, libnvcuvid, every tool; it saves the device's packages."""
    return (
        f"python3 scripts/device_kit precheck --kit {kit} --freeze $OUT/device_freeze.txt "
        "|| exit $?"
    )


def final_command(names: list[str], kit: str = KIT, check_args: str | None = None) -> str:
    """The last call: earlier folders present (else exit 3), the device precheck (else exit 6),
    verify, install, run scripts/gpu_check.py (no `make`: the image may lack it)."""
    args = kit_check_args(kit) if check_args is None else check_args
    earlier = " ".join(f"{kit}/{n}" for n in names[:-1])
    steps = [
        "m=",
        f'for d in {earlier}; do [ -d $d ] || m="$m $d"; done' if earlier else "",
        '[ -z "$m" ] || { echo "MISSING:$m - the machine went cold: start over"; exit 3; }',
        f"du -sh {kit}",
        precheck_step(kit),
        f"python3 scripts/device_kit verify --kit {kit} || exit $?",
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
        f"--target /tmp/site $(cat {kit}/{INSTALL_LIST}) || exit 5",
        "export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0",
        "python3 scripts/device_kit namespaces /tmp/site",
        f"python3 scripts/device_kit deps --kit {kit}",
        "nvidia-smi -L",
        'echo "set up in ${SECONDS}s"',
        "set -o pipefail",
        f"PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py {args} 2>&1 | tee $OUT/gpu_check.log",
    ]
    return check_command("; ".join(s for s in steps if s))


def device_calls(manifest: dict, run_timeout_s: int = 540, kit: str = KIT) -> list[dict]:
    """The device calls in order: one per folder; the last verifies, installs and runs.

    Every call also carries the manifest (30 KB). Call 1 aborts (exit 6) unless the device has
    what the last call needs (`precheck`), and writes its package list to
    $OUT/device_freeze.txt, before any more device time is spent.
    """
    names = [f["name"] for f in manifest["folders"]]
    if not names:
        raise ValueError("the manifest has no folders")
    calls = []
    for i, name in enumerate(names[:-1]):
        cmd = f"ls -la {kit}/{name} | tail -3; du -sh {kit}"
        if i == 0:
            cmd = f"{precheck_step(kit)}; {cmd}"
        calls.append(
            {
                "carry": [f"{kit}/{name}", f"{kit}/{MANIFEST}"],
                "timeout_s": 90,
                "command": check_command(cmd),
            }
        )
    calls.append(
        {
            "carry": [f"{kit}/{names[-1]}", f"{kit}/{MANIFEST}"],
            "timeout_s": run_timeout_s,
            "command": final_command(names, kit),
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


def plan(args: argparse.Namespace) -> int:
    kit_name = KIT_LIGHT if args.light else KIT
    manifest = load_manifest(ROOT / kit_name)
    calls = device_calls(manifest, args.timeout, kit_name)
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

"""Carry the wheels `make gpu-check` needs to an offline GPU machine, in <= 55 MiB device calls.

The device machine has no internet and each call to it carries at most 64 MiB (working tree
included), so the wheels it lacks travel as folders ``.whl/c1``, ``.whl/c2``, ... sent in quick
successive calls (ignored paths carried earlier stay while the machine is warm), and the last
call verifies, installs and runs the check. Stdlib only; pip runs as a subprocess.

    python3 scripts/device_kit build       # here, with internet: resolve, download, pack
    python3 scripts/device_kit build --light   # decode + embed + align only (.whl/light)
    python3 scripts/device_kit plan        # the exact device calls, in order
    python3 scripts/device_kit precheck    # device, call 1: Python, libnvcuvid, tools (else 6)
    python3 scripts/device_kit verify      # device: folders present, parts joined, sha256
    python3 scripts/device_kit namespaces /tmp/site   # device: merge nvidia/ and the like
    python3 scripts/device_kit deps        # device, after install: requirement check

See docs/GPU_RUN.md.
"""

from __future__ import annotations

import argparse

from .calls import plan
from .checks import deps, namespaces, precheck, verify
from .config import FOLDER_LIMIT, KIT, MIB, ROOT
from .wheels import build


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
    light = "the light kit (.whl/light): DALI, PyAV, open_clip; no Ray, Redis or web stack"
    b.add_argument("--light", action="store_true", help=light)
    p = sub.add_parser("plan", help="print the device calls in order")
    p.add_argument("--json", action="store_true", help="one JSON object per call")
    p.add_argument("--timeout", type=int, default=540, help="timeout_s of the last call")
    p.add_argument("--light", action="store_true", help=light)
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

"""Make sure the tests that run real tools can run: Debian `chromium` at /usr/bin/chromium and the
`playwright` package (browser tests), Debian `prometheus` and `promtool` (the live Prometheus
and alert-rule tests), Debian's `nginx` (tests/test_edge.py runs it in front of `biovl serve`).

Called by `make test` before pytest. Installs a missing Debian package with apt-get (root, or
passwordless sudo, needed); never runs `playwright install` (the wheel bundles its driver, and
the test drives the system chromium); never starts the system nginx (the test runs its own nginx
process on free ports). Exits non-zero with a message naming the fix when
something cannot be provided.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM = Path(os.environ.get("BIOVL_CHROMIUM", "/usr/bin/chromium"))
PROMETHEUS = Path(os.environ.get("BIOVL_PROMETHEUS", "/usr/bin/prometheus"))
PROMTOOL = PROMETHEUS.with_name("promtool")
NGINX = Path(os.environ.get("BIOVL_NGINX", "/usr/sbin/nginx"))
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def _say(msg: str) -> None:
    print(f"[ensure_test_deps] {msg}", flush=True)


def _run(cmd: list[str]) -> None:
    """Run ``cmd``, echoing it first; raise CalledProcessError on failure."""
    _say("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, env=APT_ENV)


def _privilege_prefix() -> list[str] | None:
    """[] when root, ["sudo", "-n"] when passwordless sudo works, None otherwise."""
    if os.geteuid() == 0:
        return []
    sudo = shutil.which("sudo")
    if sudo and subprocess.run([sudo, "-n", "true"], capture_output=True).returncode == 0:
        return [sudo, "-n"]
    return None


def ensure_debian_package(binary: Path, package: str) -> str | None:
    """Install Debian ``package`` with apt-get if ``binary`` is missing; an error message or None."""
    if binary.exists():
        _say(f"{package} present: {binary}")
        return None
    fix = f"install it by hand: apt-get install -y {package}"
    if not shutil.which("apt-get"):
        return f"{binary} is missing and apt-get is not available: {fix}"
    prefix = _privilege_prefix()
    if prefix is None:
        return f"{binary} is missing and this user cannot run apt-get: run `sudo apt-get install -y {package}`"
    _say(f"{binary} missing: installing Debian {package} with apt-get")
    try:
        _run([*prefix, "apt-get", "update", "-q"])
        _run([*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", package])
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"apt-get could not install {package} ({exc}); {fix}"
    if not binary.exists():
        return f"apt-get finished but {binary} does not exist"
    _say(f"installed {binary}")
    return None


def ensure_chromium() -> str | None:
    """Debian chromium for the browser tests."""
    return ensure_debian_package(CHROMIUM, "chromium")


def ensure_prometheus() -> str | None:
    """Debian prometheus (the server and promtool) for the live metrics and alert-rule tests."""
    return ensure_debian_package(PROMETHEUS, "prometheus") or ensure_debian_package(
        PROMTOOL, "prometheus"
    )


def ensure_nginx() -> str | None:
    """Debian nginx for the edge test (it runs its own nginx process on free ports)."""
    return ensure_debian_package(NGINX, "nginx")


def ensure_playwright() -> str | None:
    """Check the playwright Python package is importable; return an error message or None."""
    if importlib.util.find_spec("playwright") is None:
        return (
            f"the `playwright` Python package is missing from {sys.executable}: "
            "pip install -c constraints.txt playwright (do not run `playwright install`)"
        )
    _say("playwright package importable")
    return None


def main() -> int:
    """Check every dependency; non-zero exit with every problem listed."""
    errors = [
        e
        for e in (ensure_chromium(), ensure_playwright(), ensure_prometheus(), ensure_nginx())
        if e
    ]
    for err in errors:
        print(f"[ensure_test_deps] ERROR: {err}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""`python3 scripts/device_kit CMD ...`: the kit's command line, run as a folder (stdlib only)."""

from __future__ import annotations

import sys
from pathlib import Path


def run() -> int:
    """Import the package from the folder above this one and run its `main`."""
    if not __package__:  # run as a folder: sys.path[0] is this folder, its parent is wanted
        sys.path[0] = str(Path(__file__).resolve().parents[1])
    from device_kit import main

    return main()


if __name__ == "__main__":
    sys.exit(run())

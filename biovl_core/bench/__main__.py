"""Dispatch ``python -m biovl_core.bench NAME [args]`` to ``biovl_core.bench.NAME.main(argv)``.

Any module in this package with a ``main(argv)`` is a benchmark; ``all`` runs each in turn.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Sequence

import biovl_core.bench as _package


def available() -> list[str]:
    """Names of the benchmark modules in this package."""
    return sorted(
        m.name
        for m in pkgutil.iter_modules(_package.__path__)
        if not m.name.startswith("_") and m.name not in _package.HELPER_MODULES
    )


def _usage(names: list[str]) -> str:
    """The usage line listing available benchmarks."""
    return f"usage: python -m biovl_core.bench {{{'|'.join([*names, 'all'])}}} [--help | args]"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the named benchmark (or all of them) with the remaining arguments; return an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not args or args[0] in ("-h", "--help"):
        print(_usage(names))
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name == "all":
        codes = [main([n, *rest]) for n in names]
        return max(codes, default=0)
    if name not in names:
        print(f"unknown benchmark {name!r}; available: {', '.join(names)}, all", file=sys.stderr)
        return 2
    module = importlib.import_module(f"biovl_core.bench.{name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

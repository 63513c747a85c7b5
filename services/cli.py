"""The ``biovl`` console command: the core commands (align, eval, bench) plus the service ones.

The core CLI (``biovl_core.cli``) knows nothing of services; this module adds serve, worker,
requeue, tokens, dead and realign to its parser, importing their dependencies only when run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from biovl_core import cli as core_cli
from services.cli_service import add_service_commands, run_service_command


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The subcommand table of the core parser."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def build_parser() -> argparse.ArgumentParser:
    """The full ``biovl`` parser."""
    parser = core_cli.build_parser()
    add_service_commands(_subparsers(parser))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``biovl`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "fn"):
        return run_service_command(args)
    return core_cli.run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())

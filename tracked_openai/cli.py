"""``tracked-openai`` command line. Each command group lives in its own module and registers
itself through ``add_commands(subparsers)``; a handler returns the process exit code.

Exit codes: 0 ok, 1 the command ran and found a problem (e.g. an invalid pricing file),
2 bad arguments, 3 the tracking store is unreachable.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

_COMMAND_MODULES = ("tracked_openai._cli_reports", "tracked_openai._cli_pricing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracked-openai",
        description="Reports, pricing tables and an offline demo for tracked-openai.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            if exc.name != name:
                raise
            continue
        module.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``tracked-openai`` command line. Each command group lives in its own module and registers
itself through ``add_commands(subparsers)``; a handler returns the process exit code.

Exit codes (stable, for scripts): 0 ok, 1 the command ran and found a problem (e.g. an invalid
pricing file), 2 bad arguments (an unknown feature too), 3 the tracking store is missing or
unreachable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

_COMMAND_MODULES = (
    "tracked_openai._cli_reports",
    "tracked_openai._cli_pricing",
    "tracked_openai.budgets._cli",
)

EXIT_USAGE, EXIT_STORE_UNREACHABLE = 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracked-openai",
        description="Reports, pricing tables, a REST API and an offline demo for tracked-openai.",
        epilog="Exit codes: 0 ok, 1 problem found, 2 bad arguments (an unknown feature too), "
        "3 tracking store missing or unreachable (reading never creates a store).",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else MLflow's default ./mlflow.db)",
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
    from .reports import StoreUnavailableError, UnknownFeatureError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tracking_uri:
        # Commands that write (demo) and the library's own sink read the environment, so one
        # flag points every part of this process at the same store.
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    try:
        code: int = args.handler(args)
    except StoreUnavailableError as exc:
        print(f"tracked-openai {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_STORE_UNREACHABLE
    except UnknownFeatureError as exc:
        print(f"tracked-openai {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `tracked-openai report | head`: the reader left; not an error of ours.
        sys.stderr.close()
        return 0
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``tracked-openai`` command line: one app. Each command group lives in its own module
(``reports``, ``pricing``, ``demo``, ``serve``) and registers itself through
``add_commands(subparsers)``; a handler returns the process exit code (``output``: one set of
exit codes and one console for every command).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..budgets import cli as cli_budgets
from ..reports import StoreUnavailableError, UnknownFeatureError
from . import batches as cli_batches
from . import bill as cli_bill
from . import demo as cli_demo
from . import pricing as cli_pricing
from . import reports as cli_reports
from . import serve as cli_serve
from .output import EXIT_INTERRUPTED, EXIT_OK, EXIT_STORE, EXIT_USAGE, error

__all__ = ["main"]

_COMMAND_GROUPS = (cli_reports, cli_pricing, cli_bill, cli_batches, cli_budgets, cli_demo, cli_serve)


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
    for group in _COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tracking_uri:
        # Commands that write (demo) and the library's own sink read the environment, so one
        # flag points every part of this process at the same store.
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    try:
        code: int = args.handler(args)
    except StoreUnavailableError as exc:
        error(args.command, str(exc))
        return EXIT_STORE
    except UnknownFeatureError as exc:
        error(args.command, str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `tracked-openai report | head`: the reader left; not an error of ours.
        sys.stderr.close()
        return EXIT_OK
    return code

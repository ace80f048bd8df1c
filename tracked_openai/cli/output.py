"""What every command shares: its exit codes and the console tables are printed on.

Exit codes (stable, for scripts): 0 ok, 1 the command ran and found a problem (an invalid price
file, an unknown model, records not written), 2 bad arguments (an unknown feature too), 3 the
tracking store is missing or unreachable (reading never creates a store), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_STORE",
    "EXIT_USAGE",
    "error",
    "new_console",
    "store_option",
    "tracking_uri",
    "when_arg",
]

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_STORE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def new_console() -> Any:
    """The console tables go to. Not a terminal (pipes, CI logs): a fixed width, so that a
    table piped to a file keeps whole rows instead of being squeezed to 80 columns."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200, soft_wrap=False)


def error(command: str, message: str) -> None:
    """One line on stderr: ``tracked-openai <command>: error: <message>``."""
    print(f"tracked-openai {command}: error: {message}", file=sys.stderr)


_READ_HELP = (
    "MLflow store to read (default: $MLFLOW_TRACKING_URI, else ./mlflow.db); "
    "a store that does not exist is an error, never created"
)


def store_option(help_text: str = _READ_HELP) -> argparse.ArgumentParser:
    """``--tracking-uri`` accepted after the command name too (``report --tracking-uri X``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--tracking-uri", default=argparse.SUPPRESS, help=help_text)
    return parent


def tracking_uri(args: argparse.Namespace) -> str | None:
    """The ``--tracking-uri`` given (before or after the command name), else ``None``."""
    value: str | None = getattr(args, "tracking_uri", None)
    return value


def when_arg(text: str) -> str:
    """argparse type of ``--since``/``--until``: checked at parse time, so a bad date is a usage
    error (exit 2) like any other bad argument; the text itself is what the command reads."""
    from ..reports.query import parse_when

    try:
        parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text

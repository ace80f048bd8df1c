"""``tracked-openai batches collect``: record finished Batch API jobs no tracked client has read.

Exit codes (see :mod:`tracked_openai.cli`): 0 ok, 1 records could not all be written in time
(they are spooled and replayed later), 2 bad arguments (no ``OPENAI_API_KEY``), 3 the tracking
store or OpenAI is unreachable or refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .cells import usd as _usd
from .output import (
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_STORE,
    EXIT_USAGE,
    error,
    new_console,
    store_option,
    tracking_uri,
    when_arg,
)

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "batches",
        help="Batch API jobs: record the finished ones",
        description="Batch API jobs (see README, 'Batch API').",
    )
    batch_sub = p.add_subparsers(dest="batches_command", metavar="SUBCOMMAND")
    batch_sub.required = True
    c = batch_sub.add_parser(
        "collect",
        parents=[store_option("MLflow store to write to (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")],
        help="record finished batches whose output no tracked client has read",
        description="List the organisation's batches (OPENAI_API_KEY), take the finished ones "
        "created since --since, download the output and error files of those not fully recorded "
        "yet and record each line (priced at batch rates). Lines already recorded, by a tracked "
        "client or an earlier collect, are not recorded again.",
    )
    c.add_argument(
        "--since", type=when_arg, help="batches created from this date: YYYY-MM-DD, ISO datetime, today, 7d"
    )
    c.add_argument(
        "--base-url", default=None, help="OpenAI API base URL (default: $OPENAI_BASE_URL or OpenAI's)"
    )
    c.add_argument("--format", choices=("table", "json"), default="table", dest="fmt")
    c.set_defaults(handler=cmd_collect, command="batches collect")


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int | None, str], None] | None]:
    """A live bar of batches done on stderr when it is a terminal."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("collecting batches"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None)
        yield lambda done, total, batch_id: bar.update(
            task, completed=done, total=total, description=batch_id
        )


def cmd_collect(args: argparse.Namespace) -> int:
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        error(args.command, "OPENAI_API_KEY is not set (batches are listed with the project's API key)")
        return EXIT_USAGE
    import openai

    from .. import reports
    from .._config import settings
    from ..batches.collect import collect

    if not settings.enabled:
        error(
            args.command,
            "tracking is disabled (MLFLOW_ENABLED / TRACKED_OPENAI_ENABLED): nothing would be recorded",
        )
        return EXIT_USAGE
    client = openai.OpenAI(api_key=key, base_url=args.base_url or None)
    try:
        with _progress(args.fmt == "table" and sys.stderr.isatty()) as progress:
            result = collect(
                client,
                since=reports.parse_when(args.since),
                tracking_uri=tracking_uri(args),
                progress=progress,
            )
    except openai.APIError as exc:
        error(args.command, f"OpenAI refused or could not be reached: {type(exc).__name__}: {exc}")
        return EXIT_STORE
    finally:
        client.close()
    if args.fmt == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _render(result)
    if not result.flushed:
        error(args.command, "not every record reached the store in time; the rest are spooled and replayed")
        return EXIT_PROBLEM
    return EXIT_OK


def _render(result: Any) -> None:
    from rich.table import Table

    console = new_console()
    table = Table(title="batches collect", title_justify="left", show_header=False)
    table.add_column()
    table.add_column(justify="right")
    table.add_row("finished batches", f"{result.batches:,}")
    table.add_row("downloaded (not fully recorded)", f"{result.downloaded:,}")
    table.add_row("lines read", f"{result.lines:,}")
    table.add_row("records new", f"{result.new:,}")
    table.add_row("already recorded", f"{result.already:,}")
    table.add_row("error lines (new)", f"{result.errors:,}")
    if result.unreadable:
        table.add_row("unreadable lines", f"{result.unreadable:,}")
    table.add_row("cost of new records (batch rates)", _usd(result.cost_usd))
    if result.unpriced:
        table.add_row("new records unpriced", f"{result.unpriced:,}")
    console.print(table)

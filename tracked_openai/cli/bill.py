"""``tracked-openai reprice|reconcile``: the past under another price table, and our records
against OpenAI's own usage and costs.

Exit codes (see :mod:`tracked_openai.cli`): 0 ok, 1 reconcile found a difference beyond the
tolerance, 2 bad arguments (a price file that does not load, no ``OPENAI_ADMIN_KEY``), 3 the
tracking store or OpenAI's admin API is missing, unreachable or refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..pricing import PricingError
from .cells import NO_VALUE
from .cells import num as _num
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

DEFAULT_STATE = "tracked-openai-reprice.state.json"


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (percent)") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "reprice",
        parents=[store_option()],
        help="recompute stored calls' cost under another price table",
        description="Recompute the cost of stored call records (runs and trace spans, each once, "
        "whatever the mlflow_mode) under another price table and print the difference by feature, "
        "model and day. --write stores the new figures beside the original ones (run metrics "
        "repriced/<version>/cost_usd ..., a trace tag repriced/<version>/<record id> per call span; "
        "never over cost_usd); running "
        "it again writes nothing new, and an interrupted --write resumes from its state file.",
    )
    p.add_argument("--pricing", required=True, metavar="FILE|VERSION",
                   help="a price file or folder (applied over the shipped tables), 'shipped', or "
                   "the shipped table's version")
    p.add_argument("--since", type=when_arg, help="from this date: YYYY-MM-DD, ISO datetime, today, 7d")
    p.add_argument("--until", type=when_arg, help="up to this date (a bare date includes the whole day)")
    p.add_argument("--feature", help="only this feature's calls")
    p.add_argument("--model", help="only calls whose requested or served model is this name")
    p.add_argument("--as-model", metavar="MODEL",
                   help="what-if: price every call as if MODEL had served it (not with --write)")
    p.add_argument("--write", action="store_true", help="store the new figures beside the original")
    p.add_argument("--state", metavar="FILE",
                   help=f"position and running sums, for resuming (default with --write: ./{DEFAULT_STATE})")
    p.add_argument("--restart", action="store_true", help="ignore a saved position and start over")
    p.add_argument("--format", choices=("table", "json"), default="table", dest="fmt")
    p.set_defaults(handler=cmd_reprice)

    p = sub.add_parser(
        "reconcile",
        parents=[store_option()],
        help="compare our records with OpenAI's organization usage and costs",
        description="Read OpenAI's organization Usage API (completions, embeddings, images, audio; "
        "by day, model, project and batch) and Costs API with an admin key ($OPENAI_ADMIN_KEY), "
        "and compare them with our call records per UTC day and model: requests, usage and USD, "
        "in percent. Exit code 1 when a difference is beyond --tolerance; the usual causes are "
        "listed under the table.",
    )
    p.add_argument("--since", type=when_arg, help="first day (default: 7 days ago)")
    p.add_argument("--until", type=when_arg, help="last day, included (default: yesterday)")
    p.add_argument("--project", help="only this OpenAI project (proj_...): the one your tracked app uses")
    p.add_argument("--tolerance", type=_tolerance, default=1.0,
                   help="largest difference in percent that is not a problem (default 1)")
    p.add_argument("--base-url", default=None,
                   help="admin API root (default: $OPENAI_ADMIN_BASE_URL, else https://api.openai.com/v1)")
    p.add_argument("--problems-only", action="store_true", help="list only the rows beyond the tolerance")
    p.add_argument("--format", choices=("table", "json"), default="table", dest="fmt")
    p.set_defaults(handler=cmd_reconcile)


# -- reprice ---------------------------------------------------------------------------------------
@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A live "N records, time" line on stderr when it is a terminal (the total is not known
    without reading every run and span once more)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("repricing"),
        BarColumn(bar_width=None),
        TextColumn("{task.completed:,.0f} records"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("reprice", total=None)
        yield lambda done: bar.update(task, completed=done)


def cmd_reprice(args: argparse.Namespace) -> int:
    from .. import reprice as rp

    state: Path | None = Path(args.state) if args.state else (Path(DEFAULT_STATE) if args.write else None)
    if state is not None and args.restart:
        state.unlink(missing_ok=True)
    try:
        with _progress(args.fmt == "table" and sys.stderr.isatty()) as progress:
            result = rp.reprice(
                args.pricing,
                since=args.since,
                until=args.until,
                feature=args.feature,
                model=args.model,
                as_model=args.as_model,
                write=args.write,
                tracking_uri=tracking_uri(args),
                state_path=state,
                progress=progress,
            )
    except (PricingError, ValueError) as exc:
        error("reprice", str(exc))
        return EXIT_USAGE
    if args.fmt == "json":
        print(json.dumps(result.to_dict(), indent=2))
        return EXIT_OK
    _render_reprice(result, args)
    return EXIT_OK


def _signed_usd(value: Decimal) -> str:
    if not value:
        return "$0"
    return ("+" if value > 0 else "-") + _usd(abs(value))


def _signed_pct(value: float | None) -> str:
    if value is None:
        return NO_VALUE
    if value in (float("inf"), float("-inf")):
        return "new" if value > 0 else "-100%"
    return f"{value:+.2f}%"


def _render_reprice(result: Any, args: argparse.Namespace) -> None:
    from rich.table import Table

    console = new_console()
    t = result.total
    what = f" as if served by {result.as_model}" if result.as_model else ""
    console.print(f"Repriced {t.records:,} call records{what} with price table {result.pricing_version}"
                  + (" (resumed)" if result.resumed else ""))
    totals = Table(show_header=False)
    totals.add_column()
    totals.add_column(justify="right")
    totals.add_row("cost as recorded", _usd(t.before_usd))
    totals.add_row("cost repriced", _usd(t.after_usd))
    totals.add_row("difference", f"{_signed_usd(t.difference_usd)} ({_signed_pct(t.difference_pct)})")
    totals.add_row("records with a cost: recorded / repriced", f"{t.priced_before:,} / {t.priced_after:,}")
    totals.add_row("records whose cost changed", f"{t.changed:,}")
    if args.write:
        totals.add_row("written now / already there", f"{result.written:,} / {result.already_written:,}")
        if result.conflicting:
            totals.add_row("already there with other figures (not overwritten)", f"{result.conflicting:,}")
    console.print(totals)
    for dim in ("feature", "model", "day"):
        table = Table(title=f"by {dim}", title_justify="left")
        for name in (dim, "records", "recorded", "repriced", "difference", "%", "changed"):
            table.add_column(name, justify="left" if name == dim else "right")
        for row in result.rows(dim):
            table.add_row(
                row["key"], _num(row["records"]), _usd(Decimal(row["before_usd"])),
                _usd(Decimal(row["after_usd"])), _signed_usd(Decimal(row["difference_usd"])),
                _signed_pct(row["difference_pct"]), _num(row["changed"]),
            )
        console.print(table)
    if result.conflicting:
        console.print(f"{result.conflicting:,} records already carry figures for version "
                      f"{result.pricing_version} that differ from these: the price file changed "
                      "without its version changing. Give it a new `version:` and run again.")


# -- reconcile -------------------------------------------------------------------------------------
def cmd_reconcile(args: argparse.Namespace) -> int:
    from .. import reconcile as rc

    key = os.environ.get("OPENAI_ADMIN_KEY", "").strip()
    if not key:
        error("reconcile", "OPENAI_ADMIN_KEY is not set: create an admin key at "
             "https://platform.openai.com/settings/organization/admin-keys (ordinary API keys "
             "cannot read organization usage)")
        return EXIT_USAGE
    base_url = args.base_url or os.environ.get("OPENAI_ADMIN_BASE_URL") or rc.DEFAULT_BASE_URL
    try:
        result = rc.reconcile(
            args.since, args.until, fetch=rc.http_fetch(key, base_url), project=args.project,
            tolerance=args.tolerance, tracking_uri=tracking_uri(args),
        )
    except rc.AdminAPIError as exc:
        error("reconcile", f"OpenAI admin API: {exc}")
        return EXIT_STORE
    except ValueError as exc:
        error("reconcile", str(exc))
        return EXIT_USAGE
    if args.fmt == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _render_reconcile(result, args.problems_only)
    return EXIT_OK if result.ok else EXIT_PROBLEM


def _amount(value: float | int, unit: str) -> str:
    if unit == "seconds":
        return f"{value:,.1f}s"
    return f"{int(value):,}" + ("" if unit == "tokens" else f" {unit}")


def _render_reconcile(result: Any, problems_only: bool) -> None:
    from rich.table import Table

    from ..reconcile import CAUSES, pct

    console = new_console()
    last = (result.until - timedelta(days=1)).date().isoformat()
    scope = f", project {result.project}" if result.project else ""
    console.print(f"Our records vs OpenAI's usage and costs, {result.since.date().isoformat()} to {last} "
                  f"(UTC days){scope}; tolerance ±{result.tolerance:g}%. Each cell: ours / OpenAI  Δ%")
    table = Table(title="by day and model", title_justify="left")
    for name in ("day", "model", "requests", "usage", "USD", "why"):
        table.add_column(name, justify="left" if name in ("day", "model", "why") else "right")
    for row in result.rows:
        beyond = row.beyond(result.tolerance)
        if problems_only and not beyond:
            continue
        d = row.differences()
        unit, ours_amount, theirs_amount = row.unit()
        table.add_row(
            row.day,
            row.model,
            f"{_num(row.ours.requests)} / {_num(row.theirs.requests)}  {_signed_pct(d['requests'])}",
            f"{_amount(ours_amount, unit)} / {_amount(theirs_amount, unit)}  {_signed_pct(d['usage'])}",
            f"{_usd(row.ours.usd) if row.ours.has_usd else NO_VALUE} / "
            f"{_usd(row.theirs.usd) if row.theirs.has_usd else NO_VALUE}  {_signed_pct(d['usd'])}",
            ", ".join(row.causes),
            style="bold red" if beyond else None,
        )
    console.print(table)
    days = Table(title="USD by day (OpenAI: Costs API, every line item)", title_justify="left")
    for name in ("day", "ours", "OpenAI", "Δ"):
        days.add_column(name, justify="left" if name == "day" else "right")
    for day, (ours, theirs) in sorted(result.days.items()):
        days.add_row(day, _usd(ours), NO_VALUE if theirs is None else _usd(theirs),
                     NO_VALUE if theirs is None else _signed_pct(pct(ours, theirs)),
                     style="bold red" if day in result.day_problems else None)
    console.print(days)
    causes = sorted({c for r in result.rows for c in r.causes})
    if causes:
        console.print("Usual causes of the differences marked above:")
        for key in causes:
            console.print(f"  {key}: {CAUSES[key]}", soft_wrap=True)
    if result.ok:
        console.print(f"ok: every difference is within ±{result.tolerance:g}%")
    else:
        n = len(result.problems)
        console.print(f"{n} row{'s' if n != 1 else ''} and {len(result.day_problems)} day(s) beyond "
                      f"±{result.tolerance:g}%")

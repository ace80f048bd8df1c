"""``tracked-openai report --totals``: calls, cost and tokens only (``reports.call_totals``).

A flag of ``report`` rather than a command of its own: it answers the same question (what did
the calls cost) over the same feature and window, only with the figures MLflow can add up
itself, so it belongs where people already look, and ``report --help`` shows it. Over 100k call
spans that was 43 s against 449 s (docs/reports.md); when the store cannot give exactly the
paged figures (calls written as runs, traces that are not ours, a window bound inside an
operation) it pages and the output says why.

The options of ``report`` that need every record (``--operation``, the budget columns) do not
go with ``--totals``: a usage error says so rather than ignoring them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable
from typing import Any

from .. import reports
from .cells import cost, day, num
from .output import EXIT_OK, EXIT_USAGE, error, new_console, tracking_uri

__all__ = ["BREAKDOWNS", "HELP", "METHOD_HELP", "cmd_totals", "method_line", "usage_problem"]

# The breakdowns call_totals has (no operation: MLflow cannot group spans by it).
BREAKDOWNS = ("feature", "model", "day")
HELP = (
    "only calls, cost and tokens (by feature, model, day), added up by the MLflow store itself "
    "when that gives exactly the paged figures (traces mode, an SQL store or mlflow server: "
    "43 s against 449 s paging over 100k call spans), else paged; the output says which and why"
)
METHOD_HELP = (
    "with --totals: auto (default: the store's aggregation when exact, else paging), server "
    "(exit 2 with the reason when the store cannot), paging (read every record)"
)
# report's options that need every record, by their argparse destination.
_NOT_WITH_TOTALS = (("operation", "--operation"), ("budgets", "--budgets"), ("ledger_url", "--ledger-url"))
_COMMAND = "report"


def usage_problem(args: argparse.Namespace) -> str | None:
    """Why these ``report`` arguments do not go together (``--totals`` or ``--method``), else
    ``None``."""
    if not args.totals:
        return "--method needs --totals" if args.method is not None else None
    for dest, flag in _NOT_WITH_TOTALS:
        if getattr(args, dest, None) is not None:
            return f"{flag} does not go with --totals (call totals are by feature, model and day)"
    if args.by is not None and args.by not in BREAKDOWNS:
        return f"--by {args.by} does not go with --totals (choose from {', '.join(BREAKDOWNS)})"
    return None


def method_line(totals: dict[str, Any]) -> str:
    """Which way the figures were added up, and why the store's own way was not taken."""
    if totals["method"] == "server":
        return "method: server (added up by the store: MLflow's trace-metrics aggregation)"
    reason = totals.get("fallback_reason")
    if reason:
        return f"method: paging (every record read; the store could not add these up: {reason})"
    return "method: paging (every record read, as asked)"


Cell = Callable[[dict[str, Any]], str]


def _count(key: str) -> Cell:
    return lambda row: num(row.get(key))


_CALLS_COST: list[tuple[str, Cell]] = [
    ("calls", _count("total_calls")),
    ("cost", lambda r: cost(r, "total_cost")),
]
_COLUMNS: dict[str, list[tuple[str, Cell]]] = {
    "feature": [
        ("calls", _count("total_calls")),
        ("tokens in", _count("prompt_tokens")),
        ("tokens out", _count("completion_tokens")),
        ("cached", _count("cached_tokens")),
        ("tokens", _count("total_tokens")),
        ("cost", lambda r: cost(r, "total_cost")),
    ],
    # MLflow keeps tokens per trace, not per span: none per model or per day.
    "model": _CALLS_COST,
    "day": _CALLS_COST,
}


def render_totals(totals: dict[str, Any], by: str | None, console: Any, uri: str) -> None:
    """The header (scope, window, store), one dim line naming the method, the totals table and
    the breakdown(s)."""
    from rich.table import Table

    scope = totals["feature"] or "all features"
    when = ""
    if totals["since"] or totals["until"]:
        when = f", {day(totals['since'])} → {day(totals['until'])}"
    plain = {"markup": False, "highlight": False, "soft_wrap": True}
    console.print(f"tracked-openai report --totals: {scope}{when}", **plain)
    console.print(f"store: {reports.display_uri(uri)}", **plain)
    console.print(method_line(totals), style="dim", **plain)
    table = Table(show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for name, value in (
        ("API calls", num(totals["total_calls"])),
        ("total cost", cost(totals, "total_cost")),
        ("tokens in / out", f"{num(totals['prompt_tokens'])} / {num(totals['completion_tokens'])}"),
        ("cached tokens", num(totals["cached_tokens"])),
        ("total tokens", num(totals["total_tokens"])),
    ):
        table.add_row(name, value)
    console.print(table)
    # One feature: its by-feature row is the totals again.
    dims = [by] if by else (["feature", "model"] if totals["feature"] is None else ["model", "day"])
    for dim in dims:
        rows = totals[f"by_{dim}"]
        if not rows:
            continue
        breakdown = Table(title=f"by {dim}", title_justify="left")
        breakdown.add_column(dim, style="bold")
        for header, _ in _COLUMNS[dim]:
            breakdown.add_column(header, justify="right")
        for row in rows:
            breakdown.add_row(str(row["key"]), *(cell(row) for _, cell in _COLUMNS[dim]))
        console.print(breakdown)


def _csv(rows: list[dict[str, Any]], first: str) -> str:
    """``report``'s CSV convention: the chosen breakdown, the key column named after it."""
    if not rows:
        return ""
    out = io.StringIO()
    names = [k for k in rows[0] if k != "key"]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([first, *names])
    for row in rows:
        writer.writerow([row["key"], *(row.get(k) for k in names)])
    return out.getvalue()


def cmd_totals(args: argparse.Namespace) -> int:
    """``report --totals``; ``args`` are ``report``'s (checked with :func:`usage_problem`)."""
    problem = usage_problem(args)
    if problem:
        error(_COMMAND, problem)
        return EXIT_USAGE
    since, until = reports.parse_when(args.since), reports.parse_when(args.until, end=True)
    if since is not None and until is not None and since >= until:
        # A usage error, reported before the store is touched.
        error(_COMMAND, "since must be before until")
        return EXIT_USAGE
    uri = reports.check_store(tracking_uri(args))
    try:
        totals = reports.call_totals(
            args.feature, args.since, args.until, tracking_uri=uri, method=reports.parse_method(args.method)
        )
    except ValueError as exc:
        # An unknown --feature (with the known ones), or --method server where the store cannot.
        error(_COMMAND, str(exc))
        return EXIT_USAGE
    if args.fmt == "json":
        print(json.dumps({"tracking_uri": reports.display_uri(uri), **totals}, indent=2))
    elif args.fmt == "csv":
        # The by-feature rows unless --by says otherwise: the only rows with tokens.
        dim = args.by or "feature"
        sys.stdout.write(_csv(totals[f"by_{dim}"], dim))
    else:
        render_totals(totals, args.by, new_console(), uri)
    return EXIT_OK

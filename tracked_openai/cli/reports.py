"""``tracked-openai report|experiments|runs``: the reading side of the command line.

Every handler returns an exit code (``cli.output``): 0 ok, 2 bad arguments (an unknown
``--feature`` too), 3 store missing or unreachable (reading never creates a store).
Tables go to stdout through rich; errors go to stderr as one line. ``report --totals`` is
handed to :mod:`.totals`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import reports
from . import totals as cli_totals
from .cells import NO_VALUE
from .cells import cost as _cost
from .cells import day as _day
from .cells import num as _num
from .cells import usd as _usd
from .output import EXIT_OK, EXIT_USAGE, new_console, store_option, tracking_uri, when_arg
from .report_budgets import BUDGET_COLUMNS, budget_table, budgets_text, has_budgets

__all__ = ["add_commands"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_commands(sub: Any) -> None:
    common = [store_option()]
    p = sub.add_parser(
        "report",
        parents=common,
        help="cost, latency and reliability per feature",
        description="Totals (runs, success rate, latency, cost, tokens) and one breakdown table. "
        "A run is an operation or a call made outside any operation; calls inside operations "
        "are counted as calls, never twice. The header names the store read. With --totals: "
        "only calls, cost and tokens by feature, model and day, which the MLflow store can add "
        "up itself (traces mode: 43 s against 449 s paging over 100k call spans); a line under the "
        "header says which method was used and, when the records were paged, why.",
    )
    p.add_argument("--feature", help="feature key (default: every tracked feature); "
                   "an unknown key is an error that lists the known ones")
    p.add_argument("--operation", help="only this operation (its runs and the calls made inside them)")
    p.add_argument("--since", type=when_arg, help="from this date: YYYY-MM-DD, ISO datetime, today, 7d")
    p.add_argument("--until", type=when_arg, help="up to this date (a bare date includes the whole day)")
    p.add_argument("--by", choices=reports.BREAKDOWNS, default=None,
                   help="breakdown table (with --totals: feature, model or day)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", dest="fmt",
                   help="json: every figure; csv: the --by breakdown (default by model; with "
                   "--totals by feature)")
    p.add_argument("--totals", action="store_true", help=cli_totals.HELP)
    p.add_argument("--method", choices=reports.METHODS, default=None, help=cli_totals.METHOD_HELP)
    p.add_argument("--budgets", default=None, metavar="FILE",
                   help="budgets file for the budget columns (default: $TRACKED_OPENAI_BUDGETS; "
                   "none: no budget columns)")
    p.add_argument("--ledger-url", default=None,
                   help="budget ledger (default: $TRACKED_OPENAI_LEDGER_URL, else the SQLite file)")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser(
        "experiments",
        parents=common,
        help="features and their MLflow experiments",
        description="One row per feature: its key, the MLflow experiment its runs go to, and the "
        "experiment's id in the store (none yet when nothing was recorded). Lists the default "
        "AIFlow features (pid_verification, pfd_conversion, crs_analysis, visual_generation) even "
        "before they have runs, and every feature found in the store.",
    )
    p.add_argument("--format", choices=("table", "json"), default="table", dest="fmt")
    p.set_defaults(handler=cmd_experiments)

    p = sub.add_parser(
        "runs",
        parents=common,
        help="the most recent runs of a feature",
        description="The newest runs, newest first: operations (track blocks, decorated "
        "functions) and calls made outside any operation, with status, time, confidence and "
        "cost. --calls adds the calls made inside operations.",
    )
    p.add_argument("--feature", help="feature key (default: every tracked feature); "
                   "an unknown key is an error that lists the known ones")
    p.add_argument("--limit", type=_positive_int, default=10, help="how many runs (default 10)")
    p.add_argument("--calls", action="store_true", help="also list calls nested in operations")
    p.add_argument("--format", choices=("table", "json"), default="table", dest="fmt")
    p.set_defaults(handler=cmd_runs)


# -- output helpers ------------------------------------------------------------------------------
def _pct(value: Any) -> str:
    return NO_VALUE if value is None else f"{value:.1f}%"


def _secs(value: Any) -> str:
    return NO_VALUE if value is None else f"{value:.3f}s"


Cell = Callable[[dict[str, Any]], str]


def _col(key: str, fmt: Callable[[Any], str]) -> Cell:
    return lambda row: fmt(row.get(key))


def _cost_col(key: str) -> Cell:
    return lambda row: _cost(row, key)


_BREAKDOWN_COLUMNS: dict[str, list[tuple[str, Cell]]] = {
    "model": [
        ("calls", _col("total_calls", _num)),
        ("success", _col("success_rate", _pct)),
        ("avg latency", _col("avg_execution_time", _secs)),
        ("p95", _col("p95_execution_time", _secs)),
        ("tokens in", _col("prompt_tokens", _num)),
        ("tokens out", _col("completion_tokens", _num)),
        ("cost", _cost_col("total_cost")),
        ("cost/call", _cost_col("avg_cost_per_call")),
        ("unpriced", _col("unpriced_calls", _num)),
    ],
    "slice": [
        ("runs", _col("total_runs", _num)),
        ("calls", _col("total_calls", _num)),
        ("success", _col("success_rate", _pct)),
        ("avg time", _col("avg_execution_time", _secs)),
        ("p95", _col("p95_execution_time", _secs)),
        ("confidence", _col("avg_confidence", _num)),
        ("tokens in", _col("prompt_tokens", _num)),
        ("tokens out", _col("completion_tokens", _num)),
        ("cost", _cost_col("total_cost")),
        ("unpriced", _col("unpriced_calls", _num)),
    ],
}


def render_report(
    metrics: dict[str, Any], by: str | None, console: Any, tracking_uri: str | None = None
) -> None:
    """Print the totals table and the breakdown(s) as rich tables; the header names the store."""
    from rich.table import Table

    scope = metrics["feature"] or "all features"
    if metrics.get("operation"):
        scope += f", operation {metrics['operation']}"
    when = ""
    if metrics["since"] or metrics["until"]:
        when = f", {_day(metrics['since'])} → {_day(metrics['until'])}"
    # Header lines of their own: a table title would wrap a long store path at the table's width.
    console.print(f"tracked-openai report: {scope}{when}", markup=False, highlight=False, soft_wrap=True)
    if tracking_uri:
        console.print(f"store: {reports.display_uri(tracking_uri)}", markup=False, highlight=False,
                      soft_wrap=True)
    totals = Table(show_header=False)
    totals.add_column("metric", style="bold")
    totals.add_column("value", justify="right")
    rows = [
        ("runs (operations + top-level calls)", _num(metrics["total_runs"])),
        ("success rate", _pct(metrics["success_rate"])),
        ("avg execution time", _secs(metrics["avg_execution_time"])),
        ("p50 / p95 execution time",
         f"{_secs(metrics['p50_execution_time'])} / {_secs(metrics['p95_execution_time'])}"),
        ("avg confidence", _num(metrics["avg_confidence"])),
        ("total cost", _cost(metrics, "total_cost")),
        ("API calls (failed)", f"{_num(metrics['total_calls'])} ({_num(metrics['failed_calls'])})"),
        ("unpriced calls", _num(metrics["unpriced_calls"])),
        *([("calls blocked by budgets", _num(metrics.get("blocked_calls", 0)))]
          if has_budgets(metrics) or metrics.get("blocked_calls") else []),
        ("tokens in / out", f"{_num(metrics['prompt_tokens'])} / {_num(metrics['completion_tokens'])}"),
        ("cached / reasoning tokens",
         f"{_num(metrics['cached_tokens'])} / {_num(metrics['reasoning_tokens'])}"),
    ]
    for name, value in rows:
        totals.add_row(name, value)
    console.print(totals)
    dims = [by] if by else (["feature", "model"] if metrics["feature"] is None else ["operation", "model"])
    if has_budgets(metrics):
        table = budget_table(metrics, [d for d in dims if d in ("feature", "operation")])
        if table is not None:
            console.print(table)
    for dim in dims:
        table_rows = metrics[f"by_{dim}"]
        if not table_rows:
            continue
        columns = _BREAKDOWN_COLUMNS["model" if dim == "model" else "slice"]
        if dim in ("feature", "operation") and has_budgets(metrics):
            columns = [*columns, *BUDGET_COLUMNS]
        table = Table(title=f"by {dim}", title_justify="left")
        table.add_column(dim, style="bold")
        for header, _ in columns:
            table.add_column(header, justify="right")
        for row in table_rows:
            table.add_row(str(row["key"]), *(cell(row) for _, cell in columns))
        console.print(table)


def _csv_value(name: str, value: Any) -> Any:
    return budgets_text(value or []) if name == "budgets" else value


def _csv(rows: Sequence[dict[str, Any]], first: str) -> str:
    out = io.StringIO()
    if not rows:
        return ""
    names = [first, *(k for k in rows[0] if k != "key")]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([row["key"], *(_csv_value(k, row.get(k)) for k in names[1:])])
    return out.getvalue()


# -- handlers ------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    if args.totals or args.method is not None:
        return cli_totals.cmd_totals(args)
    since, until = reports.parse_when(args.since), reports.parse_when(args.until, end=True)
    if since is not None and until is not None and since >= until:
        # A usage error, reported before the store is touched.
        print("tracked-openai report: error: since must be before until", file=sys.stderr)
        return EXIT_USAGE
    uri = reports.check_store(tracking_uri(args))
    try:
        metrics = reports.feature_metrics(
            args.feature, args.since, args.until, operation=args.operation, tracking_uri=uri
        )
    except ValueError as exc:
        # Also an unknown --feature (reports.UnknownFeatureError lists the known ones).
        print(f"tracked-openai report: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _add_budgets(metrics, args)
    if args.fmt == "json":
        print(json.dumps({"tracking_uri": reports.display_uri(uri), **metrics}, indent=2))
    elif args.fmt == "csv":
        dim = args.by or "model"
        sys.stdout.write(_csv(metrics[f"by_{dim}"], dim))
    else:
        render_report(metrics, args.by, new_console(), tracking_uri=uri)
    return EXIT_OK


def _add_budgets(metrics: dict[str, Any], args: argparse.Namespace) -> None:
    """The budget columns (none without budgets); a ledger or budgets file that cannot be read
    is one warning on stderr, never a failed report."""
    try:
        from ..budgets.report import annotate_report

        warning = annotate_report(metrics, args.budgets, args.ledger_url)
    except Exception as exc:  # the report itself is what the user asked for
        metrics.pop("budgets", None)
        warning = f"budget columns left out ({type(exc).__name__}: {exc})"
    if warning:
        print(f"tracked-openai report: warning: {warning}", file=sys.stderr)


def _feature_origin(key: str, registered: dict[str, str]) -> str:
    from ..mlflow.names import DEFAULT_FEATURES

    if key in DEFAULT_FEATURES and registered.get(key) == DEFAULT_FEATURES[key]:
        return "default AIFlow feature"
    if key in registered:
        return "registered feature"
    return "in the store only (not registered)"


def cmd_experiments(args: argparse.Namespace) -> int:
    uri = reports.check_store(tracking_uri(args))
    rows = reports.experiments(tracking_uri=uri)
    shown = reports.display_uri(uri)
    if args.fmt == "json":
        print(json.dumps({"tracking_uri": shown, "experiments": rows}, indent=2))
        return EXIT_OK
    from rich.table import Table

    from ..mlflow.names import features

    registered = features()
    table = Table(title=f"experiments in {shown}", title_justify="left")
    for name in ("feature", "experiment", "experiment id", "note"):
        table.add_column(name)
    for row in rows:
        table.add_row(
            row["key"],
            row["name"],
            row["experiment_id"] or f"{NO_VALUE} (no runs yet)",
            _feature_origin(row["key"], registered),
        )
    console = new_console()
    console.print(table)
    if not any(row["experiment_id"] for row in rows):
        console.print(
            "Nothing recorded in this store yet. The features listed are the default AIFlow "
            "features (and any registered with register_feature or configure(features=...)): "
            "their runs will go to these experiments.",
            soft_wrap=True,
        )
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    uri = reports.check_store(tracking_uri(args))
    rows = reports.recent_runs(args.feature, args.limit, tracking_uri=uri, include_calls=args.calls)
    if args.fmt == "json":
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    from rich.table import Table

    console = new_console()
    console.print(f"recent runs: {args.feature or 'all features'}", markup=False, highlight=False)
    console.print(f"store: {reports.display_uri(uri)}", markup=False, highlight=False, soft_wrap=True)
    table = Table()
    columns: list[tuple[str, Cell]] = [
        ("started (UTC)", lambda r: (r["start_time"] or "")[:19].replace("T", " ")),
        ("run id", lambda r: r["run_id"][:12]),
        ("feature", lambda r: r.get("tags.feature") or NO_VALUE),
        ("kind", lambda r: r.get("tags.kind") or NO_VALUE),
        ("operation", lambda r: r.get("tags.operation") or NO_VALUE),
        ("model", lambda r: r.get("tags.model") or NO_VALUE),
        ("status", lambda r: r.get("tags.status") or r["status"]),
        ("time", lambda r: _secs(r.get("metrics.execution_time"))),
        ("confidence", lambda r: _num(r.get("metrics.confidence_score"))),
        ("cost", lambda r: _usd(r.get("metrics.cost_usd"))),
    ]
    for header, _ in columns:
        table.add_column(header)
    for row in rows:
        table.add_row(*(get(row) for _, get in columns))
    console.print(table)
    return EXIT_OK

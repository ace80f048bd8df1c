"""``tracked-openai report|experiments|runs|demo|serve``: the reading side of the command line.

Every handler returns an exit code (see :mod:`tracked_openai.cli`): 0 ok, 2 bad arguments,
3 store unreachable. Tables go to stdout through rich; errors go to stderr as one line.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import reports

__all__ = ["add_commands"]

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 3


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def _when(text: str) -> str:
    # Validate at parse time so a bad date is a usage error (exit 2) like any other bad argument.
    try:
        reports.parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def store_option() -> argparse.ArgumentParser:
    """``--tracking-uri`` accepted after the command name too (``report --tracking-uri X``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--tracking-uri",
        default=argparse.SUPPRESS,
        help="MLflow store to read (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    return parent


def add_commands(sub: Any) -> None:
    common = [store_option()]
    p = sub.add_parser(
        "report",
        parents=common,
        help="cost, latency and reliability per feature",
        description="Totals (runs, success rate, latency, cost, tokens) and one breakdown table. "
        "A run is an operation or a call made outside any operation; calls inside operations "
        "are counted as calls, never twice.",
    )
    p.add_argument("--feature", help="feature key (default: every tracked feature)")
    p.add_argument("--since", type=_when, help="from this date: YYYY-MM-DD, ISO datetime, today, 7d")
    p.add_argument("--until", type=_when, help="up to this date (a bare date includes the whole day)")
    p.add_argument("--by", choices=reports.BREAKDOWNS, default=None, help="breakdown table")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", dest="fmt")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("experiments", parents=common, help="features and their MLflow experiments")
    p.add_argument("--format", choices=("table", "json"), default="table", dest="fmt")
    p.set_defaults(handler=cmd_experiments)

    p = sub.add_parser("runs", parents=common, help="the most recent runs of a feature")
    p.add_argument("--feature", help="feature key (default: every tracked feature)")
    p.add_argument("--limit", type=_positive_int, default=10, help="how many runs (default 10)")
    p.add_argument("--calls", action="store_true", help="also list calls nested in operations")
    p.add_argument("--format", choices=("table", "json"), default="table", dest="fmt")
    p.set_defaults(handler=cmd_runs)

    p = sub.add_parser(
        "demo",
        parents=common,
        help="offline demo: tracked calls against a local fake OpenAI, then the report",
    )
    p.add_argument("--quiet", action="store_true", help="print only the report")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("serve", parents=common, help="serve the REST API (needs tracked-openai[api])")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    p.set_defaults(handler=cmd_serve)


# -- output helpers ------------------------------------------------------------------------------
def _console() -> Any:
    from rich.console import Console

    # Not a terminal (pipes, CI logs): use a fixed width so tables are not squeezed to 80 columns.
    return Console(width=None if sys.stdout.isatty() else 140, soft_wrap=False)


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _usd(value: Any) -> str:
    if value is None:
        return "-"
    # Single calls cost fractions of a cent: keep their significant digits visible.
    return f"${value:,.6f}" if 0 < abs(value) < 0.01 else f"${value:,.4f}"


def _day(iso: str | None) -> str:
    if not iso:
        return "…"
    return iso[:10] if iso.endswith("T00:00:00+00:00") else iso


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _secs(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}s"


_BREAKDOWN_COLUMNS: dict[str, list[tuple[str, str, Any]]] = {
    "model": [
        ("calls", "total_calls", _num),
        ("success", "success_rate", _pct),
        ("avg latency", "avg_execution_time", _secs),
        ("p95", "p95_execution_time", _secs),
        ("tokens in", "prompt_tokens", _num),
        ("tokens out", "completion_tokens", _num),
        ("cost", "total_cost", _usd),
        ("cost/call", "avg_cost_per_call", _usd),
        ("unpriced", "unpriced_calls", _num),
    ],
    "slice": [
        ("runs", "total_runs", _num),
        ("calls", "total_calls", _num),
        ("success", "success_rate", _pct),
        ("avg time", "avg_execution_time", _secs),
        ("p95", "p95_execution_time", _secs),
        ("confidence", "avg_confidence", _num),
        ("tokens in", "prompt_tokens", _num),
        ("tokens out", "completion_tokens", _num),
        ("cost", "total_cost", _usd),
        ("unpriced", "unpriced_calls", _num),
    ],
}


def render_report(metrics: dict[str, Any], by: str | None, console: Any) -> None:
    """Print the totals table and the breakdown(s) as rich tables."""
    from rich.table import Table

    scope = metrics["feature"] or "all features"
    when = ""
    if metrics["since"] or metrics["until"]:
        when = f", {_day(metrics['since'])} → {_day(metrics['until'])}"
    totals = Table(title=f"tracked-openai report: {scope}{when}", show_header=False, title_justify="left")
    totals.add_column("metric", style="bold")
    totals.add_column("value", justify="right")
    rows = [
        ("runs (operations + top-level calls)", _num(metrics["total_runs"])),
        ("success rate", _pct(metrics["success_rate"])),
        ("avg execution time", _secs(metrics["avg_execution_time"])),
        ("p50 / p95 execution time",
         f"{_secs(metrics['p50_execution_time'])} / {_secs(metrics['p95_execution_time'])}"),
        ("avg confidence", _num(metrics["avg_confidence"])),
        ("total cost", _usd(metrics["total_cost"])),
        ("API calls (failed)", f"{_num(metrics['total_calls'])} ({_num(metrics['failed_calls'])})"),
        ("unpriced calls", _num(metrics["unpriced_calls"])),
        ("tokens in / out", f"{_num(metrics['prompt_tokens'])} / {_num(metrics['completion_tokens'])}"),
        ("cached / reasoning tokens",
         f"{_num(metrics['cached_tokens'])} / {_num(metrics['reasoning_tokens'])}"),
    ]
    for name, value in rows:
        totals.add_row(name, value)
    console.print(totals)
    dims = [by] if by else (["feature", "model"] if metrics["feature"] is None else ["operation", "model"])
    for dim in dims:
        table_rows = metrics[f"by_{dim}"]
        if not table_rows:
            continue
        columns = _BREAKDOWN_COLUMNS["model" if dim == "model" else "slice"]
        table = Table(title=f"by {dim}", title_justify="left")
        table.add_column(dim, style="bold")
        for header, _, _ in columns:
            table.add_column(header, justify="right")
        for row in table_rows:
            table.add_row(str(row["key"]), *(fmt(row.get(key)) for _, key, fmt in columns))
        console.print(table)


def _csv(rows: Sequence[dict[str, Any]], first: str) -> str:
    out = io.StringIO()
    if not rows:
        return ""
    names = [first, *(k for k in rows[0] if k != "key")]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([row["key"], *(row.get(k) for k in names[1:])])
    return out.getvalue()


def _uri(args: argparse.Namespace) -> str | None:
    value: str | None = getattr(args, "tracking_uri", None)
    return value


# -- handlers ------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    since, until = reports.parse_when(args.since), reports.parse_when(args.until, end=True)
    if since is not None and until is not None and since >= until:
        # A usage error, reported before the store is touched.
        print("tracked-openai report: error: since must be before until", file=sys.stderr)
        return EXIT_USAGE
    uri = reports.check_store(_uri(args))
    try:
        metrics = reports.feature_metrics(args.feature, args.since, args.until, tracking_uri=uri)
    except ValueError as exc:
        print(f"tracked-openai report: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.fmt == "json":
        print(json.dumps(metrics, indent=2))
    elif args.fmt == "csv":
        dim = args.by or "model"
        sys.stdout.write(_csv(metrics[f"by_{dim}"], dim))
    else:
        render_report(metrics, args.by, _console())
    return EXIT_OK


def cmd_experiments(args: argparse.Namespace) -> int:
    uri = reports.check_store(_uri(args))
    rows = reports.experiments(tracking_uri=uri)
    if args.fmt == "json":
        print(json.dumps({"tracking_uri": uri, "experiments": rows}, indent=2))
        return EXIT_OK
    from rich.table import Table

    table = Table(title=f"experiments in {uri}", title_justify="left")
    for name in ("feature", "experiment", "experiment id"):
        table.add_column(name)
    for row in rows:
        table.add_row(row["key"], row["name"], row["experiment_id"] or "- (no runs yet)")
    _console().print(table)
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    uri = reports.check_store(_uri(args))
    rows = reports.recent_runs(args.feature, args.limit, tracking_uri=uri, include_calls=args.calls)
    if args.fmt == "json":
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    from rich.table import Table

    table = Table(title=f"recent runs: {args.feature or 'all features'}", title_justify="left")
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("started (UTC)", lambda r: (r["start_time"] or "")[:19].replace("T", " ")),
        ("run id", lambda r: r["run_id"][:12]),
        ("feature", lambda r: r.get("tags.feature") or "-"),
        ("kind", lambda r: r.get("tags.kind") or "-"),
        ("operation", lambda r: r.get("tags.operation") or "-"),
        ("model", lambda r: r.get("tags.model") or "-"),
        ("status", lambda r: r.get("tags.status") or r["status"]),
        ("time", lambda r: _secs(r.get("metrics.execution_time"))),
        ("confidence", lambda r: _num(r.get("metrics.confidence_score"))),
        ("cost", lambda r: _usd(r.get("metrics.cost_usd"))),
    ]
    for header, _ in columns:
        table.add_column(header)
    for row in rows:
        table.add_row(*(get(row) for _, get in columns))
    _console().print(table)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(tracking_uri=_uri(args), quiet=args.quiet)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .api import create_app
    except ImportError as exc:
        print(
            f"tracked-openai: error: serve needs the API extra ({exc.name} is missing): "
            "pip install 'tracked-openai[api]'",
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    uri = _uri(args)
    print(f"tracked-openai API on http://{args.host}:{args.port}/api/docs/ (store: "
          f"{reports.resolve_tracking_uri(uri)})", file=sys.stderr)
    uvicorn.run(create_app(tracking_uri=uri), host=args.host, port=args.port, log_level="warning")
    return EXIT_OK

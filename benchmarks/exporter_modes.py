"""Calls per second into MLflow in each ``mlflow_mode`` (``runs``, ``runs+traces``, ``traces``)
against the naive one-run-per-call path: same store, same run, interleaved rounds, medians.

A record here is a call in a one-call operation (``track`` around one chat call). Each mode is
written by the sinks the library builds for it (``tracked_openai.sinks.modes.mode_sinks``), fed
by the exporter the way the library feeds it; the rate is calls / (first submit -> last record
stored). ``runs`` writes two runs per call (the operation, the call nested in it); ``runs+traces``
one run (the operation) plus its two-span trace, linked to the run; ``traces`` the trace only.

* ``runs+traces-nolink``: ``runs+traces`` without linking each operation's trace to its run,
  to show what the link costs.

    python benchmarks/exporter_modes.py --stores pg                       # all modes on PostgreSQL
    python benchmarks/exporter_modes.py --stores server --modes runs,runs+traces --calls 300
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from exporter import naive, open_store  # the same naive path and stores as the other benchmarks
from exporter_traces import count_traces, timed_export

from tests.helpers.mlflow_server import MlflowServer, drop_pg_database
from tracked_openai.export import runtime as _runtime
from tracked_openai.sinks.modes import OperationRunsSink, mode_sinks
from tracked_openai.sinks.traces import TracesSink

MODES = ("runs", "runs+traces", "runs+traces-nolink", "traces")


class _NoLinkRunsSink(OperationRunsSink):
    """``runs+traces``' runs half without the trace-to-run link (to measure what it costs)."""

    link_traces = False


def sinks_for(mode: str, uri: str) -> list[Any]:
    if mode == "runs+traces-nolink":
        runs = _NoLinkRunsSink(uri)
        return [runs, TracesSink(runs=runs)]
    return mode_sinks(mode, uri)


def mode_path(mode: str, uri: str, n: int, spool: Path, batch_size: int) -> tuple[float, str]:
    """(calls/s until the last record is stored, what was found afterwards) for one mode."""
    sinks = sinks_for(mode, uri)
    rate, feature = timed_export(sinks, n, spool, batch_size, mode.replace("+", "-"))
    return rate, found(sinks, feature)


def found(sinks: list[Any], feature: str) -> str:
    """What the store holds for ``feature`` afterwards: runs and traces, counted with MLflow's API."""
    parts = []
    runs_sink = sinks[0] if not isinstance(sinks[0], TracesSink) else None
    traces_sink = sinks[-1] if isinstance(sinks[-1], TracesSink) else None
    if runs_sink is not None:
        exp = runs_sink.experiment_id(feature)
        count, token = 0, None
        while True:
            page = runs_sink.client.search_runs([exp], max_results=1000, page_token=token)
            count += len(page)
            token = page.token
            if not token:
                break
        parts.append(f"{count} runs")
    if traces_sink is not None:
        parts.append(
            f"{count_traces(traces_sink.tracking_uri, traces_sink._runs.experiment_id(feature))} traces"
        )
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stores", default="pg", help="comma list of embedded,server,pg")
    parser.add_argument(
        "--modes",
        default="naive,runs,runs+traces,runs+traces-nolink,traces",
        help=f"comma list of naive,{','.join(MODES)}",
    )
    parser.add_argument("--naive", type=int, default=30, help="naive runs per round")
    parser.add_argument("--calls", type=int, default=300, help="calls per round in the runs modes")
    parser.add_argument("--traces-calls", type=int, default=1500, help="calls per round in traces mode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--batch",
        type=int,
        default=_runtime.settings.batch_size,
        help="exporter batch size in records (default: the library's)",
    )
    parser.add_argument("--workers", type=int, default=None, help="uvicorn workers (default: mlflow's)")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - {"naive", *MODES}
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}")
    tmp = Path(tempfile.mkdtemp(prefix="tracked-openai-bench-modes-"))
    print(f"cpus={os.cpu_count()} load={os.getloadavg()} batch={args.batch} records tmp={tmp}", flush=True)
    table: list[tuple[str, dict[str, float]]] = []
    servers: list[MlflowServer] = []
    pg_dbs: list[str] = []
    try:
        for store in [s for s in args.stores.split(",") if s]:
            uri = open_store(store, tmp, args.workers, servers, pg_dbs)
            if uri is None:
                continue
            rates: dict[str, list[float]] = {m: [] for m in modes}
            for round_no in range(args.rounds):
                # Interleaved: the machine's load drifts, and every mode sees the drift.
                for mode in modes:
                    if mode == "naive":
                        rate, what = naive(uri, args.naive), f"{args.naive} runs"
                    else:
                        n = args.traces_calls if mode.startswith("traces") else args.calls
                        rate, what = mode_path(mode, uri, n, tmp / f"spool-{store}", args.batch)
                        what = f"{n} calls -> {what}"
                    rates[mode].append(rate)
                    print(f"{store}: round {round_no + 1}: {mode:<19} {rate:7.1f} /s  ({what})", flush=True)
            medians = {m: statistics.median(r) for m, r in rates.items()}
            print(
                f"{store}: medians "
                + ", ".join(f"{m} {v:.1f}" for m, v in medians.items())
                + f"; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            table.append((store, medians))
    finally:
        for server in servers:
            server.stop()
        for name in pg_dbs:
            drop_pg_database(name)
    for store, medians in table:
        base = medians.get("naive")
        print(f"\n{store}: median calls/s (naive: runs/s)" + ("  x naive" if base else ""))
        for mode, value in medians.items():
            ratio = f"{value / base:8.1f}x" if base else ""
            print(f"  {mode:<19} {value:8.1f} {ratio}")
        if "runs" in medians and "runs+traces" in medians:
            print(f"  runs+traces / runs = {medians['runs+traces'] / medians['runs']:.2f}")


if __name__ == "__main__":
    main()

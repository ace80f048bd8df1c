"""Calls per second into MLflow as traces (our exporter + ``TracesSink``) against the naive
one-run-per-call path, same store, same run, interleaved rounds, medians.

A record here is a call in a one-call operation (``track`` around one chat call): on the traces
path that is one two-span trace (the operation's root span and the call's span), sent with the
rest of its batch in one OTLP request (``mlflow server``) or one ``log_spans`` (embedded store).
The naive path is ``benchmarks/exporter.py``'s: ``mlflow.start_run`` + params + metrics + tags
per call. Bars (issue 17): through ``mlflow server`` >= 10x naive, embedded >= 5x.

    python benchmarks/exporter_traces.py                          # embedded, server (SQLite), pg
    python benchmarks/exporter_traces.py --stores server --calls 2000 --naive 60 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from exporter import naive, open_store  # benchmarks/exporter.py: the same naive path and stores

from tests.helpers.mlflow_server import MlflowServer, drop_pg_database
from tracked_openai.export import runtime as _runtime
from tracked_openai.export.queue import Exporter
from tracked_openai.records import CallRecord, OperationRecord, Record, Usage
from tracked_openai.sinks.traces import TracesSink


def one_call_operations(n: int, feature: str) -> list[Record]:
    """``n`` one-call operations, records in the order the library submits them (call first)."""
    out: list[Record] = []
    now = time.time()
    for i in range(n):
        op = OperationRecord(
            started_at=now + i * 1e-4, duration_s=0.35, feature=feature, operation="diagram_analysis",
            function="analyze", tags={"tracking_type": "gpt_vision"}, metrics={"confidence_score": 0.9},
        )
        call = CallRecord(
            parent_id=op.record_id, started_at=now + i * 1e-4 + 0.01, duration_s=0.3, feature=feature,
            operation="diagram_analysis", function="analyze", endpoint="chat.completions", model="gpt-4o",
            response_model="gpt-4o-2024-08-06", params={"temperature": 0.2, "max_tokens": 800},
            usage=Usage(input_tokens=1200, cached_input_tokens=0, output_tokens=300),
            usage_source="response", attempts=1,
        )
        op.calls = [call]  # as prepare() does for a tracked operation: its calls ride with it
        out += [call, op]
    return out


def timed_export(sinks: list[Any], n: int, spool: Path, batch_size: int, name: str) -> tuple[float, str]:
    """(calls/s from the first submit until the last record is stored, the feature written):
    ``n`` one-call operations through an exporter feeding ``sinks``, after an untimed warm-up
    (experiment creation, connections, imports are not part of the rate)."""
    exporter = Exporter(sinks, prepare=_runtime.prepare, spool_dir=spool, flush_interval=0.05,
                        batch_size=batch_size, queue_size=max(10_000, 4 * n))
    for r in one_call_operations(3, "bench-warmup"):
        exporter.submit(r)
    exporter.flush(300)
    feature = f"bench-{name}-{time.time_ns()}"
    records = one_call_operations(n, feature)
    t0 = time.perf_counter()
    for r in records:
        exporter.submit(r)
    ok = exporter.flush(3600)
    elapsed = time.perf_counter() - t0
    stats = exporter.stats()
    exporter.shutdown(30)
    if not ok or stats.get("spooled"):
        print(f"    !! not everything exported: {stats}")
    return n / elapsed, feature


def traces_path(uri: str, n: int, spool: Path, batch_size: int) -> tuple[float, int]:
    """(calls/s until the last trace is stored, traces found) through the exporter."""
    sink = TracesSink(uri)
    rate, feature = timed_export([sink], n, spool, batch_size, "traces")
    return rate, count_traces(uri, sink._runs.experiment_id(feature))


def count_traces(uri: str, experiment_id: str) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    count, token = 0, None
    while True:
        page = client.search_traces(locations=[experiment_id], max_results=500, page_token=token,
                                    include_spans=False)
        count += len(page)
        token = page.token
        if not token:
            return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="embedded,server,pg", help="comma list of embedded,server,pg")
    parser.add_argument("--naive", type=int, default=0, help="naive runs per round (default per store)")
    parser.add_argument("--calls", type=int, default=0, help="calls per round on the traces path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=_runtime.settings.batch_size,
                        help="exporter batch size in records (default: the library's)")
    parser.add_argument("--workers", type=int, default=None, help="uvicorn workers (default: mlflow's)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tracked-openai-bench-traces-"))
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} batch={args.batch} records tmp={tmp}")
    results: list[tuple[str, float, float]] = []
    servers: list[MlflowServer] = []
    pg_dbs: list[str] = []
    try:
        for store in [s for s in args.stores.split(",") if s]:
            found = open_store(store, tmp, args.workers, servers, pg_dbs)
            if found is None:
                continue
            uri = found
            if store == "embedded":
                n_naive, n_calls = args.naive or 60, args.calls or 1500
            else:
                n_naive, n_calls = args.naive or 30, args.calls or 1500
            naive_rates, trace_rates = [], []
            for round_no in range(args.rounds):
                naive_rates.append(naive(uri, n_naive))
                rate, found = traces_path(uri, n_calls, tmp / f"spool-{store}", args.batch)
                trace_rates.append(rate)
                print(f"{store}: round {round_no + 1}: naive {naive_rates[-1]:.1f} runs/s, traces "
                      f"{rate:.1f} calls/s ({found} traces of {n_calls})", flush=True)
            rn, rt = statistics.median(naive_rates), statistics.median(trace_rates)
            print(f"{store}: median naive {rn:.1f} runs/s, traces {rt:.1f} calls/s = {rt / rn:.1f}x", flush=True)
            results.append((store, rn, rt))
    finally:
        for server in servers:
            server.stop()
        for name in pg_dbs:
            drop_pg_database(name)
    if results:
        print("\nstore      naive runs/s   traces calls/s   ratio")
        for store, rn, rt in results:
            print(f"{store:<10} {rn:>12.1f} {rt:>16.1f} {rt / rn:>7.1f}x")


if __name__ == "__main__":
    main()

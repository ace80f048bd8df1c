"""SQL statements MLflow's SQL store runs per trace when it stores our traces (``log_spans``).

Through ``mlflow server`` on PostgreSQL every statement is a round trip to the database, so the
count per trace is what bounds ``traces`` mode there. This feeds MLflow's own ``SqlAlchemyStore``
(what the server runs) the OTLP request the library sends, converted the way the server converts
it (``EmbeddedTransport``), and counts what its engine executes, by kind and table.

    python benchmarks/trace_statements.py                  # fresh PostgreSQL database, 64 traces
    python benchmarks/trace_statements.py --store sqlite --traces 128
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from exporter_traces import one_call_operations

from tests.helpers.mlflow_server import create_pg_database, drop_pg_database, postgres_available
from tracked_openai.mlflow.otlp import EmbeddedTransport
from tracked_openai.mlflow.traces import traces_of
from tracked_openai.records import OperationRecord
from tracked_openai.sinks.traces import carried_calls

_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+\"?(\w+)", re.IGNORECASE)


def count(uri: str, n: int, batch: int) -> tuple[collections.Counter[str], int, int, float]:
    """(statements by 'KIND table', statements, round trips, seconds in ``log_spans``) for ``n``
    one-call traces in batches of ``batch`` traces, after one warm-up batch."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy import event

    store = SqlAlchemyStore(uri, tempfile.mkdtemp(prefix="tracked-openai-stmts-"))
    exp_id = store.create_experiment(f"stmts-{time.time_ns()}")
    transport = EmbeddedTransport(store)

    def send(records: list[Any]) -> None:
        calls_of = {r.record_id: carried_calls(r) for r in records if isinstance(r, OperationRecord)}
        traces = traces_of(records, calls_of)
        for start in range(0, len(traces), batch):
            transport.send(exp_id, traces[start : start + batch])

    send(one_call_operations(2, "warm-up"))
    kinds: collections.Counter[str] = collections.Counter()
    totals = {"statements": 0, "round_trips": 0}

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        kind = statement.lstrip().split(None, 1)[0].upper()
        match = _TABLE.search(statement)
        key = f"{kind} {match.group(1) if match else ''}".strip()
        kinds[key] += 1
        totals["statements"] += 1
        # psycopg2 runs an executemany as one execute per parameter set (SQLAlchemy's
        # insertmanyvalues makes a multi-row INSERT a single execute instead).
        totals["round_trips"] += len(params) if executemany and isinstance(params, (list, tuple)) else 1

    records = one_call_operations(n, "measured")
    event.listen(store.engine, "before_cursor_execute", before)
    t0 = time.perf_counter()
    try:
        send(records)
    finally:
        elapsed = time.perf_counter() - t0
        event.remove(store.engine, "before_cursor_execute", before)
    return kinds, totals["statements"], totals["round_trips"], elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="pg", choices=["pg", "sqlite"])
    parser.add_argument("--traces", type=int, default=64, help="one-call operations (two-span traces)")
    parser.add_argument("--batch", type=int, default=128, help="traces per log_spans (the library: 128)")
    args = parser.parse_args()
    name = None
    if args.store == "pg":
        if not postgres_available():
            raise SystemExit("PostgreSQL not reachable on 127.0.0.1:5432")
        name, uri = create_pg_database()
    else:
        uri = f"sqlite:///{tempfile.mkdtemp(prefix='tracked-openai-stmts-')}/store.db"
    try:
        kinds, statements, trips, elapsed = count(uri, args.traces, args.batch)
    finally:
        if name is not None:
            drop_pg_database(name)
    n = args.traces
    print(f"{args.store}: {n} traces in batches of {args.batch}: {statements} statements "
          f"({statements / n:.1f} per trace), {trips} round trips ({trips / n:.1f} per trace), "
          f"{elapsed:.2f} s ({n / elapsed:.0f} traces/s in-process; load {os.getloadavg()[0]:.1f})")
    for key, value in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {value:6d}  {value / n:6.2f}/trace  {key}")


if __name__ == "__main__":
    main()

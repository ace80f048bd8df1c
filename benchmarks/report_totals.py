"""Report totals over 100k call spans: MLflow's own aggregation (QueryTraceMetrics) against
paging through every trace, same store, same run, medians.

    python benchmarks/report_totals.py                          # embedded store, 100k call spans
    python benchmarks/report_totals.py --stores embedded,server --calls 100000 --repeat 3

The store (SQLite) holds two-call operations (a root span and two call spans each), four
features, four models with their cost, spread over 30 days: a few hundred written by the
library's own traces sink (``log_spans``), then copied row for row (see ``seed``). It is read
directly (embedded) and through an ``mlflow server`` on the same file.
Then ``reports.call_totals`` runs with ``method="server"`` and ``method="paging"`` (all
features, no window; and the last 7 days), the two answers are checked equal, and the medians
printed with their ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Paging 100k traces through mlflow server is minutes of batchGet requests on a busy machine:
# MLflow's client default (and the test helper's 10 s) would time them out.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "600")

from tracked_openai import reports
from tracked_openai.records import CallRecord, Cost, OperationRecord, Record, Usage
from tracked_openai.sinks.traces import TracesSink

MODELS = [
    ("gpt-4o", "gpt-4o-2024-08-06", Decimal("0.0025"), Decimal("0.01")),
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", Decimal("0.00015"), Decimal("0.0006")),
    ("gpt-4.1", "gpt-4.1-2025-04-14", Decimal("0.002"), Decimal("0.008")),
    ("o4-mini", "o4-mini-2025-04-16", Decimal("0.0011"), Decimal("0.0044")),
]
FEATURES = ["pid_verification", "pfd_conversion", "crs_analysis", "visual_generation"]
DAY_S = 86_400
_SAME = ("method", "fallback_reason")


def operations(n_ops: int, rng: random.Random) -> list[Record]:
    """``n_ops`` two-call operations; the calls ride with their operation, as the library sends them."""
    now = time.time()
    out: list[Record] = []
    for i in range(n_ops):
        feature = FEATURES[i % len(FEATURES)]
        # Not across midnight: the benchmark times the store's path, not its fallback.
        day = int(now // DAY_S) - rng.randrange(30)
        start = day * DAY_S + rng.uniform(60, DAY_S - 120)
        op = OperationRecord(
            started_at=start,
            duration_s=2.0,
            feature=feature,
            operation="diagram_analysis",
            function="analyze",
        )
        calls = []
        for c in range(2):
            model, served, pin, pout = MODELS[rng.randrange(len(MODELS))]
            tin, tout = rng.randrange(200, 4000), rng.randrange(50, 800)
            cin, cout = pin * tin / 1000, pout * tout / 1000
            calls.append(
                CallRecord(
                    parent_id=op.record_id,
                    started_at=start + 0.1 + c * 0.8,
                    duration_s=0.7,
                    feature=feature,
                    operation="diagram_analysis",
                    function="analyze",
                    endpoint="chat.completions",
                    model=model,
                    response_model=served,
                    usage=Usage(input_tokens=tin, output_tokens=tout),
                    usage_source="response",
                    cost=Cost(cin, cout, cin + cout),
                    cost_status="priced",
                    status="success" if rng.random() > 0.02 else "error",
                    attempts=1,
                )
            )
        op.calls = calls
        op.call_count = 2
        out += [*calls, op]
    return out


def seed(db: Path, n_calls: int, templates: int, batch_ops: int) -> float:
    """Fill the SQLite store ``db`` with ``n_calls`` call spans; returns the seconds it took.

    ``log_spans`` takes seconds per thousand spans on this machine (about 20 traces/s with six
    sessions sharing two cores), so 150k spans that way would take hours. So ``templates``
    operations are written by the library's traces sink (``log_spans``: MLflow fills every
    column, the denormalized token, cost and model columns included), then their rows are
    copied with fresh trace ids (``trace_info``, ``trace_tags``, ``trace_request_metadata``,
    ``spans`` and the trace id inside each span's JSON). Both report paths read the same rows.
    """
    import base64
    import sqlite3

    t0 = time.perf_counter()
    sink = TracesSink(f"sqlite:///{db}", timeout=300)
    rng = random.Random(7)
    records = operations(templates, rng)
    step = batch_ops * 3
    for i in range(0, len(records), step):
        sink.export(records[i : i + step])
    copies = max(1, n_calls // (2 * templates))
    con = sqlite3.connect(db)
    infos = con.execute("SELECT * FROM trace_info").fetchall()
    tags = con.execute("SELECT key, value, request_id FROM trace_tags").fetchall()
    meta = con.execute("SELECT key, value, request_id FROM trace_request_metadata").fetchall()
    span_cols = [r[1] for r in con.execute("PRAGMA table_info(spans)")]
    spans = con.execute(f"SELECT {', '.join(span_cols)} FROM spans").fetchall()
    ti, ci = span_cols.index("trace_id"), span_cols.index("content")
    marks = ", ".join("?" * len(span_cols))
    for _ in range(copies - 1):
        new_ids = {}
        for row in infos:
            raw = rng.randbytes(16)
            new_ids[row[0]] = ("tr-" + raw.hex(), base64.b64encode(raw).decode())
        con.executemany(
            f"INSERT INTO trace_info VALUES ({', '.join('?' * len(infos[0]))})",
            [(new_ids[r[0]][0], *r[1:]) for r in infos],
        )
        con.executemany(
            "INSERT INTO trace_tags VALUES (?, ?, ?)", [(k, v, new_ids[r][0]) for k, v, r in tags]
        )
        con.executemany(
            "INSERT INTO trace_request_metadata VALUES (?, ?, ?)", [(k, v, new_ids[r][0]) for k, v, r in meta]
        )
        rows = []
        for span in spans:
            old = span[ti]
            old_b64 = base64.b64encode(bytes.fromhex(old[3:])).decode()
            row = list(span)
            row[ti] = new_ids[old][0]
            row[ci] = span[ci].replace(old_b64, new_ids[old][1], 1)
            rows.append(row)
        con.executemany(f"INSERT INTO spans ({', '.join(span_cols)}) VALUES ({marks})", rows)
        con.commit()
    con.close()
    return time.perf_counter() - t0


def timed(fn, repeat: int) -> tuple[float, dict]:
    times, result = [], {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def figures(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in _SAME}


def bench(uri: str, label: str, repeat: int, paging_repeat: int) -> None:
    for window, since in (("all time", None), ("last 7 days", "7d")):
        s_med, server = timed(
            lambda since=since: reports.call_totals(since=since, tracking_uri=uri, method="server"), repeat
        )
        p_med, paging = timed(
            lambda since=since: reports.call_totals(since=since, tracking_uri=uri, method="paging"),
            paging_repeat,
        )
        same = figures(server) == figures(paging)
        print(
            f"  {label}, {window}: {server['total_calls']:,} calls, ${server['total_cost']:,.2f}, "
            f"{server['total_tokens']:,} tokens"
        )
        print(f"    server-side (QueryTraceMetrics): median {s_med:.3f}s over {repeat}")
        print(f"    paging every trace:               median {p_med:.2f}s over {paging_repeat}")
        print(f"    ratio {p_med / s_med:.0f}x; same numbers: {same}")
        if not same:
            for key in figures(server):
                if server[key] != paging[key]:
                    print(f"      differs: {key}: server {server[key]!r} paging {paging[key]!r}"[:400])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stores", default="embedded", help="comma list of embedded,server")
    parser.add_argument("--calls", type=int, default=100_000, help="call spans to write (default 100k)")
    parser.add_argument(
        "--templates", type=int, default=500, help="operations written by log_spans, then copied"
    )
    parser.add_argument("--batch-ops", type=int, default=1000, help="operations per export batch")
    parser.add_argument("--repeat", type=int, default=5, help="server-side runs (median)")
    parser.add_argument("--paging-repeat", type=int, default=1, help="paging runs (median)")
    args = parser.parse_args()
    servers = []
    db: Path | None = None  # one store, read directly (embedded) and through mlflow server
    with tempfile.TemporaryDirectory(prefix="report-totals-") as tmp:
        try:
            for store in args.stores.split(","):
                if store not in ("embedded", "server"):
                    raise SystemExit(f"unknown store {store!r}")
                if db is None:
                    db = Path(tmp) / "mlflow.db"
                    secs = seed(db, args.calls, args.templates, args.batch_ops)
                    print(f"seeded {args.calls:,} call spans ({args.calls // 2:,} traces) in {secs:.0f}s")
                if store == "embedded":
                    uri = f"sqlite:///{db}"
                else:
                    from tests.helpers.mlflow_server import MlflowServer

                    workdir = Path(tmp) / "server"
                    workdir.mkdir()
                    server = MlflowServer(f"sqlite:///{db}", workdir)
                    servers.append(server)
                    server.start(timeout=300)
                    uri = server.url
                bench(uri, store, args.repeat, args.paging_repeat)
        finally:
            for server in servers:
                server.stop()


if __name__ == "__main__":
    main()

"""How long reports take on big experiments: 10k and 100k MLflow runs in a temporary SQLite store.

    .venv/bin/python benchmarks/reports.py [--sizes 10000 100000] [--page-size 5000]
    .venv/bin/python benchmarks/reports.py --reprice [--sizes 10000 100000]

``--reprice`` times ``tracked-openai reprice`` instead on call records stored as the default
``mlflow_mode`` stores them (``--mode runs+traces``: operations are runs, each with two calls
that are spans of its trace; ``--mode traces``: the same without the runs; ``--mode runs``: call
runs), written by the sinks' own mappings (``tests/helpers/store_seed.py``), repriced with a
price file that changes one model (a dry run, ``--write``, and ``--write`` again, which finds
everything written and writes nothing).

    .venv/bin/python benchmarks/reports.py --reprice [--mode runs+traces|traces|runs] [--sizes 100000]

The store is created by MLflow (its own schema and migrations), then filled fast with plain
SQL inserts into MLflow's tables, shaped exactly like MlflowSink's runs: one operation run and
two nested call runs per group (tags, latest metrics, params), spread over 30 days and four
models. Then it times ``feature_metrics`` (one feature, and all features with a date filter)
and ``recent_runs``, and prints this process's peak resident memory (the store is seeded in a
child process), which stays flat because reports fold one page at a time.
"""

from __future__ import annotations

import argparse
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracked_openai import reports
from tracked_openai.reports.query import PAGE_SIZE

MODELS = [("gpt-4o", 0.0025, 0.01), ("gpt-4o-mini", 0.00015, 0.0006), ("gpt-4.1", 0.002, 0.008),
          ("o4-mini", 0.0011, 0.0044)]
FEATURES = ["pid_verification", "pfd_conversion", "crs_analysis", "visual_generation"]
DAY_MS = 86_400_000


def seed(db: Path, total_runs: int) -> tuple[int, int]:
    """Fill ``db`` with ``total_runs`` runs (a third operations); returns (operations, calls)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri)
    exp_ids = {f: client.create_experiment(reports.experiment_name(f), tags={reports.FEATURE_TAG: f})
               for f in FEATURES}
    rng = random.Random(7)
    now = int(time.time() * 1000)
    runs, tags, metrics, params = [], [], [], []
    groups = total_runs // 3

    def add(run_id: str, exp: str, start: int, secs: float, ok: bool, t: dict, m: dict, p: dict) -> None:
        runs.append((run_id, "run", "UNKNOWN", "", "", "bench", "FINISHED" if ok else "FAILED",
                     start, start + int(secs * 1000), "", "active", "", int(exp)))
        tags.extend((k, v, run_id) for k, v in t.items())
        metrics.extend((k, float(v), start, 0, 0, run_id) for k, v in m.items())
        params.extend((k, v, run_id) for k, v in p.items())

    for g in range(groups):
        feature = FEATURES[g % len(FEATURES)]
        exp = exp_ids[feature]
        start = now - rng.randrange(30 * DAY_MS)
        op_id = uuid.uuid4().hex
        ok = rng.random() > 0.03
        op_cost, op_in, op_out, op_time = 0.0, 0, 0, 0.0
        for c in range(2):
            model, pin, pout = MODELS[rng.randrange(len(MODELS))]
            tin, tout = rng.randrange(200, 4000), rng.randrange(50, 800)
            secs = rng.uniform(0.3, 4.0)
            cost = tin / 1000 * pin + tout / 1000 * pout
            call_ok = ok or c == 0
            op_cost += cost
            op_in, op_out, op_time = op_in + tin, op_out + tout, op_time + secs
            add(uuid.uuid4().hex, exp, start + c, secs, call_ok,
                {"kind": "call", "feature": feature, "operation": "analysis", "status": "success" if call_ok else "error",
                 "model": model, "endpoint": "chat.completions", "cost_status": "priced", "usage_source": "response",
                 "mlflow.parentRunId": op_id, "record_id": uuid.uuid4().hex},
                {"execution_time": secs, "prompt_tokens": tin, "completion_tokens": tout,
                 "total_tokens": tin + tout, "cost_usd": cost, "attempts": 1},
                {"model": model, "temperature": "0.2"})
        add(op_id, exp, start, op_time + 0.05, ok,
            {"kind": "operation", "feature": feature, "operation": "analysis", "status": "success" if ok else "error",
             "function": "analyze", "record_id": uuid.uuid4().hex},
            {"execution_time": op_time + 0.05, "cost_usd": op_cost, "call_count": 2,
             "confidence_score": rng.uniform(0.7, 0.99), "prompt_tokens": op_in, "completion_tokens": op_out},
            {})
    con = sqlite3.connect(db)
    with con:
        con.executemany("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id,"
                        " status, start_time, end_time, source_version, lifecycle_stage, artifact_uri,"
                        " experiment_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
        con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tags)
        con.executemany("INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)",
                        metrics)
        con.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)"
                        " VALUES (?,?,?,?,?,?)", metrics)
        con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", params)
    con.close()
    return groups, groups * 2


def timed(fn, *args, **kw):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    result = fn(*args, **kw)
    return result, time.perf_counter() - t0


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_in_child(db: Path, size: int) -> float:
    """Seed in a separate process, so this process's peak memory is the reports' alone."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--seed-only", str(db), str(size)], check=True,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


PRICE_FIX = """
version: bench-fix
models:
  gpt-4o-mini:
    source: "benchmark: output rate corrected"
    input: 0.15
    cached_input: 0.075
    output: 0.66
"""


def seed_calls_store(db: Path, size: int, mode: str = "runs") -> None:
    """``size`` call records over 30 days, four models, four features, priced by the shipped
    table, stored as ``mode`` stores them (two calls per operation outside ``runs`` mode)."""
    from tests.helpers.store_seed import seed_calls, seed_traces
    from tracked_openai.pricing import load_price_book, price_record
    from tracked_openai.records import CallRecord, OperationRecord, Usage

    book = load_price_book()
    rng = random.Random(7)
    now = time.time()
    records = []
    for i in range(size):
        model = MODELS[i % len(MODELS)][0]
        tin, tout = rng.randrange(200, 4000), rng.randrange(50, 800)
        rec = CallRecord(started_at=now - rng.randrange(30 * 86_400), duration_s=1.0, feature=FEATURES[i % 4],
                         endpoint="chat.completions", model=model, response_model=model, usage_source="response",
                         usage=Usage(input_tokens=tin, output_tokens=tout, cached_input_tokens=0, reasoning_tokens=0))
        price_record(rec, book)
        records.append(rec)
    if mode == "runs":
        seed_calls(db, records)
        return
    groups = []
    for first, second in zip(records[::2], records[1::2], strict=False):
        op = OperationRecord(started_at=first.started_at - 0.5, duration_s=3.0, feature=first.feature,
                             operation="diagram_analysis", call_count=2)
        for call in (first, second):
            call.parent_id, call.feature, call.operation = op.record_id, op.feature, op.operation
            call.started_at = op.started_at + 0.5 + (call is second)
        groups.append((op, (first, second)))
    if len(records) % 2:
        op = OperationRecord(started_at=records[-1].started_at - 0.5, duration_s=2.0, feature=records[-1].feature,
                             operation="diagram_analysis", call_count=1)
        records[-1].parent_id, records[-1].feature = op.record_id, op.feature
        groups.append((op, (records[-1],)))
    if mode == "runs+traces":
        seed_calls(db, [op for op, _ in groups])
    seed_traces(db, groups)


def bench_reprice(sizes: list[int], mode: str) -> None:
    from tracked_openai import reprice

    print(f"python {sys.version.split()[0]}; mode {mode}; records/s = call records read (and written) per second")
    print(f"{'records':>8} {'seed':>7} {'dry run':>9} {'rec/s':>7} {'--write':>9} {'rec/s':>7}"
          f" {'again':>9} {'rec/s':>7} {'difference':>12}")
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "mlflow.db"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--seed-calls-only", str(db), str(size), mode], check=True,
                           stderr=subprocess.DEVNULL)
            seed_s = time.perf_counter() - t0
            prices = Path(tmp) / "fix.yaml"
            prices.write_text(PRICE_FIX)
            uri = f"sqlite:///{db}"
            reprice.reprice(prices, tracking_uri=uri, since="2099-01-01")  # warm: imports, engine
            dry, t_dry = timed(reprice.reprice, prices, tracking_uri=uri)
            wrote, t_write = timed(reprice.reprice, prices, tracking_uri=uri, write=True)
            again, t_again = timed(reprice.reprice, prices, tracking_uri=uri, write=True)
            assert dry.total.records == wrote.written == again.already_written == size, (dry, wrote, again)
            assert again.written == 0
            print(f"{size:>8,} {seed_s:>6.1f}s {t_dry:>8.1f}s {size / t_dry:>7,.0f} {t_write:>8.1f}s"
                  f" {size / t_write:>7,.0f} {t_again:>8.1f}s {size / t_again:>7,.0f}"
                  f" {float(dry.total.difference_usd):>+11.4f}$")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--page-size", type=int, default=PAGE_SIZE)
    ap.add_argument("--reprice", action="store_true", help="time reprice instead of the reports")
    ap.add_argument("--seed-only", nargs=2, metavar=("DB", "RUNS"), help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("runs+traces", "traces", "runs"), default="runs+traces",
                    help="with --reprice: how the call records are stored (default: the default mlflow_mode)")
    ap.add_argument("--seed-calls-only", nargs=3, metavar=("DB", "RUNS", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.seed_only:
        seed(Path(args.seed_only[0]), int(args.seed_only[1]))
        return 0
    if args.seed_calls_only:
        seed_calls_store(Path(args.seed_calls_only[0]), int(args.seed_calls_only[1]), args.seed_calls_only[2])
        return 0
    if args.reprice:
        bench_reprice(args.sizes, args.mode)
        return 0
    import mlflow  # noqa: F401 - so the baseline memory includes MLflow itself

    print(f"python {sys.version.split()[0]}, page size {args.page_size}, "
          f"max RSS after importing MLflow: {max_rss_mb():.0f}MB")
    print(f"{'runs':>8} {'top-level':>9} {'seed':>7} {'metrics(1 feature)':>19} {'metrics(all, 7d)':>17}"
          f" {'metrics(all)':>13} {'recent_runs(10)':>16} {'runs/s':>8} {'max RSS':>9}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "mlflow.db"
            seed_s = seed_in_child(db, size)
            ops, calls = size // 3, size // 3 * 2
            uri = f"sqlite:///{db}"
            reports.feature_metrics("pid_verification", tracking_uri=uri, page_size=10)  # warm: imports, engine
            _one, t_one = timed(reports.feature_metrics, "pid_verification", tracking_uri=uri,
                               page_size=args.page_size)
            _week, t_week = timed(reports.feature_metrics, since="7d", tracking_uri=uri, page_size=args.page_size)
            every, t_all = timed(reports.feature_metrics, tracking_uri=uri, page_size=args.page_size)
            rows, t_recent = timed(reports.recent_runs, "crs_analysis", 10, tracking_uri=uri)
            assert every["total_runs"] == ops and every["total_calls"] == calls, every
            assert len(rows) == 10
            print(f"{ops + calls:>8,} {ops:>9,} {seed_s:>6.1f}s {t_one:>18.2f}s {t_week:>16.2f}s {t_all:>12.2f}s"
                  f" {t_recent:>15.3f}s {(ops + calls) / t_all:>8,.0f} {max_rss_mb():>7.0f}MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A burst of calls in ``traces`` mode with the ``mlflow server`` SIGKILLed and restarted mid-way:
how many call spans MLflow holds afterwards (counted with MLflow's own ``search_traces``, paged),
how many distinct record ids, and how long until all of it was readable.

The exporter is built with the library's default settings (queue 10,000, batch 256, retry 5 times
backing off 0.5-10 s, overflow to the spool, replay once the server answers), as a new user
would have it, with ``TracesSink`` (what ``mlflow_mode="traces"`` builds). Each call is made in
a one-call operation (``--per-op 1``: a two-span trace per call) unless ``--per-op`` says more.
The server is killed once a third of the records are written and started again ``--down``
seconds later (its start-up time counts: a real restart pays it too).

    python benchmarks/burst_traces.py                         # 10,000 calls, SQLite-backed server
    python benchmarks/burst_traces.py --backend pg --calls 10000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from exporter import settle

from tests.helpers.mlflow_server import MlflowServer, create_pg_database, drop_pg_database, postgres_available
from tracked_openai._config import settings
from tracked_openai.export import runtime as _runtime
from tracked_openai.export.queue import Exporter
from tracked_openai.records import CallRecord, OperationRecord, Record, Usage
from tracked_openai.sinks.modes import mode_sinks


def operations(n_calls: int, per_op: int, feature: str) -> list[Record]:
    """``n_calls`` calls in operations of ``per_op`` calls, in the order the library submits
    them (an operation's calls first, the operation, carrying them, last)."""
    out: list[Record] = []
    now = time.time()
    made = 0
    while made < n_calls:
        op = OperationRecord(
            started_at=now + made * 1e-4,
            duration_s=0.35,
            feature=feature,
            operation="diagram_analysis",
            function="analyze",
            tags={"tracking_type": "gpt_vision"},
            metrics={"confidence_score": 0.9},
        )
        calls = []
        for j in range(min(per_op, n_calls - made)):
            calls.append(
                CallRecord(
                    parent_id=op.record_id,
                    started_at=now + made * 1e-4 + 0.01 * (j + 1),
                    duration_s=0.3,
                    feature=feature,
                    operation="diagram_analysis",
                    function="analyze",
                    endpoint="chat.completions",
                    model="gpt-4o",
                    response_model="gpt-4o-2024-08-06",
                    params={"temperature": 0.2},
                    usage=Usage(input_tokens=1200, cached_input_tokens=0, output_tokens=300),
                    usage_source="response",
                    attempts=1,
                )
            )
        made += len(calls)
        op.calls = calls  # as prepare() does for a tracked operation: its calls ride with it
        out += [*calls, op]
    return out


def call_span_ids(uri: str, experiment_id: str) -> tuple[int, list[str]]:
    """(traces, record ids of every call span) in the experiment, read with MLflow's own
    ``search_traces``, page by page, spans included."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    traces, ids, token = 0, [], None
    while True:
        page = client.search_traces(locations=[experiment_id], max_results=500, page_token=token)
        for trace in page:
            traces += 1
            for span in trace.data.spans:
                if span.get_attribute("tracked_openai.endpoint") is not None:  # a call's span
                    ids.append(str(span.get_attribute("tracked_openai.record_id")))
        token = page.token
        if not token:
            return traces, ids


def default_exporter(sinks: list[object], spool: Path) -> Exporter:
    """The exporter the library builds (``runtime._make_exporter``), spooling under ``spool``."""
    return Exporter(
        sinks,
        prepare=_runtime.prepare,
        queue_size=settings.queue_size,
        batch_size=settings.batch_size,
        flush_interval=settings.flush_interval,
        spool_dir=spool,
        retry_attempts=settings.retry_attempts,
        retry_initial=settings.retry_initial,
        retry_max=settings.retry_max,
        overflow="spool",
        exit_hook=False,
    )


def burst(server: MlflowServer, n: int, per_op: int, down: float, spool: Path) -> None:
    sinks = mode_sinks("traces", server.url)
    exporter = default_exporter(sinks, spool)
    feature = f"burst-traces-{time.time_ns()}"
    exp = sinks[0]._runs.experiment_id(feature)
    warm = operations(3, 1, "burst-warmup")
    for r in warm:
        exporter.submit(r)
    exporter.flush(300)  # imports, client, experiment: not part of the burst
    base = exporter.stats()
    records = operations(n, per_op, feature)
    total = len(records)

    def written() -> int:
        # "exported" counts every record delivered, replays from the spool included.
        return exporter.stats()["exported"] - base["exported"]

    peak = {"queued": 0, "spooled": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            s = exporter.stats()
            peak["queued"] = max(peak["queued"], s["queued"])
            peak["spooled"] = max(peak["spooled"], s["spooled"] - base["spooled"])
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    t0 = time.perf_counter()
    submit_times = []
    for r in records:
        s = time.perf_counter()
        exporter.submit(r)
        submit_times.append(time.perf_counter() - s)
    t_submitted = time.perf_counter() - t0
    while written() < total // 3:
        time.sleep(0.05)
    print(
        f"  killing the server (SIGKILL) at {written()} of {total} records written "
        f"({time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    server.kill()
    time.sleep(down)
    t_restart = time.perf_counter()
    server.start(timeout=600)
    print(
        f"  server back after {time.perf_counter() - t_restart:.1f}s of start-up "
        f"({time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    deadline = time.monotonic() + 7200
    while time.monotonic() < deadline:
        s = exporter.stats()
        if written() >= total and s["queued"] == 0 and s["held"] == 0:
            break
        time.sleep(0.1)
    t_written = time.perf_counter() - t0
    stop.set()
    stats = exporter.stats()
    exporter.shutdown(60)
    # Read everything back; a short count is read again (an answer racing the last commit).
    for attempt in range(5):
        r0 = time.perf_counter()
        traces, ids = call_span_ids(server.url, exp)
        t_read = time.perf_counter() - r0
        if len(set(ids)) >= n or attempt == 4:
            break
        time.sleep(2.0)
    t_readable = time.perf_counter() - t0 - t_read  # when the read that found everything began
    distinct = len(set(ids))
    submit_times.sort()
    print(
        f"  submitted {n} calls ({total} records) in {t_submitted:.2f}s "
        f"(median submit {statistics.median(submit_times) * 1e6:.1f} µs, max {submit_times[-1] * 1e3:.1f} ms)"
    )
    print(f"  exporter: every record written after {t_written:.1f}s; stats={stats}")
    print(
        f"  peak queue {peak['queued']} (bound {settings.queue_size}), spooled {peak['spooled']} on the way"
    )
    print(
        f"  MLflow search_traces: {traces} traces, {len(ids)} call spans, {distinct} distinct record ids, "
        f"{n - distinct} missing, {len(ids) - distinct} duplicates"
    )
    print(f"  all readable {t_readable:.1f}s after the first call (reading them back took {t_read:.1f}s)")
    print(f"  end to end {n / t_readable:.1f} calls/s across the restart; load {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--per-op", type=int, default=1, help="calls per operation (trace)")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "pg"])
    parser.add_argument("--down", type=float, default=2.0, help="seconds between kill and restart")
    parser.add_argument("--workers", type=int, default=None, help="uvicorn workers (default: mlflow's)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tracked-openai-burst-traces-"))
    print(f"cpus={os.cpu_count()} load={os.getloadavg()} tmp={tmp}", flush=True)
    pg_db = None
    if args.backend == "pg":
        if not postgres_available():
            raise SystemExit("PostgreSQL not reachable on 127.0.0.1:5432")
        pg_db, backend = create_pg_database()
    else:
        backend = f"sqlite:///{tmp / 'burst.db'}"
    (tmp / "server").mkdir()
    server = MlflowServer(backend, tmp / "server", workers=args.workers)
    try:
        t = time.perf_counter()
        server.start(timeout=600)
        print(
            f"mlflow server ({args.backend}) up on {server.url} in {time.perf_counter() - t:.0f}s, "
            f"settled after {settle():.0f}s more",
            flush=True,
        )
        print(f"burst: {args.calls} calls, {args.per_op} per operation, traces mode, library defaults")
        burst(server, args.calls, args.per_op, args.down, tmp / "spool")
    finally:
        server.stop()
        if pg_db is not None:
            drop_pg_database(pg_db)


if __name__ == "__main__":
    main()

"""``TracesSink(senders=N)`` cuts a batch into several requests sent at once: against a real
``mlflow server`` on PostgreSQL (on SQLite parallel writes are refused as "database is locked",
which is why it is off by default) every trace lands once, whole; a batch some of whose requests
failed is retried as a whole and still leaves one trace each."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mlflow_server import MlflowServer, create_pg_database, drop_pg_database, postgres_available
from tracked_openai.mlflow.otlp import MlflowOtlpTransport
from tracked_openai.mlflow.traces import TraceData, mlflow_trace_id
from tracked_openai.records import CallRecord, OperationRecord, Record, Usage
from tracked_openai.sinks.traces import TracesSink

from .helpers import read_traces


@pytest.fixture(scope="module")
def mlflow_pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A server on PostgreSQL with mlflow's default 4 workers (parallel requests are the point),
    given time to start on a loaded machine."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (trust auth, user postgres)")
    name, uri = create_pg_database()
    workdir = tmp_path_factory.mktemp("mlflow-senders")
    server = MlflowServer(uri, workdir, workers=None)
    try:
        server.start(timeout=300)
        yield server
    finally:
        server.stop()
        drop_pg_database(name)


def _one_call_ops(n: int, feature: str) -> list[Record]:
    out: list[Record] = []
    now = time.time()
    for i in range(n):
        op = OperationRecord(started_at=now + i * 1e-4, duration_s=0.3, feature=feature, operation="op")
        call = CallRecord(
            parent_id=op.record_id,
            started_at=now + i * 1e-4 + 0.01,
            duration_s=0.2,
            feature=feature,
            operation="op",
            endpoint="chat.completions",
            model="gpt-4o-mini",
            response_model="gpt-4o-mini-2024-07-18",
            usage=Usage(input_tokens=100, output_tokens=10),
            usage_source="response",
        )
        op.calls = [call]  # as prepare() does for a tracked operation
        out += [call, op]
    return out


class _Watched(MlflowOtlpTransport):
    """The real transport, counting requests and how many were in flight at once; the
    ``fail_nth`` request (1-based) fails as a dropped connection would."""

    def __init__(self, url: str, fail_nth: int | None = None) -> None:
        super().__init__(url, timeout=120)
        self.fail_nth = fail_nth
        self.requests = 0
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()

    def send(self, experiment_id: str, traces: Sequence[TraceData], *, run_id: str | None = None) -> None:
        with self._lock:
            self.requests += 1
            nth = self.requests
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            time.sleep(0.2)  # so the requests of one batch overlap, even on a fast machine
            if nth == self.fail_nth:
                raise ConnectionError("connection dropped (injected)")
            super().send(experiment_id, traces, run_id=run_id)
        finally:
            with self._lock:
                self.in_flight -= 1


def _sink(server: MlflowServer, transport: Any, prefix: str) -> TracesSink:
    sink = TracesSink(server.url, experiment_prefix=prefix, timeout=120, senders=4)
    sink._transport = transport
    return sink


def _check(server: MlflowServer, sink: TracesSink, feature: str, records: list[Record]) -> None:
    found = read_traces(server.url, sink._runs.experiment_id(feature))
    ops = [r for r in records if isinstance(r, OperationRecord)]
    assert set(found) == {mlflow_trace_id(op.record_id) for op in ops}
    assert all(len(t.data.spans) == 2 for t in found.values())  # whole: root and call span
    assert sum(t.info.token_usage["input_tokens"] for t in found.values()) == 100 * len(ops)


def test_a_batch_goes_in_parallel_requests_and_lands_once(
    mlflow_pg_server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")  # the read-back, on a loaded machine
    transport = _Watched(mlflow_pg_server.url)
    sink = _sink(mlflow_pg_server, transport, f"senders-{time.time_ns()}-")
    assert sink.senders == 4
    records = _one_call_ops(64, "par")  # 128 spans: four requests of 32
    try:
        sink.export(records)
    finally:
        sink.shutdown()
    assert transport.requests == 4
    assert transport.peak > 1
    _check(mlflow_pg_server, sink, "par", records)


def test_a_failed_request_fails_the_batch_and_the_retry_leaves_one_trace_each(
    mlflow_pg_server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")  # the read-back, on a loaded machine
    transport = _Watched(mlflow_pg_server.url, fail_nth=2)
    sink = _sink(mlflow_pg_server, transport, f"senders-fail-{time.time_ns()}-")
    records = _one_call_ops(64, "part")
    try:
        with pytest.raises(ConnectionError):
            sink.export(records)  # three of four requests written: the exporter retries it all
        sink.export(records)
    finally:
        sink.shutdown()
    assert transport.requests == 8
    _check(mlflow_pg_server, sink, "part", records)


def test_one_request_at_a_time_unless_asked_and_always_on_the_embedded_store(tmp_path: Path) -> None:
    assert TracesSink("http://127.0.0.1:1").senders == 1
    assert TracesSink(f"sqlite:///{tmp_path / 'mlflow.db'}", senders=4).senders == 1

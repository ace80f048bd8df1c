"""Traces written into real MLflow stores and read back with MLflow's own client: the embedded
SQLite store (``log_spans``), ``mlflow server`` on SQLite and on PostgreSQL (OTLP/HTTP)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.helpers.fakeopenai import FakeOpenAI
from tests.helpers.mlflow_server import mlflow_pg_server, mlflow_server  # noqa: F401 - fixtures
from tracked_openai.mlflow.otlp import EmbeddedTransport, MlflowOtlpTransport, RejectedError
from tracked_openai.mlflow.traces import SpanData, TraceData, mlflow_trace_id, traces_of
from tracked_openai.testing import TrackedRecords

from .helpers import check_traces, make_records, read_traces


@dataclass
class Backend:
    uri: str
    transport: Any

    def experiment(self) -> str:
        return MlflowClient(self.uri).create_experiment(f"traces-{secrets.token_hex(4)}")


@pytest.fixture(params=["embedded", "server-sqlite", "server-postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "embedded":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        yield Backend(uri, EmbeddedTransport(MlflowClient(uri)._tracking_client.store))
        return
    server = request.getfixturevalue(
        "mlflow_server" if request.param == "server-sqlite" else "mlflow_pg_server"
    )
    yield Backend(server.url, MlflowOtlpTransport(server.url, timeout=120))


def test_operations_and_calls_read_back(backend: Backend, fake: FakeOpenAI, records: TrackedRecords) -> None:
    made = make_records(fake, records)
    exp = backend.experiment()
    backend.transport.send(exp, traces_of(made.records))
    check_traces(read_traces(backend.uri, exp), made)


def test_replay_is_idempotent(backend: Backend, fake: FakeOpenAI, records: TrackedRecords) -> None:
    """The same batch sent again (a retry after a lost answer, a spool replay), and its traces
    sent again one by one: still one trace per operation, same tokens and cost."""
    made = make_records(fake, records)
    exp = backend.experiment()
    traces = traces_of(made.records)
    backend.transport.send(exp, traces)
    backend.transport.send(exp, traces)
    for trace in traces:
        backend.transport.send(exp, [trace])
    check_traces(read_traces(backend.uri, exp), made)


def test_late_call_joins_its_operation(backend: Backend, fake: FakeOpenAI, records: TrackedRecords) -> None:
    """A call sent after its operation's trace (a late call) becomes one more span of that
    trace, and the trace's totals include it once."""
    made = make_records(fake, records)
    order = made.op("place_order")
    _first, second = made.calls_of(order)
    exp = backend.experiment()
    backend.transport.send(exp, traces_of([r for r in made.records if r is not second]))
    backend.transport.send(exp, traces_of([second]))
    backend.transport.send(exp, traces_of([second]))
    check_traces(read_traces(backend.uri, exp), made)


def test_a_malformed_span_is_rejected_not_retried(backend: Backend) -> None:
    """A span the receiver can't take (here: no trace id) fails as ``RejectedError`` (4xx),
    which the sink answers by splitting the batch, not by retrying it forever."""
    exp = backend.experiment()
    bad = SpanData(
        trace_id=b"", span_id=b"\1" * 8, parent_span_id=None, name="x", start_ns=1, end_ns=2, status="ok"
    )
    with pytest.raises(RejectedError):
        backend.transport.send(exp, [TraceData(b"", "f", [bad], ("bad",))])


def test_unreachable_server_is_transient() -> None:
    from tests.helpers.mlflow_server import free_port

    transport = MlflowOtlpTransport(f"http://127.0.0.1:{free_port()}", timeout=2)
    span = SpanData(
        trace_id=b"\1" * 16,
        span_id=b"\1" * 8,
        parent_span_id=None,
        name="x",
        start_ns=1,
        end_ns=2,
        status="ok",
    )
    with pytest.raises(ConnectionError):
        transport.send("0", [TraceData(b"\1" * 16, "f", [span], ("r",))])
    assert mlflow_trace_id("r")  # (ids of any record id are valid)

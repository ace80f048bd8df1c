"""The exporter and the MLflow sink against real ``mlflow server`` processes, with faults.

Each fault test asserts the two bars: no exception reaches the caller, and every record ends up
in MLflow exactly once (counted by ``record_id``) after recovery.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import tracked_openai
from tests.fakeopenai import FakeOpenAI, FakeResponse
from tests.mlflow_server import (  # noqa: F401 - fixtures
    FaultProxy,
    MlflowServer,
    mlflow_pg_server,
    mlflow_server,
    restartable_server,
)
from tracked_openai import _errors, _runtime
from tracked_openai._exporter import Exporter
from tracked_openai._features import experiment_name
from tracked_openai.records import CallRecord, OperationRecord, Usage
from tracked_openai.sinks.mlflow import MlflowSink

pytestmark = pytest.mark.server  # every test here runs against `mlflow server` processes

FAST = {"flush_interval": 0.05, "retry_initial": 0.05, "retry_max": 0.5, "retry_attempts": 3}


def make_calls(n: int, feature: str) -> list[CallRecord]:
    now = time.time()
    return [
        CallRecord(
            started_at=now + i * 1e-4, duration_s=0.05, feature=feature, endpoint="chat.completions",
            model="gpt-4o-mini", params={"temperature": 0.1}, usage=Usage(input_tokens=100, output_tokens=20),
        )
        for i in range(n)
    ]


def record_ids_in(uri: str, feature: str) -> list[str]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment_name(feature))
    if exp is None:
        return []
    ids: list[str] = []
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=5000, page_token=token)
        ids.extend(r.data.tags["record_id"] for r in page)
        token = page.token
        if not token:
            return ids


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


@pytest.fixture
def errors() -> Iterator[list[BaseException]]:
    seen: list[BaseException] = []
    _errors.set_internal_error_hook(seen.append)
    try:
        yield seen
    finally:
        _errors.set_internal_error_hook(None)


@pytest.fixture
def exporters(tmp_path: Path) -> Iterator[Any]:
    made: list[Exporter] = []

    def factory(uri: str, **kw: Any) -> Exporter:
        opts = {**FAST, "spool_dir": tmp_path / "spool", "prepare": _runtime.prepare, **kw}
        exporter = Exporter([MlflowSink(uri)], **opts)
        made.append(exporter)
        return exporter

    yield factory
    for exporter in made:
        exporter.shutdown(10)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest) -> MlflowServer:
    name = "mlflow_server" if request.param == "sqlite" else "mlflow_pg_server"
    srv: MlflowServer = request.getfixturevalue(name)
    return srv


def test_records_reach_server_once(server: MlflowServer, exporters: Any, errors: list[BaseException]) -> None:
    """Over HTTP (SQLite or PostgreSQL backend): every record is one run, and exporting the same
    records again (a replay) adds nothing."""
    feature = f"http_{server.port}_{time.time_ns()}"
    exporter = exporters(server.url)
    op = OperationRecord(started_at=time.time(), duration_s=1.0, feature=feature, operation="batch_job")
    calls = make_calls(20, feature)
    for c in calls:
        c.parent_id = op.record_id
    for record in [*calls, op]:
        exporter.submit(record)
    assert exporter.flush(60)
    ids = record_ids_in(server.url, feature)
    assert sorted(ids) == sorted(r.record_id for r in [*calls, op])
    MlflowSink(server.url).export([*calls, op])
    assert len(record_ids_in(server.url, feature)) == 21
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name(feature)
    op_run = client.search_runs([exp.experiment_id], filter_string=f"tags.record_id = '{op.record_id}'")[0]
    parent_filter = f"tags.mlflow.parentRunId = '{op_run.info.run_id}'"
    nested = client.search_runs([exp.experiment_id], filter_string=parent_filter, max_results=100)
    assert len(nested) == 20
    assert exporter.stats()["spooled"] == 0 and not errors


def test_fresh_connections_opt_in_scoped_to_writer_threads(
    mlflow_server: MlflowServer, errors: list[BaseException]  # noqa: F811
) -> None:
    """``fresh_connections=True`` sends ``Connection: close`` from the sink's writer threads only
    (the host's own MLflow requests keep their headers), and records still arrive once each."""
    from mlflow.tracking.request_header.registry import resolve_request_headers

    assert MlflowSink(mlflow_server.url).fresh_connections is False  # the default
    sink = MlflowSink(mlflow_server.url, fresh_connections=True)
    seen: dict[str, dict[str, str]] = {}

    def writer() -> None:
        sink._init_writer_thread()
        seen["writer"] = resolve_request_headers()

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    assert seen["writer"].get("Connection") == "close"
    assert "Connection" not in resolve_request_headers()

    feature = f"fresh_{time.time_ns()}"
    records = make_calls(12, feature)
    sink.export(records)
    assert sorted(record_ids_in(mlflow_server.url, feature)) == sorted(r.record_id for r in records)
    assert not errors


def test_server_down_at_start_spools_then_replays(
    restartable_server: MlflowServer, exporters: Any, errors: list[BaseException]  # noqa: F811
) -> None:
    feature = "down_at_start"
    restartable_server.kill()  # down (a no-op when it never started)
    exporter = exporters(restartable_server.url)
    records = make_calls(30, feature)
    for record in records:
        exporter.submit(record)  # the server isn't even running: must not raise or block
    exporter.flush(30)
    stats = exporter.stats()
    assert stats["spooled"] == 30 and stats["exported"] == 0
    restartable_server.start()
    assert wait_for(lambda: exporter.stats()["replayed"] == 30, 60)
    assert sorted(record_ids_in(restartable_server.url, feature)) == sorted(r.record_id for r in records)
    assert not errors


@pytest.mark.slow
def test_server_killed_and_restarted_during_burst(
    restartable_server: MlflowServer, exporters: Any, errors: list[BaseException]  # noqa: F811
) -> None:
    """A burst while the server crashes and comes back: exactly one run per record.
    (The 10,000-call version is ``benchmarks/exporter.py --burst``.)"""
    feature = "burst_restart"
    restartable_server.start()
    exporter = exporters(restartable_server.url, batch_size=50)
    records = make_calls(250, feature)
    submit_times: list[float] = []

    def produce() -> None:
        for record in records:
            t0 = time.perf_counter()
            exporter.submit(record)
            submit_times.append(time.perf_counter() - t0)
            time.sleep(0.002)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.3)
    restartable_server.kill()
    time.sleep(0.5)
    restartable_server.start()
    producer.join()
    assert exporter.flush(120)
    assert wait_for(lambda: exporter.stats()["exported"] == 250, 120), exporter.stats()
    ids = record_ids_in(restartable_server.url, feature)
    assert len(ids) == 250 and set(ids) == {r.record_id for r in records}
    assert max(submit_times) < 0.05  # the caller never waited for the outage
    assert exporter.stats()["spooled"] > 0  # the outage was real
    assert not errors


@pytest.fixture
def proxy(mlflow_server: MlflowServer) -> Iterator[FaultProxy]:  # noqa: F811
    p = FaultProxy(mlflow_server.port, delay=0.3)
    try:
        yield p
    finally:
        p.close()


def test_slow_server_never_slows_the_caller(
    proxy: FaultProxy, exporters: Any, errors: list[BaseException]
) -> None:
    feature = f"slow_{time.time_ns()}"
    exporter = exporters(proxy.url)
    proxy.mode = "slow"
    records = make_calls(20, feature)
    t0 = time.perf_counter()
    for record in records:
        exporter.submit(record)
    assert time.perf_counter() - t0 < 0.1
    assert exporter.flush(120)
    assert proxy.hits["slow"] > 0
    assert sorted(record_ids_in(proxy.upstream_url, feature)) == sorted(r.record_id for r in records)
    assert not errors


def test_5xx_answers_are_retried_spooled_and_replayed(
    proxy: FaultProxy, tmp_path: Path, fake: FakeOpenAI, errors: list[BaseException]
) -> None:
    """Through the real client path: tracked calls succeed while MLflow answers 503; the records
    are retried, spooled, and replayed once the server answers again."""
    feature = f"five_xx_{time.time_ns()}"
    fake.add("POST", "/chat/completions", FakeResponse.from_fixture("chat_gpt5_nano_reasoning"))
    client = tracked_openai.OpenAI(api_key="sk-test-hardcoded", http_client=fake.sync_client(), max_retries=0)
    saved = dataclasses.replace(_runtime.settings)
    _runtime.configure(sinks=[MlflowSink(proxy.url)], spool_dir=str(tmp_path / "spool"), **FAST)
    try:
        proxy.mode = "503"
        with tracked_openai.track(feature, "checks"):
            for _ in range(10):
                out = client.chat.completions.create(
                    model="gpt-5-nano", messages=[{"role": "user", "content": "x"}]
                )
                assert out.usage is not None
        _runtime.flush(30)
        stats = _runtime.stats()
        assert stats["retried"] > 0 and stats["spooled"] == 11 and stats["exported"] == 0
        assert proxy.hits["503"] > 0
        proxy.mode = "pass"
        assert wait_for(lambda: _runtime.stats()["replayed"] == 11, 60), _runtime.stats()
        ids = record_ids_in(proxy.upstream_url, feature)
        assert len(ids) == 11 and len(set(ids)) == 11
        assert not errors
    finally:
        client.close()
        _runtime.shutdown(10)
        for field in dataclasses.fields(saved):
            setattr(_runtime.settings, field.name, getattr(saved, field.name))
        _runtime.configure(sinks=[])


def test_queue_full_against_server_loses_nothing(
    mlflow_server: MlflowServer, exporters: Any, errors: list[BaseException]  # noqa: F811
) -> None:
    feature = f"queue_full_{time.time_ns()}"
    exporter = exporters(mlflow_server.url, queue_size=5, batch_size=5)
    records = make_calls(80, feature)
    for record in records:
        exporter.submit(record)
    assert exporter.flush(120)
    stats = exporter.stats()
    assert stats["spooled"] > 0 and stats["dropped"] == 0
    assert sorted(record_ids_in(mlflow_server.url, feature)) == sorted(r.record_id for r in records)
    assert not errors

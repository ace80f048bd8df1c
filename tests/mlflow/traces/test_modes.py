"""``mlflow_mode``: runs, traces, runs+traces (the default) through the library into real
stores, read back with MLflow's client; the traces sink's outage path (spool, replay, once)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import tracked_openai
from tests.helpers.fakeopenai import FakeOpenAI
from tests.helpers.mlflow_server import MlflowServer, mlflow_server, restartable_server  # noqa: F401 - fixtures
from tracked_openai._config import check_mlflow_mode, load_settings
from tracked_openai.export import runtime as _runtime
from tracked_openai.export.queue import Exporter, sink_key
from tracked_openai.mlflow.traces import mlflow_trace_id, traces_of
from tracked_openai.records import CallRecord, OperationRecord, Usage
from tracked_openai.sinks.modes import OperationRunsSink, mode_sinks, mode_spool_keys
from tracked_openai.sinks.traces import TracesSink
from tracked_openai.testing import TrackedRecords

from .helpers import Made, check_traces, make_records, read_traces


@pytest.fixture(autouse=True)
def _settings_restored() -> Iterator[None]:
    """These tests configure an experiment prefix and a spool folder of their own: put the
    process-wide settings back, so later tests see the default experiment names."""
    from tracked_openai._config import settings

    saved = dict(settings.__dict__)
    yield
    settings.__dict__.clear()
    settings.__dict__.update(saved)


@pytest.fixture(params=["embedded", "server-sqlite"])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "embedded":
        yield f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        yield request.getfixturevalue("mlflow_server").url


def _runs(uri: str, experiment_id: str) -> list[Any]:
    return list(MlflowClient(uri).search_runs([experiment_id], max_results=1000))


def _through(
    mode: str, uri: str, fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path
) -> tuple[Made, Any]:
    prefix = f"{mode.replace('+', '')}-{time.time_ns()}-"
    tracked_openai.configure(experiment_prefix=prefix, spool_dir=str(tmp_path / "spool"))
    sinks = mode_sinks(mode, uri, timeout=120)
    tracked_openai.configure(sinks=[*sinks, records.sink])
    made = make_records(fake, records)
    assert tracked_openai.flush(timeout=120)
    assert tracked_openai.stats().get("spooled", 0) == 0
    return made, sinks[0]


def test_runs_and_traces_default(uri: str, fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path) -> None:
    """Operations are runs (AIFlow names), calls inside them only spans, calls outside any
    operation runs and traces; each operation's trace is linked to its run."""
    made, runs_sink = _through("runs+traces", uri, fake, records, tmp_path)
    assert isinstance(runs_sink, OperationRunsSink)
    exp = runs_sink.experiment_id("checkout")
    runs = _runs(uri, exp)
    by_record = {r.data.tags["record_id"]: r for r in runs}
    assert set(by_record) == {o.record_id for o in made.operations}  # no call runs in checkout
    order = by_record[made.op("place_order").record_id]
    assert order.data.tags["operation"] == "place_order" and order.data.tags["status"] == "success"
    assert order.data.metrics["execution_time"] > 0
    check_traces(read_traces(uri, exp), Made([r for r in made.records if r.feature == "checkout"]))
    # MLflow's run page lists the operation's trace.
    linked = MlflowClient(uri).search_traces(locations=[exp], run_id=order.info.run_id)
    assert [t.info.trace_id for t in linked] == [mlflow_trace_id(made.op("place_order").record_id)]
    # The call outside any operation: a run and a one-span trace of the default feature.
    [top] = [c for c in made.calls if c.parent_id is None]
    top_exp = runs_sink.experiment_id(top.feature)
    assert [r.data.tags["record_id"] for r in _runs(uri, top_exp)] == [top.record_id]
    assert list(read_traces(uri, top_exp)) == [mlflow_trace_id(top.record_id)]


def test_traces_only(tmp_path: Path, fake: FakeOpenAI, records: TrackedRecords) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made, sink = _through("traces", uri, fake, records, tmp_path)
    assert isinstance(sink, TracesSink)
    for feature in {r.feature for r in made.records}:
        exp = sink._runs.experiment_id(feature)
        assert _runs(uri, exp) == []
        check_traces(read_traces(uri, exp), Made([r for r in made.records if r.feature == feature]), feature)


def test_runs_only_is_todays_mapping(tmp_path: Path, fake: FakeOpenAI, records: TrackedRecords) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made, sink = _through("runs", uri, fake, records, tmp_path)
    exp = sink.experiment_id("checkout")
    assert {r.data.tags["record_id"] for r in _runs(uri, exp)} == {
        r.record_id for r in made.records if r.feature == "checkout"
    }
    assert read_traces(uri, exp) == {}


def test_mode_setting(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("TRACKED_OPENAI_MLFLOW_MODE", raising=False)
    assert load_settings().mlflow_mode == "runs+traces"
    monkeypatch.setenv("TRACKED_OPENAI_MLFLOW_MODE", " Traces ")
    assert load_settings().mlflow_mode == "traces"
    monkeypatch.setenv("TRACKED_OPENAI_MLFLOW_MODE", "spans")
    with caplog.at_level(logging.WARNING, logger="tracked_openai"):
        assert load_settings().mlflow_mode == "runs+traces"
    assert "TRACKED_OPENAI_MLFLOW_MODE='spans' is not one of runs, traces, runs+traces" in caplog.text
    assert check_mlflow_mode("both", "x") == "runs+traces"
    previous = _runtime.settings.mlflow_mode
    try:
        tracked_openai.configure(mlflow_mode="runs")
        assert _runtime.settings.mlflow_mode == "runs"
    finally:
        _runtime.settings.mlflow_mode = previous


@pytest.mark.parametrize("mode", ["runs", "traces", "runs+traces"])
@pytest.mark.parametrize("otlp", [False, True])
def test_predicted_spool_keys(mode: str, otlp: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records spooled at exit before the sinks exist are filed under the keys they will have."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    if otlp:
        monkeypatch.setenv("TRACKED_OPENAI_OTLP_ENDPOINT", "http://collector:4318")
    else:
        monkeypatch.delenv("TRACKED_OPENAI_OTLP_ENDPOINT", raising=False)
    keys = [sink_key(s) for s in mode_sinks(mode)]
    assert mode_spool_keys(mode) == keys
    assert len(set(keys)) == len(keys)


def _one_call_ops(n: int, feature: str) -> list[Any]:
    out: list[Any] = []
    now = time.time()
    for i in range(n):
        op = OperationRecord(started_at=now + i, duration_s=0.5, feature=feature, operation="op")
        call = CallRecord(
            parent_id=op.record_id,
            started_at=now + i + 0.1,
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


def test_server_down_spools_then_replays_once(
    restartable_server: MlflowServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Traces for a server that is down are spooled under the traces sink's key and replayed
    when it is back: every operation one trace, its call one span, nothing twice."""
    restartable_server.start()
    sink = TracesSink(restartable_server.url, experiment_prefix=f"down-{time.time_ns()}-", timeout=30)
    exp = sink._runs.experiment_id("down")
    restartable_server.kill()
    exporter = Exporter(
        [sink],
        prepare=_runtime.prepare,
        spool_dir=tmp_path / "spool",
        flush_interval=0.05,
        retry_attempts=2,
        retry_initial=0.05,
        retry_max=0.5,
    )
    try:
        records = _one_call_ops(40, "down")
        for record in records:
            exporter.submit(record)
        exporter.flush(60)
        assert exporter.stats()["spooled"] == 80 and exporter.stats()["exported"] == 0
        restartable_server.start()
        deadline = time.monotonic() + 120
        while exporter.stats()["replayed"] < 80 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert exporter.stats()["replayed"] == 80
        found = read_traces(restartable_server.url, exp)
        ops = [r for r in records if isinstance(r, OperationRecord)]
        assert set(found) == {mlflow_trace_id(o.record_id) for o in ops}
        assert all(len(t.data.spans) == 2 for t in found.values())
        assert sum(t.info.token_usage["input_tokens"] for t in found.values()) == 40 * 100
        # The same batch again (a replay racing an export at exit): still one trace each.
        sink.export(records)
        again = read_traces(restartable_server.url, exp)
        assert set(again) == set(found)
        assert sum(t.info.token_usage["input_tokens"] for t in again.values()) == 40 * 100
    finally:
        exporter.shutdown(10)
    assert traces_of(records)  # (mapping of the spooled records is the same as of the live ones)


_FIGURES = (
    "total_runs",
    "success_rate",
    "total_cost",
    "total_calls",
    "failed_calls",
    "unpriced_calls",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "total_tokens",
)


def test_reports_give_the_same_numbers_in_every_mode(
    tmp_path: Path, fake: FakeOpenAI, records: TrackedRecords
) -> None:
    """The same calls written in each mode (a store each): ``feature_metrics`` gives the same
    figures, by feature, operation and model; in runs+traces no call is counted twice."""
    from tracked_openai import reports

    figures: dict[str, dict[str, Any]] = {}
    expected_cost = 0.0
    for mode in ("runs", "traces", "runs+traces"):
        uri = f"sqlite:///{tmp_path / (mode.replace('+', '_') + '.db')}"
        tracked_openai.configure(
            sinks=[*mode_sinks(mode, uri), records.sink], spool_dir=str(tmp_path / "spool")
        )
        records.sink.clear()
        made = make_records(fake, records)
        assert tracked_openai.flush(timeout=120)
        expected_cost = sum(float(c.cost.total_usd) for c in made.calls if c.cost is not None)
        result = reports.feature_metrics(tracking_uri=uri)
        checkout = reports.feature_metrics("checkout", tracking_uri=uri)
        refund = reports.feature_metrics("checkout", operation="refund", tracking_uri=uri)
        figures[mode] = {
            "all": {k: result[k] for k in _FIGURES},
            "checkout": {k: checkout[k] for k in _FIGURES},
            "refund": {k: refund[k] for k in _FIGURES},
            "by_model": [
                (r["key"], r["total_calls"], round(r["total_cost"], 12)) for r in result["by_model"]
            ],
            "by_feature": [(r["key"], r["total_runs"], r["total_calls"]) for r in result["by_feature"]],
        }
    assert figures["traces"] == figures["runs"]
    assert figures["runs+traces"] == figures["runs"]
    assert figures["runs"]["all"]["total_calls"] == 5 and figures["runs"]["all"]["failed_calls"] == 1
    assert abs(figures["runs"]["all"]["total_cost"] - expected_cost) < 1e-9

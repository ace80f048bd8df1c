"""The MLflow runs mapping against a real embedded store (SQLite in a tmp dir, no mocks).

Records come from the tracked clients and the seed decorators, go through the exporter, and are
read back with ``MlflowClient`` exactly as reports and the REST API will read them.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

import tracked_openai
from tests.fakeopenai import FakeOpenAI, FakeResponse
from tracked_openai import _errors, _runtime, track
from tracked_openai._features import experiment_name, register_feature
from tracked_openai.decorators import track_custom_operation, track_gpt_text, track_gpt_vision
from tracked_openai.records import CallRecord, OperationRecord, Usage
from tracked_openai.sinks import InMemorySink
from tracked_openai.sinks.mlflow import MlflowSink

API_KEY = "sk-test-hardcoded"
MSG = [{"role": "user", "content": "x"}]


@dataclasses.dataclass
class Store:
    uri: str
    sink: MlflowSink
    memory: InMemorySink
    client: MlflowClient
    errors: list[BaseException]

    def flush(self) -> None:
        assert _runtime.flush(60)

    def runs(self, feature: str) -> list[Run]:
        exp = self.client.get_experiment_by_name(experiment_name(feature))
        assert exp is not None, f"no experiment for {feature}"
        return list(self.client.search_runs([exp.experiment_id], max_results=1000))

    def run_of(self, record_id: str, feature: str) -> Run:
        (run,) = [r for r in self.runs(feature) if r.data.tags.get("record_id") == record_id]
        return run


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite database with its schema (creating one costs ~1.5 s of migrations;
    tests copy this file instead)."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path: Path, migrated_db: Path) -> Iterator[Store]:
    """The runtime exports to an embedded SQLite MLflow store (plus memory, to compare)."""
    shutil.copy(migrated_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    saved = dataclasses.replace(_runtime.settings, features=dict(_runtime.settings.features))
    errors: list[BaseException] = []
    sink = MlflowSink(uri)
    memory = InMemorySink()
    _runtime.configure(
        sinks=[sink, memory], enabled=True, spool_dir=str(tmp_path / "spool"), flush_interval=0.05
    )
    _errors.set_internal_error_hook(errors.append)
    try:
        yield Store(uri, sink, memory, MlflowClient(uri), errors)
        assert not errors, errors
    finally:
        _errors.set_internal_error_hook(None)
        _runtime.shutdown(30)
        for field in dataclasses.fields(saved):
            setattr(_runtime.settings, field.name, getattr(saved, field.name))
        _runtime.configure(sinks=[])


@pytest.fixture
def openai_client(fake: FakeOpenAI) -> Iterator[tracked_openai.OpenAI]:
    fake.add("POST", "/chat/completions", FakeResponse.from_fixture("chat_gpt5_nano_reasoning"))
    c = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    yield c
    c.close()


def test_decorated_function_and_its_call_become_nested_runs(
    store: Store, openai_client: tracked_openai.OpenAI
) -> None:
    @track_gpt_text("pid_verification", "diagram_analysis")
    def analyze() -> dict[str, Any]:
        openai_client.chat.completions.create(
            model="gpt-5-nano", messages=MSG, temperature=0.2, max_completion_tokens=500
        )
        return {"confidence": 0.87, "issues": 3}

    analyze()
    store.flush()
    (op,) = store.memory.operations
    (call,) = store.memory.calls
    runs = store.runs("pid_verification")
    assert len(runs) == 2
    op_run = store.run_of(op.record_id, "pid_verification")
    call_run = store.run_of(call.record_id, "pid_verification")

    # Operation run: names, tags, metrics the original system's users see.
    assert op_run.info.run_name == "diagram_analysis"
    assert op_run.info.status == "FINISHED"
    tags = op_run.data.tags
    assert tags["kind"] == "operation" and tags["status"] == "success"
    assert tags["feature"] == "pid_verification" and tags["operation"] == "diagram_analysis"
    assert tags["function"].endswith("analyze")
    assert tags["tracking_type"] == "gpt_text"  # user/decorator tags as-is
    metrics = op_run.data.metrics
    assert metrics["confidence_score"] == pytest.approx(0.87)
    assert metrics["call_count"] == 1
    assert metrics["prompt_tokens"] == 11 and metrics["completion_tokens"] == 228
    assert metrics["total_tokens"] == 239 and metrics["reasoning_tokens"] == 192
    assert metrics["execution_time"] == pytest.approx(op.duration_s)
    assert op.cost_usd is not None and metrics["cost_usd"] == pytest.approx(float(op.cost_usd))
    assert op_run.info.start_time == round(op.started_at * 1000)
    assert op_run.info.end_time == round((op.started_at + (op.duration_s or 0)) * 1000)

    # Call run: a child of the operation's run.
    assert call_run.data.tags["mlflow.parentRunId"] == op_run.info.run_id
    assert call_run.info.run_name == call.endpoint
    ctags = call_run.data.tags
    assert ctags["kind"] == "call" and ctags["endpoint"] == call.endpoint
    assert ctags["model"] == "gpt-5-nano" and ctags["response_model"] == "gpt-5-nano-2025-08-07"
    assert ctags["usage_source"] == "response" and ctags["pricing_version"] == call.pricing_version
    assert ctags["cost_status"] == call.cost_status and ctags["record_id"] == call.record_id
    params = call_run.data.params
    assert params["model"] == "gpt-5-nano" and params["temperature"] == "0.2"
    cm = call_run.data.metrics
    assert cm["prompt_tokens"] == 11 and cm["completion_tokens"] == 228 and cm["attempts"] == 1
    assert call.cost is not None and cm["cost_usd"] == pytest.approx(float(call.cost.total_usd))
    assert call_run.info.start_time == round(call.started_at * 1000)


def test_failed_operation_is_failed_run_with_traceback(store: Store) -> None:
    @track_gpt_vision("pid_verification", "diagram_analysis")
    def broken() -> None:
        raise ValueError("bad diagram")

    with pytest.raises(ValueError, match="bad diagram"):
        broken()
    store.flush()
    (run,) = store.runs("pid_verification")
    assert run.info.status == "FAILED"
    tags = run.data.tags
    assert tags["status"] == "error" and tags["error_type"] == "ValueError"
    assert tags["error_message"] == "bad diagram"
    assert "ValueError: bad diagram" in tags["error_traceback"]


def test_call_outside_operation_is_top_level_run(store: Store, openai_client: tracked_openai.OpenAI) -> None:
    openai_client.chat.completions.create(model="gpt-5-nano", messages=MSG)
    store.flush()
    (run,) = store.runs(_runtime.settings.default_feature)
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["kind"] == "call"


def test_custom_operation_metrics_by_name(store: Store) -> None:
    @track_custom_operation("crs_analysis", "requirements")
    def analyze() -> dict[str, Any]:
        return {"requirements_found": 12, "coverage": 0.75, "label": "x"}

    analyze()
    store.flush()
    (run,) = store.runs("crs_analysis")
    assert run.data.metrics["requirements_found"] == 12
    assert run.data.metrics["coverage"] == 0.75
    assert "label" not in run.data.metrics
    exp = store.client.get_experiment(run.info.experiment_id)
    assert exp.name == "CRS Document Analysis"
    assert exp.tags["tracked_openai.feature"] == "crs_analysis"


def test_experiment_names_from_registry_config_and_unknown_keys(store: Store) -> None:
    register_feature("bom_extraction", "Bill of Materials Extraction")
    tracked_openai.configure(features={"cfg_feature": "Configured Feature"})
    for feature in ("pfd_conversion", "visual_generation", "bom_extraction", "cfg_feature", "brand_new"):
        with tracked_openai.track(feature, "op"):
            pass
    store.flush()
    names = {e.name for e in store.client.search_experiments()}
    assert {
        "PFD to P&ID Conversion",
        "Visual Diagram Generation",
        "Bill of Materials Extraction",
        "Configured Feature",
        "brand_new",
    } <= names


def test_experiment_prefix(tmp_path: Path, migrated_db: Path) -> None:
    shutil.copy(migrated_db, tmp_path / "p.db")
    sink = MlflowSink(f"sqlite:///{tmp_path / 'p.db'}", experiment_prefix="staging/")
    op = OperationRecord(started_at=time.time(), duration_s=0.1, feature="pid_verification", operation="x")
    sink.export([op])
    assert sink.client.get_experiment_by_name("staging/P&ID Design Verification") is not None
    sink.shutdown()


def test_same_batch_exported_twice_makes_one_run_each(store: Store) -> None:
    """A retried or replayed batch never makes a second run."""
    op = OperationRecord(started_at=time.time(), duration_s=0.5, feature="pfd_conversion", operation="spec")
    calls = [
        CallRecord(
            parent_id=op.record_id, started_at=time.time(), duration_s=0.1, feature="pfd_conversion",
            endpoint="chat.completions", model="gpt-4o", usage=Usage(input_tokens=i, output_tokens=1),
        )
        for i in range(5)
    ]
    batch = [*calls, op]
    store.sink.export(batch)
    store.sink.export(batch)
    fresh = MlflowSink(store.uri)  # a later process: knows nothing but what the store says
    fresh.export(batch)
    runs = store.runs("pfd_conversion")
    assert len(runs) == 6
    assert sorted(r.data.tags["record_id"] for r in runs) == sorted(r.record_id for r in batch)
    op_run = store.run_of(op.record_id, "pfd_conversion")
    assert all(
        r.data.tags["mlflow.parentRunId"] == op_run.info.run_id for r in runs if r.data.tags["kind"] == "call"
    )
    fresh.shutdown()


def test_half_written_run_is_completed_not_duplicated(store: Store) -> None:
    """An attempt that died after create_run left a RUNNING run: the retry finishes that run."""
    call = CallRecord(started_at=time.time(), duration_s=0.2, feature="crs_analysis", endpoint="embeddings",
                      model="text-embedding-3-small", usage=Usage(input_tokens=7))
    exp_id = store.sink.experiment_id("crs_analysis")
    partial = store.client.create_run(exp_id, start_time=round(call.started_at * 1000),
                                      tags={"record_id": call.record_id})
    store.sink.export([call])
    (run,) = store.runs("crs_analysis")
    assert run.info.run_id == partial.info.run_id
    assert run.info.status == "FINISHED" and run.data.metrics["prompt_tokens"] == 7


def test_calls_exported_before_their_operation_are_nested_later(store: Store) -> None:
    op = OperationRecord(started_at=time.time(), duration_s=1.0, feature="visual_generation",
                         operation="render", call_count=2)
    calls = [
        CallRecord(parent_id=op.record_id, started_at=time.time(), duration_s=0.1,
                   feature="visual_generation", endpoint="images.generate", model="dall-e-3")
        for _ in range(2)
    ]
    store.sink.export(calls[:1])
    # The second call is written by another sink (another process) before the operation.
    other = MlflowSink(store.uri)
    other.export(calls[1:])
    store.sink.export([op])
    op_run = store.run_of(op.record_id, "visual_generation")
    for call in calls:
        run = store.run_of(call.record_id, "visual_generation")
        assert run.data.tags["mlflow.parentRunId"] == op_run.info.run_id
        assert run.data.tags["parent_record_id"] == op.record_id
    other.shutdown()


def test_operation_in_another_feature_is_top_level_with_parent_record_id(store: Store) -> None:
    track = tracked_openai.track
    with track("pid_verification", "outer") as outer, track("crs_analysis", "inner"):
        pass
    store.flush()
    assert outer is not None
    (inner,) = store.runs("crs_analysis")
    assert "mlflow.parentRunId" not in inner.data.tags
    assert inner.data.tags["parent_record_id"] == outer.record_id


def test_nested_operation_in_same_feature_is_child_run(store: Store) -> None:
    track = tracked_openai.track
    with track("pid_verification", "outer") as outer, track(None, "inner") as inner:
        pass
    store.flush()
    assert outer is not None and inner is not None
    outer_run = store.run_of(outer.record_id, "pid_verification")
    inner_run = store.run_of(inner.record_id, "pid_verification")
    assert inner_run.data.tags["mlflow.parentRunId"] == outer_run.info.run_id


def test_values_and_keys_mlflow_would_reject_are_made_safe(store: Store) -> None:
    op = OperationRecord(
        started_at=time.time(), duration_s=0.1, feature="pid_verification", operation="x",
        params={"prompt_template": "p" * 10_000}, metrics={"weird:key!": 1.0, "nan": float("nan")},
        tags={"note": "t" * 20_000}, traceback="T" * 20_000, status="error", error_message="e",
    )
    store.sink.export([op])
    (run,) = store.runs("pid_verification")
    assert len(run.data.params["prompt_template"]) == 6000
    assert len(run.data.tags["note"]) == 8000 and len(run.data.tags["error_traceback"]) == 8000
    assert run.data.metrics["weird_key_"] == 1.0 and "nan" not in run.data.metrics


def test_default_store_is_mlflows_own_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_db: Path
) -> None:
    """With MLFLOW_TRACKING_URI unset the sink uses MLflow's default, ./mlflow.db (SQLite),
    resolved once to an absolute path so a later chdir doesn't move the store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copy(migrated_db, tmp_path / "mlflow.db")  # schema only, to save the migrations' time
    sink = MlflowSink()
    assert sink.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink.export([CallRecord(started_at=time.time(), duration_s=0.1, feature="default", endpoint="x")])
    runs = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(
        [sink.experiment_id("default")]
    )
    assert len(runs) == 1
    assert sink.spool_key == f"mlflow:sqlite:///{tmp_path / 'mlflow.db'}"
    sink.shutdown()


def test_streamed_operations_cost_counts_once_on_time_or_late(
    store: Store, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream read after its operation ended: on time it is in the operation's cost; past the
    wait it is marked late and the report adds its cost by itself. Never twice, never zero."""
    from tests.test_clients_helpers import usage_aware_stream
    from tracked_openai import _context, reports
    from tracked_openai.records import LATE_TAG

    fake.add("POST", "/chat/completions", usage_aware_stream("chat_stream_gpt4_include_usage"))
    client = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    with track("streaming_report", "on_time"):
        stream = client.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
    list(stream)
    monkeypatch.setattr(_context, "OPERATION_WAIT_S", 0.0)
    with track("streaming_report", "late"):
        stream = client.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
    with track("streaming_report", "releases_the_late_one"):
        pass
    list(stream)
    store.flush()
    on_time_call, late_call = store.memory.calls
    assert LATE_TAG not in on_time_call.tags and late_call.tags[LATE_TAG] == "true"
    assert late_call.cost is not None and on_time_call.cost is not None
    assert store.run_of(late_call.record_id, "streaming_report").data.tags[LATE_TAG] == "true"
    m = reports.feature_metrics("streaming_report", tracking_uri=store.uri)
    assert m["total_runs"] == 3 and m["total_calls"] == 2
    assert m["total_cost"] == pytest.approx(float(on_time_call.cost.total_usd + late_call.cost.total_usd))
    client.close()

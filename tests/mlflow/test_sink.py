"""The MLflow runs mapping against a real embedded store (SQLite in a tmp dir, no mocks).

Records come from the tracked clients and the AIFlow tracking decorators, go through the exporter, and are
read back with ``MlflowClient`` exactly as reports and the REST API will read them.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

import tracked_openai
from tests.helpers.fakeopenai import FakeOpenAI, FakeResponse, load_fixture
from tracked_openai import _errors, track
from tracked_openai.decorators import track_custom_operation, track_gpt_text, track_gpt_vision
from tracked_openai.export import runtime as _runtime
from tracked_openai.mlflow.names import experiment_name, register_feature
from tracked_openai.records import CallRecord, OperationRecord, Usage
from tracked_openai.sinks import InMemorySink
from tracked_openai.sinks.mlflow import MlflowSink

API_KEY = "sk-test-hardcoded"
MSG = [{"role": "user", "content": "x"}]
MLFLOW_USER = os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


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

    # Operation run: names, tags, metrics the original system's users see; the name tells runs
    # of the same operation apart (model, short id).
    assert re.fullmatch(r"diagram_analysis · gpt-5-nano · [0-9a-f]{6}", op_run.info.run_name)
    assert op_run.info.status == "FINISHED"
    assert op_run.data.params == {"model": "gpt-5-nano"}  # the model its call used
    assert op_run.data.tags["model"] == "gpt-5-nano"
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
    assert call_run.info.run_name == "chat.completions · gpt-5-nano"
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
    # The response says 0 audio tokens on this text chat: not a metric. Cached tokens 0 is an
    # answer (no cache hit) and stays.
    assert call.usage.audio_input_tokens == 0 and call.usage.audio_output_tokens == 0
    for run in (op_run, call_run):
        assert not {"audio_input_tokens", "audio_output_tokens", "image_input_tokens"} & set(run.data.metrics)
        assert run.data.metrics["cached_tokens"] == 0
        # Where the run came from, as MLflow's own runs say it.
        assert run.data.tags["mlflow.source.name"] == sys.argv[0]
        assert run.data.tags["mlflow.user"] == MLFLOW_USER
        assert run.data.tags["mlflow.source.type"] == "LOCAL"


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
    from tests.helpers.clients import usage_aware_stream
    from tracked_openai import reports
    from tracked_openai import scope as _context
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


def test_nested_feature_counts_once_in_mlflow_reports_and_cli(
    store: Store, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``track("fraud_check")`` inside ``track("checkout")``: each call belongs to its innermost
    feature. MLflow's runs, the Python report and the CLI report give the same per-feature runs,
    calls and cost, and the all-features totals count each call once."""
    from tests.helpers.reports import chat_by_model, checkout_with_fraud_check
    from tracked_openai import cli, reports

    fake.add("POST", "/chat/completions", chat_by_model)
    client = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    checkout_with_fraud_check(client)
    client.close()
    store.flush()
    first, fraud_call, last = store.memory.calls
    assert [c.feature for c in (first, fraud_call, last)] == ["checkout", "fraud_check", "checkout"]
    assert first.cost and fraud_call.cost and last.cost
    checkout_cost = float(first.cost.total_usd + last.cost.total_usd)
    fraud_cost = float(fraud_call.cost.total_usd)
    ops = {op.operation: op for op in store.memory.operations}

    # MLflow: each feature's experiment has one top-level run, its calls nested under it.
    (place_order,) = [r for r in store.runs("checkout") if r.data.tags["kind"] == "operation"]
    (score,) = [r for r in store.runs("fraud_check") if r.data.tags["kind"] == "operation"]
    assert "mlflow.parentRunId" not in score.data.tags
    assert score.data.tags["parent_feature"] == "checkout"
    assert score.data.tags["parent_record_id"] == ops["place_order"].record_id
    for feature, op_run in (("checkout", place_order), ("fraud_check", score)):
        calls = [r for r in store.runs(feature) if r.data.tags["kind"] == "call"]
        assert calls and all(r.data.tags["mlflow.parentRunId"] == op_run.info.run_id for r in calls)
    # The outer run's own roll-up has all three calls; its feature's share is two of them.
    pm = place_order.data.metrics
    assert pm["call_count"] == 3 and pm["cost_usd"] == pytest.approx(checkout_cost + fraud_cost)
    assert pm["feature_call_count"] == 2 and pm["feature_cost_usd"] == pytest.approx(checkout_cost)
    assert place_order.data.params["model"] == "gpt-4o,gpt-4o-mini"
    sm = score.data.metrics
    assert sm["call_count"] == 1 and sm["cost_usd"] == pytest.approx(fraud_cost)
    assert "feature_call_count" not in sm and "feature_cost_usd" not in sm
    assert score.data.params["model"] == "gpt-4o"

    # Reports: the same figures per feature; totals count each call once.
    checkout = reports.feature_metrics("checkout", tracking_uri=store.uri)
    fraud = reports.feature_metrics("fraud_check", tracking_uri=store.uri)
    assert (checkout["total_runs"], checkout["total_calls"]) == (1, pm["feature_call_count"])
    assert checkout["total_cost"] == pytest.approx(pm["feature_cost_usd"])
    assert (fraud["total_runs"], fraud["total_calls"]) == (1, sm["call_count"])
    assert fraud["total_cost"] == pytest.approx(sm["cost_usd"])
    every = reports.feature_metrics(tracking_uri=store.uri)
    assert (every["total_runs"], every["total_calls"]) == (2, 3)
    assert every["total_cost"] == pytest.approx(pm["cost_usd"])
    by_feature = {r["key"]: r for r in every["by_feature"]}
    assert (by_feature["checkout"]["total_runs"], by_feature["checkout"]["total_calls"]) == (1, 2)
    assert by_feature["checkout"]["total_cost"] == pytest.approx(checkout_cost)
    assert (by_feature["fraud_check"]["total_runs"], by_feature["fraud_check"]["total_calls"]) == (1, 1)
    assert by_feature["fraud_check"]["total_cost"] == pytest.approx(fraud_cost)
    by_model = {r["key"]: r for r in every["by_model"]}
    assert (by_model["gpt-4o"]["total_calls"], by_model["gpt-4o-mini"]["total_calls"]) == (1, 2)
    assert by_model["gpt-4o"]["total_cost"] == pytest.approx(fraud_cost)
    # The nested run is listed among its feature's runs.
    (row,) = reports.recent_runs("fraud_check", tracking_uri=store.uri)
    assert row["run_id"] == score.info.run_id

    # The CLI report reads the same.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    for feature, want in (("checkout", checkout), ("fraud_check", fraud)):
        capsys.readouterr()
        assert cli.main(["report", "--feature", feature, "--format", "json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert (got["total_runs"], got["total_calls"]) == (want["total_runs"], want["total_calls"])
        assert got["total_cost"] == pytest.approx(want["total_cost"])


def test_operation_runs_carry_their_models_and_names_tell_them_apart(store: Store, fake: FakeOpenAI) -> None:
    """Runs group by model: an operation's param and tag ``model`` name the model its calls
    used (several: sorted, comma-joined); a model the caller logged wins. Three runs of one
    operation have three names."""
    from tests.helpers.reports import chat_by_model

    fake.add("POST", "/chat/completions", chat_by_model)
    client = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    for model in ("gpt-4o", "gpt-4o", "gpt-4o-mini"):
        with track("pid_verification", "diagram_analysis"):
            client.chat.completions.create(model=model, messages=MSG)
    with track("pid_verification", "mixed"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        client.chat.completions.create(model="gpt-4o", messages=MSG)
    with track("pid_verification", "logged") as op:
        assert op is not None
        op.log_params(model="my-router")
        client.chat.completions.create(model="gpt-4o", messages=MSG)
    with track("pid_verification", "no_calls"):
        pass
    client.close()
    store.flush()
    runs = store.runs("pid_verification")
    ops = [r for r in runs if r.data.tags["kind"] == "operation"]
    by_op: dict[str, list[Run]] = {}
    for run in ops:
        by_op.setdefault(run.data.tags["operation"], []).append(run)

    diagram = by_op["diagram_analysis"]
    assert sorted(r.data.params["model"] for r in diagram) == ["gpt-4o", "gpt-4o", "gpt-4o-mini"]
    assert all(r.data.tags["model"] == r.data.params["model"] for r in diagram)
    names = [r.info.run_name for r in diagram]
    assert len(set(names)) == 3
    for run in diagram:
        assert run.info.run_name.startswith(f"diagram_analysis · {run.data.params['model']} · ")
    # MLflow's own search finds them by model.
    exp_id = diagram[0].info.experiment_id
    found = store.client.search_runs([exp_id], filter_string="params.model = 'gpt-4o'")
    assert {r.data.tags["kind"] for r in found} == {"operation", "call"}
    assert sum(r.data.tags["kind"] == "operation" for r in found) == 2

    (mixed,) = by_op["mixed"]
    assert mixed.data.params["model"] == mixed.data.tags["model"] == "gpt-4o,gpt-4o-mini"
    assert mixed.info.run_name.startswith("mixed · gpt-4o,gpt-4o-mini · ")
    (logged,) = by_op["logged"]
    assert logged.data.params["model"] == logged.data.tags["model"] == "my-router"
    (empty,) = by_op["no_calls"]
    assert "model" not in empty.data.params and "model" not in empty.data.tags
    assert re.fullmatch(r"no_calls · [0-9a-f]{6}", empty.info.run_name)
    # Call runs: endpoint and model.
    call_names = {r.info.run_name for r in runs if r.data.tags["kind"] == "call"}
    assert call_names == {"chat.completions · gpt-4o", "chat.completions · gpt-4o-mini"}


def test_booleans_are_true_false_in_params_and_tags(store: Store, fake: FakeOpenAI) -> None:
    from tests.helpers.clients import usage_aware_stream

    fake.add("POST", "/chat/completions", usage_aware_stream("chat_stream_gpt4_include_usage"))
    client = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    with track("pfd_conversion", "spec", cached=False) as op:
        assert op is not None
        op.log_params(strict=True)
        list(client.chat.completions.create(model="gpt-4", messages=MSG, stream=True))
    client.close()
    store.flush()
    runs = {r.data.tags["kind"]: r for r in store.runs("pfd_conversion")}
    op_run, call_run = runs["operation"], runs["call"]
    assert op_run.data.params["strict"] == "true" and op_run.data.tags["cached"] == "false"
    assert call_run.data.tags["cached"] == "false"
    assert call_run.data.tags["stream"] == "true" and call_run.data.params["stream"] == "true"
    values = [*op_run.data.params.values(), *op_run.data.tags.values(), *call_run.data.params.values(),
              *call_run.data.tags.values()]
    assert "True" not in values and "False" not in values


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_params_are_what_the_caller_passed(store: Store, fake: FakeOpenAI, is_async: bool) -> None:
    """The SDK sends ``encoding_format=base64`` when the caller gave none: not a param. A format
    the caller chose, base64 included, is."""
    import asyncio

    from tests.helpers.clients import make_clients

    fake.add("POST", "/embeddings", lambda request: FakeResponse(json_body={
        "object": "list", "model": "text-embedding-3-small",
        "data": [{"object": "embedding", "index": 0, "embedding": "AAAAPw=="}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }))
    client, _, _ = make_clients(fake, is_async=is_async)

    async def embed() -> None:
        for fmt in (None, "base64", "float"):
            kwargs: dict[str, Any] = {"encoding_format": fmt} if fmt else {}
            with track("crs_analysis", f"embed_{fmt}"):
                result = client.embeddings.create(model="text-embedding-3-small", input="hi", **kwargs)
                if is_async:
                    await result
        if is_async:
            await client.close()
        else:
            client.close()

    asyncio.run(embed())
    # The SDK really sent base64 each time the caller gave no format.
    assert [b["encoding_format"] for b in fake.bodies] == ["base64", "base64", "float"]
    store.flush()
    calls = [r for r in store.runs("crs_analysis") if r.data.tags["kind"] == "call"]
    params = {r.data.tags["operation"]: r.data.params for r in calls}
    assert params["embed_None"] == {"model": "text-embedding-3-small"}
    assert params["embed_base64"] == {"model": "text-embedding-3-small", "encoding_format": "base64"}
    assert params["embed_float"] == {"model": "text-embedding-3-small", "encoding_format": "float"}
    by_op = {c.operation: c for c in store.memory.calls}
    assert "encoding_format" not in by_op["embed_None"].params


def test_usage_kinds_that_apply_are_metrics(store: Store, fake: FakeOpenAI) -> None:
    """An audio chat's audio tokens are metrics; the image tokens it reports as 0 are not."""
    fake.add("POST", "/chat/completions", FakeResponse.from_fixture("chat_gpt4o_audio_tokens"))
    client = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    client.chat.completions.create(
        model="gpt-4o-audio-preview", messages=MSG, modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
    )
    client.close()
    store.flush()
    (call,) = store.memory.calls
    assert call.usage.image_input_tokens == 0
    (run,) = store.runs(_runtime.settings.default_feature)
    metrics = run.data.metrics
    assert metrics["audio_input_tokens"] == 20 and metrics["audio_output_tokens"] == 280
    assert "image_input_tokens" not in metrics
    assert metrics["reasoning_tokens"] == 0 and metrics["cached_tokens"] == 0


def test_a_cost_logged_by_hand_counts_once(store: Store, fake: FakeOpenAI) -> None:
    """An operation's own ``cost_usd`` is counted when no call is rolled up into it (a manual
    result, nested or not); an operation with calls is counted through its calls only."""
    from tests.helpers.reports import chat_by_model
    from tracked_openai import reports
    from tracked_openai.tracker import mlflow_tracker

    fake.add("POST", "/chat/completions", chat_by_model)
    client = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    mlflow_tracker.log_experiment_result(
        feature="pfd_conversion", operation="external_ocr", metrics={"cost_usd": 0.25}
    )


    @track_custom_operation("pfd_conversion", "vendor_check")
    def vendor_check() -> dict[str, float]:  # a paid service of its own, nested in "spec"
        return {"cost_usd": 0.5}

    with track("pfd_conversion", "spec"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        vendor_check()
    client.close()
    store.flush()
    (call,) = store.memory.calls
    assert call.cost is not None
    m = reports.feature_metrics("pfd_conversion", tracking_uri=store.uri)
    assert m["total_calls"] == 1
    assert m["total_cost"] == pytest.approx(0.25 + 0.5 + float(call.cost.total_usd))
    ops = {r["key"]: r for r in m["by_operation"]}
    assert ops["external_ocr"]["total_cost"] == pytest.approx(0.25)
    assert ops["spec"]["total_cost"] == pytest.approx(float(call.cost.total_usd))
    assert (ops["vendor_check"]["total_runs"], ops["vendor_check"]["total_cost"]) == (0, pytest.approx(0.5))


def test_hosted_tool_counts_and_fees_are_run_metrics(store: Store, fake: FakeOpenAI) -> None:
    # The recorded web search body (gpt-4o, one web_search_preview call): the count per kind and
    # the priced fee are metrics of the call's run; cost_usd includes the fee.
    case = load_fixture("responses_gpt4o_web_search")
    fake.add("POST", "/responses", FakeResponse.from_fixture("responses_gpt4o_web_search"))
    client = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    client.responses.create(**case["request"])
    client.close()
    store.flush()
    (run,) = store.runs(_runtime.settings.default_feature)
    metrics = run.data.metrics
    assert metrics["tool_calls_web_search_preview"] == 1
    assert metrics["tool_cost_usd"] == pytest.approx(0.025)
    assert metrics["cost_usd"] == pytest.approx(0.0313575)
    assert run.data.tags["cost_status"] == "priced"

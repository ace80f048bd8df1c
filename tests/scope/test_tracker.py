"""The AIFlow-compatible ``mlflow_tracker`` object."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

import tracked_openai
from tracked_openai.export import runtime as _runtime
from tracked_openai.records import OperationRecord
from tracked_openai.sinks.mlflow import MlflowSink
from tracked_openai.testing import TrackedRecords
from tracked_openai.tracker import MlflowTracker, mlflow_tracker


def test_log_experiment_result_goes_through_the_exporter(records: TrackedRecords) -> None:
    def spec_step() -> None:
        mlflow_tracker.log_experiment_result(
            feature="pfd_conversion",
            operation="spec_generation",
            params={"model": "gpt-4o", "temperature": 0.7},
            metrics={"tokens_used": 1500, "confidence": 0.95, "note": "not a number"},
            tags={"version": "2.0"},
        )

    spec_step()
    (op,) = records.operations
    assert isinstance(op, OperationRecord)
    assert op.feature == "pfd_conversion" and op.operation == "spec_generation"
    assert op.function is not None and op.function.endswith("spec_step")
    assert op.params == {"model": "gpt-4o", "temperature": 0.7}
    assert op.metrics == {"tokens_used": 1500.0, "confidence_score": 0.95}
    assert op.tags["version"] == "2.0"
    assert op.status == "success"


def test_disabled_tracker_records_nothing(records: TrackedRecords) -> None:
    tracked_openai.configure(enabled=False)
    try:
        assert mlflow_tracker.enabled is False
        mlflow_tracker.log_experiment_result("pid_verification", "x", metrics={"a": 1})
    finally:
        tracked_openai.configure(enabled=True)
    assert mlflow_tracker.enabled is True
    assert records.operations == []


def test_experiments_lists_seed_defaults_and_registered_features() -> None:
    from tracked_openai.mlflow.names import register_feature

    register_feature("tracker_test_feature", "Tracker Test Feature")
    experiments = mlflow_tracker.experiments
    assert experiments["pid_verification"] == "P&ID Design Verification"
    assert experiments["pfd_conversion"] == "PFD to P&ID Conversion"
    assert experiments["crs_analysis"] == "CRS Document Analysis"
    assert experiments["visual_generation"] == "Visual Diagram Generation"
    assert experiments["tracker_test_feature"] == "Tracker Test Feature"


@pytest.fixture
def mlflow_runtime(tmp_path: Path) -> Iterator[str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    saved = dataclasses.replace(_runtime.settings)
    _runtime.configure(sinks=[MlflowSink(uri)], spool_dir=str(tmp_path / "spool"), flush_interval=0.05)
    try:
        yield uri
    finally:
        _runtime.shutdown(30)
        for field in dataclasses.fields(saved):
            setattr(_runtime.settings, field.name, getattr(saved, field.name))
        _runtime.configure(sinks=[])


def test_tracking_uri_and_run_in_mlflow(mlflow_runtime: str) -> None:
    """The tracker reports the sink's URI and its results become runs like any record."""
    assert mlflow_tracker.tracking_uri == mlflow_runtime
    t0 = time.time()
    mlflow_tracker.log_experiment_result(
        "crs_analysis", "manual_review", params={"reviewer": "ana"}, metrics={"issues": 4}
    )
    assert tracked_openai.flush(60)
    client = MlflowClient(mlflow_runtime)
    exp = client.get_experiment_by_name("CRS Document Analysis")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["issues"] == 4
    assert run.data.params["reviewer"] == "ana"
    assert run.data.tags["operation"] == "manual_review" and run.data.tags["kind"] == "operation"
    assert run.info.start_time >= int(t0 * 1000) - 1


def test_tracker_is_the_seed_object() -> None:
    from tracked_openai.tracker import mlflow_tracker as again

    assert isinstance(mlflow_tracker, MlflowTracker) and again is mlflow_tracker

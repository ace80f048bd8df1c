"""`tracked-openai demo` end to end: fake server, real tracked client, real MlflowSink writing to
MLflow's default store in the working folder, then the report. The store it leaves behind is
read back to check what the library really wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tracked_openai import reports

pytest.importorskip("tracked_openai.sinks.mlflow", reason="the demo writes through the MLflow sink")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    folder = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["TRACKED_OPENAI_SPOOL_DIR"] = str(folder / "spool")
    result = subprocess.run(
        [sys.executable, "-m", "tracked_openai.cli", "demo"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )
    return result, folder


def test_demo_runs_and_prints_the_report(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, folder = demo
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "failed as planned: HTTP 404 model_not_found" in out
    assert "tracked-openai report: all features" in out
    for feature in ("pid_verification", "pfd_conversion", "crs_analysis", "visual_generation"):
        assert feature in out
    assert f"mlflow ui --backend-store-uri sqlite:///{folder}/mlflow.db" in out
    # MLflow's own default store in the working folder, so `mlflow ui` there shows the runs.
    assert (folder / "mlflow.db").exists()
    assert "Traceback" not in result.stderr


def test_demo_store_holds_what_the_report_says(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, folder = demo
    uri = f"sqlite:///{folder}/mlflow.db"
    m = reports.feature_metrics(tracking_uri=uri)
    # 3 vision + 1 failed + 3 text + 1 stream + 2 RAG + 1 custom + 1 image operations = 12 runs;
    # calls: 3 + 1 + 3 + 1 + 2x2 + 1 + 1 = 14, one failed.
    assert (m["total_runs"], m["total_calls"], m["failed_calls"]) == (12, 14, 1)
    assert m["success_rate"] == pytest.approx(100 * 11 / 12)
    assert m["unpriced_calls"] == 0
    assert m["total_cost"] > 0
    by_model = {r["key"]: r for r in m["by_model"]}
    # The cost of the operations equals the cost of their calls: nothing counted twice.
    assert m["total_cost"] == pytest.approx(sum(r["total_cost"] for r in by_model.values()))
    assert by_model["gpt-4o-unavailable"]["success_rate"] == 0
    rows = {r["key"]: r for r in reports.experiments(tracking_uri=uri)}
    assert rows["pid_verification"]["name"] == "P&ID Design Verification"
    assert all(rows[k]["experiment_id"] for k in ("pfd_conversion", "crs_analysis", "visual_generation"))
    # Calls are child runs of their operation.
    client = MlflowClient(tracking_uri=uri)
    rag = reports.recent_runs("crs_analysis", limit=50, include_calls=True, tracking_uri=uri)
    ops = {r["run_id"] for r in rag if r["tags.kind"] == "operation"}
    calls = [client.get_run(r["run_id"]) for r in rag if r["tags.kind"] == "call"]
    assert len(calls) == 5
    assert all(c.data.tags.get("mlflow.parentRunId") in ops for c in calls)
    stream = reports.recent_runs("pfd_conversion", limit=50, include_calls=True, tracking_uri=uri)
    streamed = [r for r in stream if r.get("tags.stream") == "true"]
    assert len(streamed) == 1
    assert streamed[0]["tags.usage_source"] == "response"

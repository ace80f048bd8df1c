"""`tracked-openai demo` end to end: fake server, real tracked client, real MlflowSink writing to
MLflow's default store in the working folder, then the report. The store it leaves behind is
read back to check what the library really wrote."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tracked_openai import reports
from tracked_openai.mlflow.traces import mlflow_trace_id

pytest.importorskip("tracked_openai.sinks.mlflow", reason="the demo writes through the MLflow sink")

pytestmark = pytest.mark.slow  # the whole demo, end to end, in a subprocess


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
    assert "Traces tab: each operation with its calls as spans" in out  # the default runs+traces
    assert f"store: sqlite:///{folder}/mlflow.db" in out
    # MLflow's own default store in the working folder, so `mlflow ui` there shows the runs.
    assert (folder / "mlflow.db").exists()
    assert "Traceback" not in result.stderr


def _next_commands(out: str) -> list[list[str]]:
    tail = out.split("\nNext:\n", 1)[1]
    # Commands are indented two spaces; what they do is on the next line, indented four.
    return [shlex.split(line) for line in tail.splitlines() if line[:2] == "  " and line[2] != " "]


def test_next_lines_are_runnable_as_printed(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """The "Next:" commands name programs this environment has (the venv's, by path when the venv
    is not on PATH), and the report command runs as printed, in the same folder."""
    result, folder = demo
    commands = _next_commands(result.stdout)
    assert [c[1:3] if c[1] == "ui" else c[1:] for c in commands] == [
        ["ui", "--backend-store-uri"], ["report", "--by", "operation"],
        ["runs", "--feature", "pid_verification"], ["serve"],
    ]
    scripts = Path(sysconfig.get_path("scripts"))
    for command in commands:
        program = command[0]
        found = shutil.which(program, path=os.environ.get("PATH")) if "/" not in program else program
        assert found is not None and Path(folder, found).is_file(), program
        assert Path(folder, found).resolve().parent == scripts.resolve()
    report = commands[1]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    ran = subprocess.run(report, cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert f"store: sqlite:///{folder}/mlflow.db" in ran.stdout
    assert "by operation" in ran.stdout


def test_next_lines_from_the_project_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run from the folder holding the venv (as `make demo` does), the commands are `.venv/bin/...`."""
    from tracked_openai.cli import demo as _demo

    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "mlflow").write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_demo.sysconfig, "get_path", lambda name: str(venv_bin))
    assert _demo.command("mlflow", "mlflow") == ".venv/bin/mlflow"
    # No such script: the running interpreter runs the module.
    assert _demo.command("tracked-openai", "tracked_openai.cli") == f"{sys.executable} -m tracked_openai.cli"


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
    # The default mode (runs+traces): operations are runs, their calls spans of the operation's
    # trace, which is linked to the run.
    client = MlflowClient(tracking_uri=uri)
    rag = reports.recent_runs("crs_analysis", limit=50, include_calls=True, tracking_uri=uri)
    ops = [r for r in rag if r["tags.kind"] == "operation"]
    # `runs --calls` lists the calls too, though they are spans, not runs, in this mode.
    assert len([r for r in rag if r["tags.kind"] == "call"]) == 5
    call_spans = []
    for row in ops:
        [trace] = client.search_traces(locations=[row["experiment_id"]], run_id=row["run_id"])
        assert trace.info.trace_id == mlflow_trace_id(row["tags.record_id"])
        call_spans += [s for s in trace.data.spans if s.parent_id is not None]
    assert len(call_spans) == 5
    exp = rows["pfd_conversion"]["experiment_id"]
    streamed = [
        s for t in client.search_traces(locations=[exp]) for s in t.data.spans
        if s.attributes.get("tracked_openai.stream") is True
    ]
    assert len(streamed) == 1
    assert streamed[0].attributes["tracked_openai.usage_source"] == "response"

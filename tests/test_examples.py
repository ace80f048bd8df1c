"""Every example runs as a subprocess (offline, against the fake server) with its own MLflow
store, exits 0 and leaves in the store what it says it recorded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tracked_openai import reports

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))

pytest.importorskip("tracked_openai.sinks.mlflow", reason="examples write through the MLflow sink")


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    uri: str


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """All examples, three at a time (each spends most of its time importing and in MLflow)."""
    root = tmp_path_factory.mktemp("examples")
    # Each example gets a copy of one empty, already migrated store: creating MLflow's schema
    # costs seconds per process and is not what these tests are about.
    template = root / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()

    def run(name: str) -> Ran:
        folder = root / name
        folder.mkdir()
        shutil.copy(template, folder / "mlflow.db")
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI_"))}
        env.update(MLFLOW_TRACKING_URI=uri, TRACKED_OPENAI_SPOOL_DIR=str(folder / "spool"))
        r = subprocess.run(
            [sys.executable, str(EXAMPLES / f"{name}.py")],
            cwd=folder, env=env, capture_output=True, text=True, timeout=120,
        )
        return Ran(r.returncode, r.stdout, r.stderr, uri)

    with ThreadPoolExecutor(3) as pool:
        return dict(zip(NAMES, pool.map(run, NAMES), strict=True))


def test_every_example_is_tested() -> None:
    assert set(NAMES) == set(CHECKS)


@pytest.mark.parametrize("name", NAMES)
def test_example(ran: dict[str, Ran], name: str) -> None:
    result = ran[name]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    CHECKS[name](result)


def _runs(r: Ran, feature: str, calls: bool = False) -> list[dict]:
    return reports.recent_runs(feature, limit=100, include_calls=calls, tracking_uri=r.uri)


def check_quickstart(r: Ran) -> None:
    m = reports.feature_metrics("default", tracking_uri=r.uri)
    assert (m["total_runs"], m["total_calls"]) == (1, 1)
    assert m["total_cost"] > 0


def check_track_block(r: Ran) -> None:
    m = reports.feature_metrics("pid_verification", tracking_uri=r.uri)
    assert (m["total_runs"], m["total_calls"], m["avg_confidence"]) == (1, 2, 0.93)
    (op,) = _runs(r, "pid_verification")
    assert op["tags.customer"] == "acme" and op["metrics.issues_found"] == 4


def check_seed_decorators(r: Ran) -> None:
    m = reports.feature_metrics(tracking_uri=r.uri)
    runs = {row["key"]: row["total_runs"] for row in m["by_feature"]}
    assert runs == {"pid_verification": 1, "pfd_conversion": 1, "visual_generation": 1, "crs_analysis": 2}
    assert m["total_calls"] == 5
    rag = next(row for row in _runs(r, "crs_analysis") if row["tags.operation"] == "requirement_search")
    assert rag["metrics.retrieved_docs_count"] == 2
    assert rag["metrics.similarity_max"] == 0.92
    (vision,) = _runs(r, "pid_verification")
    assert vision["metrics.confidence_score"] == 0.91


def check_manual_logging(r: Ran) -> None:
    (run,) = _runs(r, "pfd_conversion")
    assert run["tags.operation"] == "spec_generation"
    assert run["metrics.tokens_used"] == 1500
    assert run["metrics.confidence_score"] == 0.95
    assert run["tags.version"] == "2.0"
    assert f"tracking_uri: {r.uri}" in r.stdout


def check_compare_models(r: Ran) -> None:
    m = reports.feature_metrics("pfd_conversion", tracking_uri=r.uri)
    models = {row["key"]: row for row in m["by_model"]}
    big, small = models["gpt-4o-2024-08-06"], models["gpt-4o-mini"]
    assert big["total_calls"] == small["total_calls"] == 3
    assert big["avg_cost_per_call"] > small["avg_cost_per_call"]
    assert big["avg_execution_time"] > small["avg_execution_time"]  # the fake's bigger model is slower
    assert "gpt-4o-mini" in r.stdout and "cost/call" in r.stdout


def check_streaming(r: Ran) -> None:
    calls = [row for row in _runs(r, "pfd_conversion", calls=True) if row["tags.kind"] == "call"]
    assert len(calls) == 1
    assert calls[0]["tags.stream"] == "true"
    assert calls[0]["metrics.completion_tokens"] > 0


def check_async_calls(r: Ran) -> None:
    m = reports.feature_metrics("pid_verification", tracking_uri=r.uri)
    assert (m["total_runs"], m["total_calls"], m["success_rate"]) == (3, 3, 100.0)
    assert {row["tags.sheet"] for row in _runs(r, "pid_verification")} == {"P&ID-101", "P&ID-102", "P&ID-103"}


def check_azure_openai(r: Ran) -> None:
    m = reports.feature_metrics("crs_analysis", tracking_uri=r.uri)
    assert (m["total_runs"], m["total_calls"], m["unpriced_calls"]) == (1, 1, 0)
    assert [row["key"] for row in m["by_model"]] == ["gpt-4o-2024-08-06"]
    assert "served model: gpt-4o-2024-08-06" in r.stdout


def check_pricing_override(r: Ran) -> None:
    (call,) = [row for row in _runs(r, "pid_verification", calls=True) if row["tags.kind"] == "call"]
    expected = (call["metrics.prompt_tokens"] * 2.0 + call["metrics.completion_tokens"] * 8.0) / 1e6
    assert call["metrics.cost_usd"] == pytest.approx(expected)
    assert call["tags.pricing_version"].startswith("acme-2026.11") or "acme" in call["tags.pricing_version"]


def check_fastapi_app(r: Ran) -> None:
    assert "crs_analysis runs: 1" in r.stdout
    assert reports.feature_metrics("crs_analysis", tracking_uri=r.uri)["total_calls"] == 1


def check_django_app(r: Ran) -> None:
    assert "status 200 runs 3" in r.stdout
    (first, *_rest) = _runs(r, "pid_verification")
    assert first["tags.operation"] == "report_saved"
    assert first["metrics.issue_count"] == 5


CHECKS = {
    name.removeprefix("check_"): fn for name, fn in globals().items() if name.startswith("check_")
}

"""Every example runs as a subprocess (offline, against the fake server) with its own MLflow
store, exits 0 and leaves in the store what it says it recorded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tracked_openai import reports

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))

pytest.importorskip("tracked_openai.sinks.mlflow", reason="examples write through the MLflow sink")

# Every example is a whole program run end to end (~2 min on 2 cores): not in `make test-fast`.
pytestmark = pytest.mark.slow


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
        if name == "compare_models":
            _foreign_runs(uri)
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


def _foreign_runs(uri: str) -> None:
    """Other pfd_conversion work already in the store: a gpt-4o-mini call and an earlier
    model_comparison run of gpt-4.1 (yesterday). The example must leave both out."""
    from tests.helpers.reports import _Writer

    w = _Writer(uri)
    now = datetime.now(UTC)
    w.run(feature="pfd_conversion", kind="call", when=now - timedelta(minutes=1), model="gpt-4o-mini",
          operation="spec_generation", metrics={"execution_time": 9.0, "cost_usd": 5.0})
    op = w.run(feature="pfd_conversion", kind="operation", when=now - timedelta(days=1),
               operation="model_comparison", metrics={"execution_time": 1.0, "cost_usd": 1.0})
    w.run(feature="pfd_conversion", kind="call", when=now - timedelta(days=1), parent=op, model="gpt-4.1",
          operation="model_comparison", metrics={"execution_time": 1.0, "cost_usd": 1.0})


def check_compare_models(r: Ran) -> None:
    # What it prints is its own six calls: three per model, nothing from the foreign runs.
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert {row[0]: row[1] for row in rows} == {"gpt-4o-2024-08-06": "3", "gpt-4o-mini": "3"}
    assert "cost/call" in r.stdout
    m = reports.feature_metrics("pfd_conversion", tracking_uri=r.uri)
    models = {row["key"]: row for row in m["by_model"]}
    assert set(models) == {"gpt-4o-2024-08-06", "gpt-4o-mini", "gpt-4.1"}  # the store has them all
    assert (models["gpt-4o-2024-08-06"]["total_calls"], models["gpt-4o-mini"]["total_calls"]) == (3, 4)
    latency = {row[0]: float(row[2].rstrip("s")) for row in rows}
    cost = {row[0]: float(row[3].lstrip("$")) for row in rows}
    assert latency["gpt-4o-2024-08-06"] > latency["gpt-4o-mini"]  # the fake's bigger model is slower
    assert cost["gpt-4o-2024-08-06"] > cost["gpt-4o-mini"] > 0


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


CHECKS = {
    name.removeprefix("check_"): fn for name, fn in globals().items() if name.startswith("check_")
}


def _readme_commands() -> list[str]:
    text = (EXAMPLES / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_commands_work_as_written(tmp_path: Path) -> None:
    """The README's commands, verbatim, from a folder laid out like the repository after
    `make setup` (`.venv` and `examples/` there): the example writes examples.db, the report
    reads it. `mlflow ui` is a server: only its program is checked."""
    venv = Path(sys.prefix)
    if venv == Path(sys.base_prefix) or not (venv / "bin" / "tracked-openai").exists():
        pytest.skip("the README's commands use the project's venv; this interpreter is not one")
    (tmp_path / ".venv").symlink_to(venv)
    (tmp_path / "examples").symlink_to(EXAMPLES)
    commands = _readme_commands()
    assert [c.split()[0] for c in commands] == [
        "MLFLOW_TRACKING_URI=sqlite:///examples.db", ".venv/bin/tracked-openai", ".venv/bin/mlflow",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI_", "MLFLOW_"))}
    env.update(TRACKED_OPENAI_SPOOL_DIR=str(tmp_path / "spool"), PATH="/usr/bin:/bin")
    outputs = []
    for command in commands[:2]:
        r = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=180)
        assert r.returncode == 0, (command, r.stderr[-2000:])
        outputs.append(r.stdout)
    assert "gpt-4o-mini" in outputs[0]
    assert "store: sqlite:///examples.db" in outputs[1] and "by model" in outputs[1]
    assert (tmp_path / "examples.db").is_file()
    assert (tmp_path / commands[2].split()[0]).is_file()


def test_examples_store_is_ignored_by_git() -> None:
    root = EXAMPLES.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for name in ("examples.db", "mlflow.db"):
        r = subprocess.run(["git", "check-ignore", "-q", name], cwd=root, capture_output=True)
        assert r.returncode == 0, f"{name} is not in .gitignore"


# The Django example project (examples/django_app): a real project run by its own manage.py.
DJANGO_APP = EXAMPLES / "django_app"


def _manage(tmp: Path, *argv: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DJANGO_", "TRACKED_OPENAI_"))}
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
        AIFLOW_DB=str(tmp / "db.sqlite3"),
        TRACKED_OPENAI_SPOOL_DIR=str(tmp / "spool"),
    )
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=DJANGO_APP, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.fixture(scope="module")
def django_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("django_app")
    MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}").search_experiments()
    return tmp, _manage(tmp, "demo")


def test_django_app_demo_runs_offline(django_demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    tmp, r = django_demo
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert "verify_diagram: 200" in r.stdout
    assert "REST API: anonymous 401, staff 200" in r.stdout
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # The vision call and the call of the Celery task the view queued, in the request's operation.
    assert "pid_verification: runs 1 calls 2" in r.stdout
    (op,) = reports.recent_runs("pid_verification", limit=10, tracking_uri=uri)
    assert op["tags.operation"] == "verify_diagram"
    assert op["tags.http_status"] == "200"
    assert op["tags.request_id"] == "demo-1"
    # The streamed spec: its call was made while the response was read.
    assert "pfd_conversion: runs 1 calls 1" in r.stdout
    (spec,) = reports.recent_runs("pfd_conversion", limit=10, tracking_uri=uri)
    assert (spec["tags.operation"], spec["tags.request_id"]) == ("generate_spec", "demo-2")


def test_django_app_manage_report_is_the_cli_report(
    django_demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    tmp, demo = django_demo
    assert demo.returncode == 0
    r = _manage(tmp, "tracked_openai", "report", "--by", "model")
    assert r.returncode == 0, r.stderr[-3000:]
    cli = subprocess.run(
        [sys.executable, "-m", "tracked_openai.cli", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
         "report", "--by", "model"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert r.stdout == cli.stdout
    assert "gpt-4o" in r.stdout


def test_django_app_check_shows_a_bad_setting(tmp_path: Path) -> None:
    ok = _manage(tmp_path, "check")
    assert ok.returncode == 0, ok.stderr[-3000:]
    # An empty MLFLOW_TRACKING_URI reaches TRACKED_OPENAI["tracking_uri"] as "".
    r = _manage(tmp_path, "check", MLFLOW_TRACKING_URI="")
    assert r.returncode == 1
    assert "tracked_openai.E002" in r.stderr
    assert "TRACKED_OPENAI['tracking_uri'] must be a URI string" in r.stderr

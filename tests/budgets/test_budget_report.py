"""Budgets as MLflow sees them and as ``report`` shows them: blocked calls tagged on their runs
and traces (each mlflow_mode, read back with MlflowClient), and the report's budget columns
(limit, spend in the window, use, action, blocked calls per feature), including without budgets
and with the ledger out of reach."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import tracked_openai
from tracked_openai import Budget, BudgetExceeded, cli, track
from tracked_openai import budgets as budgets_module
from tracked_openai._fake_server import FakeOpenAIServer
from tracked_openai.budgets.report import annotate_report
from tracked_openai.mlflow.names import FEATURE_TAG
from tracked_openai.mlflow.traces import mlflow_trace_id
from tracked_openai.records import BUDGET_BLOCKED_TAG
from tracked_openai.sinks.modes import mode_sinks
from tracked_openai.testing import TrackedRecords

API_KEY = "sk-test-hardcoded"
PROMPT = "word " * 1000  # about $0.0026 a call on gpt-4o; worst case $0.00282 with max_tokens=30
VISION_KEY = "feature=vision|day"
BUDGETS_YAML = """budgets:
  - {feature: vision, usd: 0.01, per: day, action: block}
  - {feature: vision, operation: analyse, usd: 1, per: month, action: alert}
  - {feature: crs_analysis, usd: 500, per: month, action: alert}
  - {usd: 100, per: day, action: alert}
  - {model: gpt-4o-mini, usd: 0, per: day, action: block}
"""


@pytest.fixture(autouse=True)
def _restored() -> Iterator[None]:
    from tracked_openai._config import settings

    saved = dict(settings.__dict__)
    yield
    budgets_module._shutdown_for_tests()
    settings.__dict__.clear()
    settings.__dict__.update(saved)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_scale=0) as srv:
        yield srv


def _chat(client: tracked_openai.OpenAI, model: str = "gpt-4o") -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=30
    )


def _spend(
    mode: str, uri: str, server: FakeOpenAIServer, records: TrackedRecords, tmp_path: Path, ledger: str
) -> Path:
    """Through the library into ``uri``: 10 calls in ``track("vision", "analyse")`` (3 go, 7 are
    blocked by the $0.01 day budget), then a gpt-4o-mini call outside any operation, blocked by
    the $0 model budget. Returns the budgets file."""
    tracked_openai.configure(experiment_prefix=f"b{time.time_ns()}-", spool_dir=str(tmp_path / "spool"))
    tracked_openai.configure(sinks=[*mode_sinks(mode, uri, timeout=120), records.sink])
    budgets_file = tmp_path / "budgets.yaml"
    budgets_file.write_text(BUDGETS_YAML)
    tracked_openai.configure(budgets=str(budgets_file), ledger_url=ledger)
    client = tracked_openai.OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0)
    outcomes = []
    try:
        with track("vision", "analyse"):
            for _ in range(10):
                try:
                    _chat(client)
                    outcomes.append("sent")
                except BudgetExceeded:
                    outcomes.append("blocked")
        with pytest.raises(BudgetExceeded, match="model=gpt-4o-mini"):
            _chat(client, "gpt-4o-mini")
    finally:
        client.close()
    assert outcomes == ["sent"] * 3 + ["blocked"] * 7
    assert server.requests == 3
    assert tracked_openai.flush(timeout=120)
    assert tracked_openai.stats().get("spooled", 0) == 0
    budgets_module._current.sync()  # report the settled spend to the ledger now
    return budgets_file


def _experiment(uri: str, feature: str) -> str:
    for exp in MlflowClient(uri).search_experiments():
        if exp.tags.get(FEATURE_TAG) == feature and exp.name.startswith("b"):
            return str(exp.experiment_id)
    raise AssertionError(f"no experiment for {feature}")


def _check_mlflow(mode: str, uri: str, records: TrackedRecords) -> None:
    """Every blocked call's run (runs mode) or span (traces), the run and trace of the
    operation it was made in, and a blocked call outside any operation's run and trace carry
    the budget it would have exceeded; calls that went carry no such tag."""
    blocked = [c for c in records.calls if c.status == "blocked"]
    sent = [c for c in records.calls if c.status == "success"]
    assert len(blocked) == 8 and len(sent) == 3
    [op] = [o for o in records.operations if o.operation == "analyse"]
    [top] = [c for c in blocked if c.parent_id is None]
    client = MlflowClient(uri)
    exps = [_experiment(uri, "vision"), _experiment(uri, top.feature)]
    runs = {r.data.tags["record_id"]: r for r in client.search_runs(exps, max_results=1000)}
    if mode == "traces":
        assert runs == {}
    else:
        assert runs[op.record_id].data.tags[BUDGET_BLOCKED_TAG] == VISION_KEY
        assert runs[top.record_id].data.tags[BUDGET_BLOCKED_TAG] == "model=gpt-4o-mini|day"
        assert runs[top.record_id].data.tags["status"] == "blocked"
        inside = [c for c in records.calls if c.parent_id == op.record_id]
        if mode == "runs":  # each call its own nested run
            for c in inside:
                tags = runs[c.record_id].data.tags
                assert tags["status"] == c.status
                assert tags.get(BUDGET_BLOCKED_TAG) == (VISION_KEY if c.status == "blocked" else None)
        else:  # runs+traces: calls inside operations are spans only
            assert not any(c.record_id in runs for c in inside)
    if mode == "runs":
        return
    trace = client.get_trace(mlflow_trace_id(op.record_id))
    assert trace.info.tags[BUDGET_BLOCKED_TAG] == VISION_KEY
    spans = {s.attributes.get("tracked_openai.record_id"): s for s in trace.data.spans}
    for c in records.calls:
        if c.parent_id != op.record_id:
            continue
        span = spans[c.record_id]
        assert span.attributes["tracked_openai.status"] == c.status
        tag = span.attributes.get(f"tracked_openai.tag.{BUDGET_BLOCKED_TAG}")
        assert tag == (VISION_KEY if c.status == "blocked" else None)
        assert span.status.status_code.value == ("ERROR" if c.status == "blocked" else "OK")
    top_trace = client.get_trace(mlflow_trace_id(top.record_id))
    assert top_trace.info.tags[BUDGET_BLOCKED_TAG] == "model=gpt-4o-mini|day"
    assert top_trace.info.tags["status"] == "blocked"
    assert top_trace.info.state.value == "ERROR"


def _entries(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["budget"]: e for e in row["budgets"]}


def _check_report(uri: str, records: TrackedRecords, budgets_file: Path, ledger: str, capsys: Any) -> None:
    spent = float(sum((c.cost.total_usd for c in records.calls if c.cost is not None), Decimal(0)))
    args = ["report", "--tracking-uri", uri, "--budgets", str(budgets_file), "--ledger-url", ledger]
    assert cli.main([*args, "--format", "json"]) == 0
    out = capsys.readouterr()
    assert "warning" not in out.err
    m = json.loads(out.out)
    assert m["blocked_calls"] == 8
    rows = {r["key"]: r for r in m["by_feature"]}
    assert rows["vision"]["blocked_calls"] == 7 and rows["default"]["blocked_calls"] == 1
    vision = _entries(rows["vision"])
    assert set(vision) == {VISION_KEY}  # the operation's budget is on the operation's row
    day = vision[VISION_KEY]
    assert day["action"] == "block" and day["limit_usd"] == 0.01 and day["per"] == "day"
    assert day["spent_usd"] == pytest.approx(spent, abs=1e-9) and 0.0 < spent <= 0.01
    assert day["used"] >= spent / 0.01 - 1e-9  # spent and reserved (this process's lease)
    assert rows["default"]["budgets"] == []
    ops = {r["key"]: r for r in m["by_operation"]}
    [alert] = ops["analyse"]["budgets"]
    assert alert["budget"] == "feature=vision,operation=analyse|month|alert"
    assert alert["spent_usd"] == pytest.approx(spent, abs=1e-9) and alert["action"] == "alert"
    status = m["budgets"]
    assert status["configured"] and status["available"] and status["detail"] is None
    assert {e["budget"] for e in status["entries"]} == {
        VISION_KEY,
        "feature=vision,operation=analyse|month|alert",
        "feature=crs_analysis|month|alert",
        "app|day|alert",
        "model=gpt-4o-mini|day",
    }

    assert cli.main(args) == 0
    out = capsys.readouterr()
    assert "warning" not in out.err
    text = out.out
    assert "calls blocked by budgets" in text
    vision_line = next(line for line in text.splitlines() if line.startswith("│ vision "))
    cells = [c.strip() for c in vision_line.split("│")[1:-1]]
    assert cells[-4:] == ["day block", f"${spent:.6f}".rstrip("0") + " / $0.01", f"{day['used']:.0%}", "7"]
    # Budgets on no row shown: the app's, the model's and crs_analysis's (no runs in range).
    other = text[text.index("budgets (current window") :]
    for key in ("app|day|alert", "model=gpt-4o-mini|day", "feature=crs_analysis|month|alert"):
        assert key in other


@pytest.mark.parametrize("mode", ["runs", "traces", "runs+traces"])
def test_blocked_calls_in_mlflow_and_in_report(
    mode: str,
    server: FakeOpenAIServer,
    records: TrackedRecords,
    tmp_path: Path,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRACKED_OPENAI_BUDGETS", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    budgets_file = _spend(mode, uri, server, records, tmp_path, sqlite_url)
    _check_mlflow(mode, uri, records)
    budgets_module._shutdown_for_tests()  # the CLI reads the file and the ledger, like another process
    _check_report(uri, records, budgets_file, sqlite_url, capsys)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.helpers.reports import seed_contract_store

    return seed_contract_store(f"sqlite:///{tmp_path_factory.mktemp('report') / 'mlflow.db'}")


def test_no_budgets_no_columns(
    seeded: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TRACKED_OPENAI_BUDGETS", raising=False)
    assert cli.main(["report", "--tracking-uri", seeded.uri]) == 0
    out = capsys.readouterr()
    assert "warning" not in out.err and "by feature" in out.out
    assert "spent / limit" not in out.out and "blocked" not in out.out and "budgets (" not in out.out
    assert cli.main(["report", "--tracking-uri", seeded.uri, "--format", "json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert "budgets" not in m and m["blocked_calls"] == 0
    assert all("budgets" not in r and r["blocked_calls"] == 0 for r in m["by_feature"])


@pytest.mark.parametrize("ledger", ["postgresql://postgres@127.0.0.1:9/nothing_listens", "missing-sqlite"])
def test_ledger_unreachable_question_marks_and_one_warning(
    ledger: str,
    seeded: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("TRACKED_OPENAI_BUDGETS", raising=False)
    missing = tmp_path / "nowhere" / "ledger.sqlite"
    url = f"sqlite:///{missing}" if ledger == "missing-sqlite" else ledger
    path = tmp_path / "budgets.yaml"
    path.write_text("budgets:\n  - {feature: pid_verification, usd: 5}\n  - {usd: 100, action: alert}\n")
    args = ["report", "--tracking-uri", seeded.uri, "--budgets", str(path), "--ledger-url", url]
    started = time.monotonic()
    assert cli.main(args) == 0
    assert time.monotonic() - started < 30
    out = capsys.readouterr()
    assert len(out.err.splitlines()) == 1, out.err
    [warning] = out.err.splitlines()
    assert warning.startswith("tracked-openai report: warning: budget ledger ")
    assert "Traceback" not in out.err + out.out
    line = next(x for x in out.out.splitlines() if x.startswith("│ pid_verification "))
    assert [c.strip() for c in line.split("│")[1:-1]][-4:] == ["day block", "? / $5.00", "?", "0"]
    assert "app|day|alert" in out.out
    assert not missing.parent.exists()  # reading never creates a ledger
    assert cli.main([*args, "--format", "json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["budgets"]["available"] is False and m["budgets"]["detail"]
    [entry] = next(r for r in m["by_feature"] if r["key"] == "pid_verification")["budgets"]
    assert entry["spent_usd"] is None and entry["used"] is None and entry["limit_usd"] == 5.0


def test_malformed_budgets_file_is_a_warning_not_a_failed_report(
    seeded: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("budgets:\n  - usd: x\n")
    assert cli.main(["report", "--tracking-uri", seeded.uri, "--budgets", str(bad)]) == 0
    out = capsys.readouterr()
    assert "bad.yaml:2: budgets[0].usd" in out.err and "by feature" in out.out
    assert "spent / limit" not in out.out


def test_metrics_endpoint_has_the_budget_columns(
    seeded: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from tracked_openai.contrib.fastapi import PREFIX, create_app

    monkeypatch.delenv("TRACKED_OPENAI_BUDGETS", raising=False)
    with TestClient(create_app(tracking_uri=seeded.uri)) as api:
        plain = api.get(f"{PREFIX}/metrics/").json()["metrics"]
        assert "budgets" not in plain
        tracked_openai.configure(budgets=[Budget(feature="pid_verification", usd="5")], ledger_url=sqlite_url)
        budgets_module._current.ledger.open()  # the file exists once the budgets' thread connects
        m = api.get(f"{PREFIX}/metrics/").json()["metrics"]
        row = next(r for r in m["by_feature"] if r["key"] == "pid_verification")
        [entry] = row["budgets"]
        assert entry["budget"] == "feature=pid_verification|day" and entry["spent_usd"] == 0.0
        assert m["budgets"]["source"] == "configure" and m["budgets"]["available"] is True
        tracked_openai.configure(
            budgets=[Budget(feature="pid_verification", usd="5")],
            ledger_url="postgresql://postgres@127.0.0.1:9/x",
        )
        for _ in range(2):
            r = api.get(f"{PREFIX}/metrics/")
            assert r.status_code == 200 and r.json()["metrics"]["budgets"]["available"] is False
    assert sum("metrics endpoint: budget ledger" in rec.getMessage() for rec in caplog.records) == 1


def test_annotate_keeps_tag_values_apart(sqlite_url: str) -> None:
    from tracked_openai.budgets._manager import BudgetManager

    budgets = [Budget(feature="f", tag="tenant", usd="1")]
    m = BudgetManager(budgets, ledger_url=sqlite_url, ledger_timeout=10, sync_interval=60)
    try:
        for tenant, nano in (("acme", 3_000_000), ("zeta", 1_000_000)):
            m.reserve(m.matching("f", None, None, {"tenant": tenant}), Decimal("0.01")).settle(nano)
        m.sync(return_leases=True)
    finally:
        m.close()
    metrics: dict[str, Any] = {"feature": None, "operation": None, "by_feature": [{"key": "f"}]}
    assert annotate_report(metrics, budgets, sqlite_url) is None
    entries = _entries(metrics["by_feature"][0])
    assert {k: (e["tag"], e["spent_usd"]) for k, e in entries.items()} == {
        "feature=f,tag=tenant|day|tenant=acme": ("tenant=acme", 0.003),
        "feature=f,tag=tenant|day|tenant=zeta": ("tenant=zeta", 0.001),
    }

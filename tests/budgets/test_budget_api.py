"""``GET /api/v1/mlflow/tracking/budgets/`` (FastAPI; the Django view calls the same body):
each budget's window from the ledger, for the budgets this process enforces or the budgets file."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the REST API needs the [api] extra")
from fastapi.testclient import TestClient

from tracked_openai.budgets import Budget
from tracked_openai.budgets._manager import BudgetManager
from tracked_openai.contrib.fastapi import PREFIX, create_app


def test_no_budgets_anywhere_answers_an_empty_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRACKED_OPENAI_BUDGETS", raising=False)
    with TestClient(create_app()) as api:
        r = api.get(f"{PREFIX}/budgets/")
    assert r.status_code == 200
    assert r.json() == {"configured": False, "budgets": []}


def test_the_budgets_file_and_its_ledger(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    budgets = [Budget(feature="f", usd="0.01")]
    m = BudgetManager(budgets, ledger_url=sqlite_url, ledger_timeout=10, sync_interval=60)
    try:
        m.reserve(m.matching("f", None, None, {}), Decimal("0.002")).settle(1_000_000)  # $0.001
        m.sync()
    finally:
        m.close()
    path = tmp_path / "budgets.yaml"
    path.write_text("budgets:\n  - feature: f\n    usd: 0.01\n")
    monkeypatch.setenv("TRACKED_OPENAI_BUDGETS", str(path))
    monkeypatch.setenv("TRACKED_OPENAI_LEDGER_URL", sqlite_url)
    with TestClient(create_app()) as api:
        body = api.get(f"{PREFIX}/budgets/").json()
    assert body["configured"] is True and body["source"] == "TRACKED_OPENAI_BUDGETS"
    (row,) = body["budgets"]
    assert row["budget"] == "feature=f|day"
    assert row["spent_usd"] == pytest.approx(0.001)
    assert row["limit_usd"] == pytest.approx(0.01)
    assert row["action"] == "block"


def test_a_broken_budgets_file_answers_503_with_its_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("budgets:\n  - usd: x\n")
    monkeypatch.setenv("TRACKED_OPENAI_BUDGETS", str(bad))
    with TestClient(create_app()) as api:
        r = api.get(f"{PREFIX}/budgets/")
    assert r.status_code == 503
    assert r.json()["error"] == "budgets_file_invalid"
    assert "bad.yaml:2: budgets[0].usd" in r.json()["detail"]


def test_the_token_guards_it_like_the_other_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRACKED_OPENAI_BUDGETS", raising=False)
    with TestClient(create_app(token="t0k")) as api:
        assert api.get(f"{PREFIX}/budgets/").status_code == 401
        assert api.get(f"{PREFIX}/budgets/", headers={"Authorization": "Bearer t0k"}).status_code == 200

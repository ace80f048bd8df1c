"""``tracked-openai budgets`` and budget_status: the ledger's view of each budget's window."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tracked_openai import cli
from tracked_openai.budgets import Budget
from tracked_openai.budgets._manager import BudgetManager
from tracked_openai.budgets._status import budget_status


def test_status_and_cli(tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    budgets = [Budget(feature="f", usd="0.01"), Budget(tag="tenant", usd="1", per="month")]
    m = BudgetManager(budgets, ledger_url=sqlite_url, ledger_timeout=10, sync_interval=60)
    try:
        for tenant in ("acme", "zeta"):
            matched = m.matching("f", None, None, {"tenant": tenant})
            m.reserve(matched, Decimal("0.002")).settle(1_000_000)  # $0.001 each
        m.sync()
        rows = {r["budget"]: r for r in budget_status(budgets, sqlite_url)}
        assert set(rows) == {"feature=f|day", "tag=tenant|month|tenant=acme", "tag=tenant|month|tenant=zeta"}
        day = rows["feature=f|day"]
        assert day["spent_usd"] == Decimal("0.002")
        assert day["reserved_usd"] > 0  # this process still holds a lease
        assert day["limit_usd"] == Decimal("0.01") and 0.2 <= day["used"] <= 1
        start = datetime.fromisoformat(day["window_start"]).timestamp()
        # Half-way through the day, the spend so far projects to twice as much at its end.
        half = budget_status(budgets[:1], sqlite_url, now=start + 12 * 3600)[0]
        assert half["projected_usd"] == Decimal("0.004")
    finally:
        m.close()
    path = tmp_path / "budgets.yaml"
    path.write_text("budgets:\n  - feature: f\n    usd: 0.01\n  - tag: tenant\n    usd: 1\n    per: month\n")
    assert cli.main(["budgets", "--budgets", str(path), "--ledger-url", sqlite_url]) == 0
    out = capsys.readouterr().out
    assert "feature=f|day" in out and "tenant=zeta" in out and "$0.0020" in out and "█" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("budgets:\n  - usd: x\n")
    assert cli.main(["budgets", "--budgets", str(bad), "--ledger-url", sqlite_url]) == 1
    assert "bad.yaml:2: budgets[0].usd" in capsys.readouterr().err

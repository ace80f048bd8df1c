"""A ledger transaction that outlives the caller's wait (a loaded machine, a slow database) is
counted once: if it commits late, what it reported is not sent again; if it fails late, it is."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tracked_openai.budgets import Budget
from tracked_openai.budgets._ledger import Ledger
from tracked_openai.budgets._manager import BudgetManager

COST = 1_000_000  # $0.001 a call, in nano-dollars


def _slow_apply(ledger: Ledger, seconds: float, fail: bool) -> Any:
    original = ledger._apply

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        if fail:
            raise RuntimeError("the database went away mid-transaction")
        return original(*args, **kwargs)

    return original, slow


def _spent(url: str) -> int:
    ledger = Ledger(url, timeout=10)
    try:
        return sum(int(r["spent"]) for r in ledger.rows())
    finally:
        ledger.close()


@pytest.mark.parametrize("fail", [False, True], ids=["commits-late", "fails-late"])
def test_a_report_that_outlives_its_wait_is_counted_once(
    fail: bool, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = BudgetManager([Budget(usd="1")], ledger_url=sqlite_url, ledger_timeout=0.3, sync_interval=60)
    try:
        matched = m.matching("f", None, None, None)
        for _ in range(5):
            m.reserve(matched, COST).settle(COST)
        original, slow = _slow_apply(m.ledger, 1.0, fail)
        monkeypatch.setattr(m.ledger, "_apply", slow)
        m.sync()  # gives up after 0.3 s; the transaction goes on
        assert m.stats()["budget_ledger_unavailable"] >= 1
        time.sleep(1.5)  # it has committed (or failed) by now
        monkeypatch.setattr(m.ledger, "_apply", original)
        m.sync()  # a failed report is sent again; a committed one is not
        assert _spent(sqlite_url) == 5 * COST, m.stats()
    finally:
        m.close()
    assert _spent(sqlite_url) == 5 * COST


def test_a_refill_that_outlives_its_wait_reports_once(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report riding on a lease refill (exchange) that commits after the caller gave up."""
    m = BudgetManager(
        [Budget(usd="1")], ledger_url=sqlite_url, ledger_timeout=0.3, sync_interval=60, slice_fraction=0.002
    )
    try:
        matched = m.matching("f", None, None, None)
        m.reserve(matched, COST).settle(COST)  # a $0.002 lease: one call's report waits in it
        m.reserve(matched, COST).settle(COST)
        original, slow = _slow_apply(m.ledger, 1.0, False)
        monkeypatch.setattr(m.ledger, "_apply", slow)
        m.reserve(matched, COST).settle(COST)  # the refill times out: fails open, counted
        assert m.stats()["budget_fail_open"] == 1
        time.sleep(1.5)
        monkeypatch.setattr(m.ledger, "_apply", original)
        m.sync(return_leases=True)
    finally:
        m.close()
    assert _spent(sqlite_url) == 3 * COST

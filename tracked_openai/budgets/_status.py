"""Where each budget stands in its current window, read from the ledger (``tracked-openai
budgets`` and :func:`budget_status`)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from ._model import NANO, Budget

__all__ = ["budget_status", "read_ledger_rows", "status_by_budget"]


def budget_status(
    budgets: Iterable[Budget], ledger_url: str | None = None, now: float | None = None, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """One row per budget key (a tag budget: one per tag value seen) in its current window:
    ``budget``, ``window``, ``window_start``/``window_end`` (ISO), ``spent_usd``, ``reserved_usd``
    (leased to processes, not yet spent), ``limit_usd``, ``used`` (fraction of the limit spent
    and reserved), ``projected_usd`` (the spend at the window's end if it goes on at the rate so
    far) and ``action``. Raises ``LedgerUnavailableError`` when the ledger cannot be read."""
    return [row for _, rows in status_by_budget(budgets, ledger_url, now, timeout) for row in rows]


def read_ledger_rows(ledger_url: str | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every window row of the ledger; raises ``LedgerUnavailableError``."""
    from ._ledger import Ledger, default_ledger_url

    ledger = Ledger(ledger_url or default_ledger_url(), timeout)
    try:
        return ledger.rows()
    finally:
        ledger.close()


def status_by_budget(
    budgets: Iterable[Budget],
    ledger_url: str | None = None,
    now: float | None = None,
    timeout: float = 10.0,
    rows: list[dict[str, Any]] | None = None,
) -> list[tuple[Budget, list[dict[str, Any]]]]:
    """:func:`budget_status`'s rows grouped by the budget they belong to (``rows``: the ledger's,
    already read)."""
    now = time.time() if now is None else now
    if rows is None:
        rows = read_ledger_rows(ledger_url, timeout)
    out: list[tuple[Budget, list[dict[str, Any]]]] = []
    for budget in budgets:
        out.append((budget, _budget_rows(budget, rows, now)))
    return out


def _budget_rows(budget: Budget, rows: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    window = budget.window(now)
    totals: dict[str, list[int]] = {}
    for row in rows:
        key = row["key"]
        if key != budget.key and not (
            budget.tag_value is None and budget.tag_key and key.startswith(budget.key + "|")
        ):
            continue
        if window.rolling:
            inside = str(row["bucket"]).startswith("r") and row["idx"] > window.index - 13
        else:
            inside = row["bucket"] == window.key
        if inside:
            spent_held = totals.setdefault(key, [0, 0])
            spent_held[0] += int(row["spent"])
            spent_held[1] += int(row["held"])
    if not totals:
        totals[budget.key] = [0, 0]
    start, end = window.start.timestamp(), window.end.timestamp()
    elapsed = max(now - start, 1.0)
    for key, (spent, held) in sorted(totals.items()):
        limit = Decimal(budget.usd)
        spent_usd = Decimal(spent) / NANO
        projected = spent_usd if window.rolling else spent_usd * Decimal(end - start) / Decimal(elapsed)
        out.append(
            {
                "budget": key,
                "action": budget.action,
                "window": window.describe(),
                "window_start": window.start.isoformat(),
                "window_end": window.end.isoformat(),
                "spent_usd": spent_usd,
                "reserved_usd": Decimal(held) / NANO,
                "limit_usd": limit,
                "used": float((Decimal(spent + held) / NANO) / limit) if limit else 0.0,
                "projected_usd": projected.quantize(Decimal("0.000001")),
            }
        )
    return out

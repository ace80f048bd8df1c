"""``GET /api/v1/mlflow/tracking/budgets/``'s body, framework-free (FastAPI and Django views
call it): where each budget stands in its current window, as ``tracked-openai budgets`` prints.

The budgets are the ones this process enforces (``configure(budgets=...)``, Django's
``TRACKED_OPENAI["budgets"]``), else the ``TRACKED_OPENAI_BUDGETS`` file; the ledger is theirs.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["budgets", "with_budget_columns"]

Payload = tuple[int, dict[str, Any]]

# Warnings already logged: a dashboard polling the metrics endpoint logs the ledger's outage once.
_warned: set[str] = set()


def budgets() -> Payload:
    from . import _current
    from ._file import BudgetsFileError, load_budgets_file
    from ._ledger import LedgerUnavailableError
    from ._status import budget_status

    manager = _current
    ledger_url = None
    if manager is not None:
        declared = list(manager.budgets)
        ledger_url = manager.ledger.url
        source = "configure"
    else:
        path = os.environ.get("TRACKED_OPENAI_BUDGETS")
        if not path:
            return 200, {"configured": False, "budgets": []}
        try:
            declared = load_budgets_file(path).budgets
        except BudgetsFileError as exc:
            return 503, {"error": "budgets_file_invalid", "detail": str(exc)}
        source = "TRACKED_OPENAI_BUDGETS"
    try:
        rows = budget_status(declared, ledger_url)
    except LedgerUnavailableError as exc:
        return 503, {"error": "ledger_unavailable", "detail": str(exc)}
    return 200, {"configured": True, "source": source, "budgets": [_json_row(r) for r in rows]}


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    # Decimal amounts as numbers (JSON has no decimals; cents of a cent are enough here).
    return {k: float(v) if k.endswith("_usd") or k == "used" else v for k, v in row.items()}


def with_budget_columns(payload: Payload) -> Payload:
    """``GET metrics/``'s body with the budget columns (``tracked_openai.budgets.report``) of the
    budgets this process enforces, else ``TRACKED_OPENAI_BUDGETS``'s: unchanged without budgets;
    figures ``null`` and ``budgets.available`` false when the ledger cannot be read (logged once)."""
    status, body = payload
    found = body.get("metrics") if status == 200 else None
    if not isinstance(found, dict):
        return payload
    try:
        from .report import annotate_report

        warning = annotate_report(found)
    except Exception as exc:  # the metrics are what was asked for
        found.pop("budgets", None)
        warning = f"budget columns left out ({type(exc).__name__}: {exc})"
    if warning and warning not in _warned:
        _warned.add(warning)
        from .._errors import logger

        logger.warning("tracked_openai: metrics endpoint: %s", warning)
    return status, body

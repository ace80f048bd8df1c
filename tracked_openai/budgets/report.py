"""Budget columns for ``tracked-openai report`` and the metrics endpoint: which budgets apply to
each feature and operation row, and where each stands in its current window (from the ledger).

The report's own figures come from MLflow and cover the report's range; a budget's figures come
from the ledger and cover the budget's current window, whatever the range. A report never
fails because of budgets: none configured adds nothing, a malformed budgets file or a ledger that
cannot be read adds one warning (and ``None`` figures, shown as ``?``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ._model import Budget

__all__ = ["annotate_report", "resolve_budgets"]

# A report waits at most this long for the ledger (its rows are one query).
REPORT_LEDGER_TIMEOUT = 5.0


def resolve_budgets(
    budgets: Iterable[Budget] | str | Path | None = None, ledger_url: str | None = None
) -> tuple[list[Budget], str | None, str, str | None]:
    """``(budgets, ledger url, source, problem)``: the budgets given (objects or a file), else
    the ones this process enforces (``configure(budgets=...)``), else ``TRACKED_OPENAI_BUDGETS``'s
    file. ``problem`` says why none could be read (a malformed file); no budgets is not one."""
    from . import _current
    from ._file import BudgetsFileError, load_budgets_file

    if budgets is None:
        manager = _current
        if manager is not None:
            return list(manager.budgets), ledger_url or manager.ledger.url, "configure", None
        budgets = os.environ.get("TRACKED_OPENAI_BUDGETS") or None
        if budgets is None:
            return [], ledger_url, "none", None
    if isinstance(budgets, (str, Path)):
        try:
            return list(load_budgets_file(budgets).budgets), ledger_url, str(budgets), None
        except BudgetsFileError as exc:
            return [], ledger_url, str(budgets), f"budgets file invalid, no budget columns:\n{exc}"
        except OSError as exc:
            return [], ledger_url, str(budgets), f"budgets file unreadable, no budget columns: {exc}"
    return list(budgets), ledger_url, "given", None


def _ledger_rows(ledger_url: str | None, timeout: float) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The ledger's rows, or ``None`` and why they could not be read. A SQLite ledger that does
    not exist is not created (reading never creates a store): most often the report runs in
    another working directory than the app, whose spend it then cannot see."""
    from ._ledger import default_ledger_url
    from ._manager import _safe_url as safe_url
    from ._status import read_ledger_rows

    url = ledger_url or default_ledger_url()
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        database = parsed.database if parsed.get_backend_name() == "sqlite" else None
        if database not in (None, "", ":memory:") and not os.path.exists(str(database)):
            return None, f"budget ledger {database} does not exist (set --ledger-url)"
        return read_ledger_rows(url, timeout), None
    except Exception as exc:  # LedgerUnavailableError, a bad URL, a driver missing: never a traceback
        # One line: drivers' messages run over several (hints, links).
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
        return None, f"budget ledger {safe_url(url)} unavailable ({first})"


def _entry(budget: Budget, row: dict[str, Any] | None, key: str | None = None) -> dict[str, Any]:
    def usd(value: Any) -> float | None:
        return None if value is None else float(value)

    name = row["budget"] if row else (key or budget.key)
    return {
        "budget": name,
        "scope": budget.scope(),
        # A budget per tag value: the value this entry is for (``tenant=acme``).
        "tag": name[len(budget.key) + 1 :] if name.startswith(budget.key + "|") else None,
        "action": budget.action,
        "per": budget.per,
        "window": row["window"] if row else None,
        "limit_usd": float(budget.usd),
        "spent_usd": usd(row["spent_usd"]) if row else None,
        "reserved_usd": usd(row["reserved_usd"]) if row else None,
        "used": row["used"] if row else None,
    }


def _relevant(budget: Budget, feature: str | None, operation: str | None) -> bool:
    if feature is not None and budget.feature not in (None, feature):
        return False
    return operation is None or budget.operation in (None, operation)


def annotate_report(
    metrics: dict[str, Any],
    budgets: Iterable[Budget] | str | Path | None = None,
    ledger_url: str | None = None,
    *,
    timeout: float = REPORT_LEDGER_TIMEOUT,
    now: float | None = None,
) -> str | None:
    """Add the budgets that apply to ``metrics`` (a ``feature_metrics`` result), in place, and
    return a warning to show once (``None``: nothing to say).

    Adds ``metrics["budgets"]``: ``configured``, ``available`` (the ledger was read),
    ``detail`` (why not), ``source`` and ``entries`` (every budget in the report's scope: ``budget``
    (ledger key; one entry per tag value seen), ``scope``, ``tag`` (``tenant=acme``), ``action``,
    ``per``, ``window``, ``limit_usd``, ``spent_usd``, ``reserved_usd``, ``used`` (spent and reserved
    over the limit, as ``tracked-openai budgets`` shows); the figures are ``None`` when the ledger
    could not be read).
    Each ``by_feature`` row gets the entries of its feature's budgets, each ``by_operation`` row
    those of its operation's (``budgets``). With no budgets configured, ``metrics`` is unchanged.
    """
    declared, url, source, problem = resolve_budgets(budgets, ledger_url)
    feature, operation = metrics.get("feature"), metrics.get("operation")
    declared = [b for b in declared if _relevant(b, feature, operation)]
    if not declared:
        return problem
    from ._status import status_by_budget

    rows, detail = _ledger_rows(url, timeout)
    by_budget: list[tuple[Budget, list[dict[str, Any]]]]
    if rows is None:
        by_budget = [(b, []) for b in declared]
    else:
        by_budget = status_by_budget(declared, now=time.time() if now is None else now, rows=rows)
    entries: list[dict[str, Any]] = []
    per_budget: list[tuple[Budget, list[dict[str, Any]]]] = []
    for budget, status_rows in by_budget:
        mine = [_entry(budget, r) for r in status_rows] or [_entry(budget, None)]
        entries += mine
        per_budget.append((budget, mine))
    metrics["budgets"] = {
        "configured": True,
        "available": rows is not None,
        "detail": detail,
        "source": source,
        "entries": entries,
    }
    _attach(metrics.get("by_feature") or (), per_budget, lambda b, key: b.feature == key and not b.operation)
    _attach(
        metrics.get("by_operation") or (),
        per_budget,
        lambda b, key: b.operation == key and (feature is None or b.feature in (None, feature)),
    )
    return detail


def _attach(
    rows: Sequence[dict[str, Any]], per_budget: Sequence[tuple[Budget, list[dict[str, Any]]]], applies: Any
) -> None:
    for row in rows:
        row["budgets"] = [e for budget, mine in per_budget if applies(budget, row["key"]) for e in mine]

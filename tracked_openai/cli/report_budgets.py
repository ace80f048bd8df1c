"""The budget columns of ``tracked-openai report``'s tables (``tracked_openai.budgets.report``
works out which budgets apply to which row; this only draws them).

Rows get four columns when budgets are configured: ``budget`` (window and action, one line per
budget that applies), ``spent / limit`` in the budget's current window, ``used`` and ``blocked``
(calls a budget stopped in the report's range). Budgets on no row shown (the whole app, a model,
a tag) get a table of their own. ``?`` stands for a figure the ledger could not give.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["BUDGET_COLUMNS", "budget_table", "budgets_text", "has_budgets"]

UNKNOWN = "?"
# Lines per cell: a tag budget has a row per tag value seen; the busiest are shown.
_MAX_LINES = 3


def has_budgets(metrics: dict[str, Any]) -> bool:
    return bool((metrics.get("budgets") or {}).get("configured"))


def _money(value: float | None) -> str:
    if value is None:
        return UNKNOWN
    return f"${value:,.4f}" if value >= 0.01 or value == 0 else f"${value:.6f}".rstrip("0")


def _limit(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:g}"


def _ordered(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entries, key=lambda e: -(e["used"] or 0.0))


def _lines(entries: list[dict[str, Any]], fmt: Callable[[dict[str, Any]], str]) -> str:
    shown = _ordered(entries)[:_MAX_LINES]
    lines = [fmt(e) for e in shown]
    if len(entries) > len(shown):
        lines.append(f"+{len(entries) - len(shown)} more")
    return "\n".join(lines)


def _name(entry: dict[str, Any]) -> str:
    text = f"{entry['per']} {entry['action']}"
    return f"{entry['tag']}: {text}" if entry.get("tag") else text


def _spent(entry: dict[str, Any]) -> str:
    return f"{_money(entry['spent_usd'])} / {_limit(entry['limit_usd'])}"


def _used(entry: dict[str, Any]) -> str:
    used = entry["used"]
    return UNKNOWN if used is None else f"{used:.0%}"


def _cell(fmt: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], str]:
    def cell(row: dict[str, Any]) -> str:
        entries = row.get("budgets") or []
        return _lines(entries, fmt) if entries else "\u2013"

    return cell


BUDGET_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("budget", _cell(_name)),
    ("spent / limit", _cell(_spent)),
    ("used", _cell(_used)),
    ("blocked", lambda row: f"{row.get('blocked_calls', 0):,}"),
]


def budget_table(metrics: dict[str, Any], shown_dims: list[str]) -> Any:
    """A rich table of the budgets in the report's scope that are on no row shown, or ``None``."""
    from rich.table import Table

    on_rows = {
        e["budget"]
        for dim in shown_dims
        for row in metrics.get(f"by_{dim}") or ()
        for e in row.get("budgets") or ()
    }
    rest = [e for e in metrics["budgets"]["entries"] if e["budget"] not in on_rows]
    if not rest:
        return None
    table = Table(title="budgets (current window, from the ledger)", title_justify="left")
    for header in ("budget", "window", "action", "spent / limit", "reserved", "used"):
        table.add_column(
            header, justify="right" if header in ("spent / limit", "reserved", "used") else "left"
        )
    for e in rest:
        table.add_row(
            e["budget"], e["window"] or UNKNOWN, e["action"], _spent(e), _money(e["reserved_usd"]), _used(e)
        )
    return table


def budgets_text(entries: list[dict[str, Any]]) -> str:
    """A row's budgets in one CSV cell: ``key: $spent / $limit (used) action``, ``; ``-separated."""
    return "; ".join(f"{e['budget']}: {_spent(e)} ({_used(e)}) {e['action']}" for e in entries)

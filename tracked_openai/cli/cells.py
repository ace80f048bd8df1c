"""How numbers are shown in the reading commands' tables (``report``, ``report --totals``,
``bill``, ``batches``): one module both report handlers import, so neither imports the other.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["NO_VALUE", "cost", "day", "num", "usd"]

# Shown for a value that does not exist (no runs, no confidence logged, a cost nobody can price).
NO_VALUE = "\u2013"  # an en dash


def num(value: Any, digits: int = 2) -> str:
    if value is None:
        return NO_VALUE
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def usd(value: Any) -> str:
    """Dollars: four decimals from one cent up; below, three significant digits and never an
    exponent (a single embedding call costs ``$0.0000002``, not ``$2e-07`` nor ``$0.000000``)."""
    if value is None:
        return NO_VALUE
    amount = float(value)
    if amount == 0:
        return "$0"
    if abs(amount) >= 0.01:
        return f"${amount:,.4f}"
    digits = 2 - math.floor(math.log10(abs(amount)))
    return "$" + f"{amount:.{digits}f}".rstrip("0").rstrip(".")


def cost(row: dict[str, Any], key: str) -> str:
    """A cost cell: :data:`NO_VALUE` when there is no price to add up (every call unpriced),
    not ``$0``."""
    value = row.get(key)
    if not value and row.get("unpriced_calls"):
        return NO_VALUE
    return usd(value)


def day(iso: str | None) -> str:
    """A window bound: the bare date when it is a midnight, ``…`` when there is none."""
    if not iso:
        return "…"
    return iso[:10] if iso.endswith("T00:00:00+00:00") else iso

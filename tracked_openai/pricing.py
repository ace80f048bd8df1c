"""Pricing (placeholder until the versioned price tables land): every call is unpriced."""

from __future__ import annotations

from typing import Any

from .records import CallRecord

__all__ = ["price_record", "use_pricing"]


def price_record(record: CallRecord) -> None:
    record.cost = None
    record.cost_status = "unpriced"


def use_pricing(source: Any) -> None:
    raise NotImplementedError("pricing overrides are not implemented yet")

"""What a budget is: its scope, limit, window and action; the exception a blocked call raises.

A budget's *key* names its ledger rows: scope and window kind, never the limit or the action, so
raising a limit (or turning an alert into a block) keeps the spend already counted this window.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["NANO", "Budget", "BudgetExceeded", "Window", "to_nano"]

# Money in the ledger and in leases: integer nano-dollars (exact, and 2**63 of them is $9.2e9).
NANO = Decimal(1_000_000_000)
_ROLLING = re.compile(r"^(\d+(?:\.\d+)?)\s*h$")
# A rolling window is counted in this many steps (see Budget.window).
ROLLING_STEPS = 12


def to_nano(usd: Decimal) -> int:
    """``usd`` in nano-dollars, rounded up: a reservation is never smaller than the price."""
    return int((usd * NANO).to_integral_value(rounding="ROUND_CEILING"))


@dataclass(frozen=True, slots=True)
class Window:
    """One window of a budget: ``key`` names its ledger row; spend counts from ``start``."""

    key: str
    start: datetime
    end: datetime
    # Rolling windows: the index of the current step; rows of steps > index - ROLLING_STEPS count.
    index: int = 0
    rolling: bool = False

    def describe(self) -> str:
        if self.rolling:
            return f"rolling, since {self.start.isoformat(timespec='minutes')}"
        return self.key


@dataclass(frozen=True)
class Budget:
    """A spending limit for calls in one scope, checked before each paid call is sent.

    Args:
        usd: The limit in US dollars per window.
        per: ``"day"``, ``"week"`` (ISO, from Monday) or ``"month"`` (calendar, in ``tz``), or a
            rolling window of hours such as ``"24h"``.
        action: ``"block"``: a call whose worst-case cost would take the window's spend past
            ``usd`` raises :class:`BudgetExceeded` before it is sent. ``"alert"``: never blocks.
        feature, operation, model: The scope; calls match when every one given matches (none:
            the whole application). ``model`` matches the requested model name.
        tag: A tag key set with ``track(..., tenant="acme")``: one budget for each value of it
            (``"tenant"``), or for one value (``"tenant=acme"``). Calls without the tag are
            outside the budget.
        alert_at: Fractions of ``usd`` at which to alert, each once per window (default: 1.0
            for alert budgets, 0.8 and 1.0 for block budgets).
        fail: When the ledger cannot be reached in time: ``"open"`` lets calls go (one warning,
            counted in ``stats()``), ``"closed"`` blocks them.
        tz: Time zone of calendar windows (IANA name).
        name: Ledger name of the budget (default: derived from its scope and window).

    .. versionadded:: 0.2
    """

    usd: Decimal | float | int | str
    per: str = "day"
    action: Literal["block", "alert"] = "block"
    feature: str | None = None
    operation: str | None = None
    model: str | None = None
    tag: str | None = None
    alert_at: tuple[float, ...] | None = None
    fail: Literal["open", "closed"] = "open"
    tz: str = "UTC"
    name: str | None = None
    # Derived in __post_init__.
    limit_nano: int = field(init=False, repr=False, compare=False)
    key: str = field(init=False, repr=False, compare=False)
    thresholds: tuple[float, ...] = field(init=False, repr=False, compare=False)
    rolling_seconds: float = field(init=False, repr=False, compare=False)
    tag_key: str | None = field(init=False, repr=False, compare=False)
    tag_value: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = budget_problems(self)
        if problems:
            field_name, problem = problems[0]
            raise ValueError(f"Budget {field_name}: {problem}")
        set_ = object.__setattr__
        set_(self, "usd", _usd(self.usd))
        set_(self, "limit_nano", to_nano(Decimal(self.usd)))
        match = _ROLLING.match(self.per.strip().lower())
        set_(self, "rolling_seconds", float(match.group(1)) * 3600 if match else 0.0)
        key, value = [*self.tag.split("=", 1), ""][:2] if self.tag else (None, None)
        set_(self, "tag_key", key)
        set_(self, "tag_value", value or None)
        default = (1.0,) if self.action == "alert" else (0.8, 1.0)
        set_(self, "thresholds", tuple(sorted(set(self.alert_at if self.alert_at is not None else default))))
        set_(self, "alert_at", self.thresholds)
        set_(self, "key", self.name or self._derived_key())

    def _derived_key(self) -> str:
        parts = [
            f"{k}={v}"
            for k, v in (
                ("feature", self.feature),
                ("operation", self.operation),
                ("model", self.model),
                ("tag", self.tag),
            )
            if v
        ]
        scope = ",".join(parts) or "app"
        per = self.per.strip().lower()
        key = f"{scope}|{per}" if self.rolling_seconds or self.tz == "UTC" else f"{scope}|{per}|{self.tz}"
        # An alert budget and a block budget on the same scope count the same calls in rows of
        # their own (each reports every call's cost).
        return f"{key}|alert" if self.action == "alert" else key

    def scope(self) -> str:
        """The scope in words: ``feature=x, tag=tenant`` or ``app``."""
        return self.key.split("|", 1)[0]

    def matches(
        self, feature: str, operation: str | None, model: str | None, tags: Mapping[str, str] | None
    ) -> str | None:
        """The ledger key of this budget for a call, or ``None`` if the call is outside it."""
        if self.feature is not None and feature != self.feature:
            return None
        if self.operation is not None and operation != self.operation:
            return None
        if self.model is not None and model != self.model:
            return None
        if self.tag_key is None:
            return self.key
        value = tags.get(self.tag_key) if tags else None
        if value is None or (self.tag_value is not None and value != self.tag_value):
            return None
        return self.key if self.tag_value is not None else f"{self.key}|{self.tag_key}={value}"

    def window(self, now: float) -> Window:
        """The window ``now`` (a Unix time) falls in."""
        if self.rolling_seconds:
            # Counted in steps of a twelfth of the window: the spend of the current step and the
            # twelve before it counts, so a window sees between N and N*13/12 hours of spend (more,
            # never less: the limit holds over any N hours).
            step = self.rolling_seconds / ROLLING_STEPS
            index = int(now // step)
            start = datetime.fromtimestamp((index - ROLLING_STEPS) * step, UTC)
            end = datetime.fromtimestamp((index + 1) * step, UTC)
            return Window(f"r{index}", start, end, index, rolling=True)
        tz = ZoneInfo(self.tz)
        local = datetime.fromtimestamp(now, tz)
        per = self.per.strip().lower()
        if per == "day":
            start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            end = _add_days(start, 1, tz)
            key = start.strftime("%Y-%m-%d")
        elif per == "week":
            day = local.replace(hour=0, minute=0, second=0, microsecond=0)
            start = _add_days(day, -day.weekday(), tz)
            end = _add_days(start, 7, tz)
            year, week, _ = start.isocalendar()
            key = f"{year}-W{week:02d}"
        else:
            start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            nxt = start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)
            end = nxt
            key = start.strftime("%Y-%m")
        return Window(key, start, end)


def _add_days(day: datetime, n: int, tz: ZoneInfo) -> datetime:
    # Through the naive date: a day across a DST change is 23 or 25 hours long.
    naive = day.replace(tzinfo=None) + timedelta(days=n)
    return naive.replace(tzinfo=tz)


def _usd(value: Any) -> Decimal:
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value).strip())


def budget_problems(b: Any) -> list[tuple[str, str]]:
    """``(field, problem)`` for each invalid field of a budget (or of its raw fields)."""
    problems: list[tuple[str, str]] = []
    usd = getattr(b, "usd", None)
    try:
        if isinstance(usd, bool) or usd is None:
            raise InvalidOperation
        amount = _usd(usd)
        if not amount.is_finite() or amount < 0:
            problems.append(("usd", f"must be a number of dollars >= 0 (got {usd!r})"))
    except (InvalidOperation, ValueError):
        problems.append(("usd", f"must be a number of dollars >= 0 (got {usd!r})"))
    per = getattr(b, "per", None)
    if not isinstance(per, str) or not (
        per.strip().lower() in ("day", "week", "month")
        or ((m := _ROLLING.match(per.strip().lower())) and 0 < float(m.group(1)) <= 24 * 366)
    ):
        problems.append(("per", f"must be day, week, month or a number of hours like 24h (got {per!r})"))
    if getattr(b, "action", None) not in ("block", "alert"):
        problems.append(("action", f"must be block or alert (got {getattr(b, 'action', None)!r})"))
    if getattr(b, "fail", None) not in ("open", "closed"):
        problems.append(("fail", f"must be open or closed (got {getattr(b, 'fail', None)!r})"))
    alert_at = getattr(b, "alert_at", None)
    if alert_at is not None:
        if isinstance(alert_at, (str, bytes)) or not isinstance(alert_at, Iterable):
            problems.append(
                ("alert_at", f"must be a list of fractions like [0.5, 0.8, 1.0] (got {alert_at!r})")
            )
        else:
            for value in alert_at:
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float, Decimal))
                    or not (math.isfinite(float(value)) and 0 < float(value) <= 10)
                ):
                    problems.append(
                        ("alert_at", f"each threshold is a fraction above 0, up to 10 (got {value!r})")
                    )
                    break
    tz = getattr(b, "tz", None)
    try:
        if not isinstance(tz, str):
            raise ZoneInfoNotFoundError
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(("tz", f"unknown time zone {tz!r}"))
    for name in ("feature", "operation", "model", "tag", "name"):
        value = getattr(b, name, None)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problems.append((name, f"must be a non-empty string (got {value!r})"))
    tag = getattr(b, "tag", None)
    if isinstance(tag, str) and tag.startswith("="):
        problems.append(("tag", f"must be a tag key, or key=value (got {tag!r})"))
    return problems


class BudgetExceeded(Exception):  # noqa: N818 - the name the issue and users know
    """A call was not sent: its worst-case cost would take a ``block`` budget past its limit
    (or the ledger could not be reached and the budget fails closed).

    Attributes:
        budget: The :class:`Budget`.
        key: Its ledger key (a tag budget's includes the tag value).
        window: The window's name (``2026-12-07``, ``2026-W49``, ``2026-12``, or ``rolling, since ...``).
        spent: Dollars spent in the window (settled calls) as far as this process knows.
        reserved: Dollars held for calls in flight and leased to processes.
        requested: This call's worst-case cost in dollars.
        limit: The budget's limit in dollars.
        reason: ``"limit"`` or ``"ledger unavailable"``.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        budget: Budget,
        key: str,
        window: str,
        spent: Decimal,
        reserved: Decimal,
        requested: Decimal,
        reason: str = "limit",
    ) -> None:
        self.budget = budget
        self.key = key
        self.window = window
        self.spent = spent
        self.reserved = reserved
        self.requested = requested
        self.limit = Decimal(budget.usd)
        self.reason = reason
        if reason == "limit":
            text = (
                f"budget {key!r} ({window}): spent ${spent:.6f} + reserved ${reserved:.6f} + this call's "
                f"worst case ${requested:.6f} would exceed the limit ${self.limit}"
            )
        else:
            text = f"budget {key!r} ({window}): {reason}; the budget fails closed, so the call was not sent"
        super().__init__(text)

    def __reduce__(self) -> Any:  # picklable (Celery results, multiprocessing)
        return (
            BudgetExceeded,
            (self.budget, self.key, self.window, self.spent, self.reserved, self.requested, self.reason),
        )

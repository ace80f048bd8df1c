"""What the caller's path holds between calls: each budget key's window in this process
(:class:`State`), the budgets one kind of call falls in with their states resolved once per
window (:class:`Matched`), and one call's reservation (:class:`Reservation`).

Kept apart from the manager (leases, ledger exchanges, the background sync) so the per-call data
and its invariants read in one place: a reservation holds the same amount, its estimate, in every
block budget it reserved in, so settling it needs only which states hold it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from ._model import Budget, Window

__all__ = ["Matched", "NeedsLedgerError", "Plan", "Reservation", "State"]


class NeedsLedgerError(Exception):
    """A ``local_only`` reservation needs the ledger (an async caller then waits on a thread)."""


class State:
    """One budget key's window in this process (nano-dollars)."""

    __slots__ = (
        "available",
        "budget",
        "end",
        "fired",
        "held",
        "key",
        "last_used",
        "outstanding",
        "refill",
        "refused_at",
        "reserved",
        "room",
        "spent",
        "unreported",
        "window",
    )

    def __init__(self, budget: Budget, key: str, window: Window) -> None:
        self.budget = budget
        self.key = key
        self.window = window
        self.end = window.end.timestamp()  # read on every call: a float, not a datetime
        self.available = 0  # leased to us, not reserved (negative after a call cost more than reserved)
        self.reserved = 0  # held for calls in flight
        self.unreported = 0  # settled cost not yet reported to the ledger
        self.outstanding = 0  # our share of the ledger's ``held``
        self.spent = 0  # the window's spend, all processes, as last seen in the ledger
        self.held = 0
        self.fired: set[float] = set()
        self.refill = threading.Lock()
        self.last_used = time.monotonic()
        # When the ledger last refused a grant, and the room it had left then.
        self.refused_at = -1e18
        self.room = 0


# ``(valid until, manager generation, ((state, is block), ...), (block states, ...))``: one tuple,
# replaced whole, so a thread never reads one window's items with another window's blocks.
Plan = tuple[float, int, tuple[tuple[State, bool], ...], tuple[State, ...]]


class Matched(list[tuple[Budget, str]]):
    """The ``(budget, ledger key)`` pairs a call falls in, plus their :data:`Plan`: the states of
    their current windows, resolved once and reused until the first of those windows ends (or
    the process forks), so a call's reservation is a few comparisons under one lock."""

    __slots__ = ("plan",)

    def __init__(self, pairs: Sequence[tuple[Budget, str]]) -> None:
        super().__init__(pairs)
        self.plan: Plan = (-1.0, -1, (), ())


class Reservation:
    """What one call reserved: ``estimate`` in each state whose flag is true; settled once."""

    __slots__ = ("_settle", "estimate", "items")

    def __init__(
        self,
        settle: Callable[[Sequence[tuple[State, bool]], int, int], None],
        estimate: int,
        items: Sequence[tuple[State, bool]],
    ) -> None:
        self._settle = settle
        self.estimate = estimate
        self.items: Sequence[tuple[State, bool]] = items

    def settle(self, actual: int | None) -> None:
        """Turn the reservation into the call's cost (``None``: its estimate; 0 releases it)."""
        items, self.items = self.items, ()
        if items:
            self._settle(items, self.estimate, self.estimate if actual is None else actual)

    def __repr__(self) -> str:
        return f"Reservation(estimate={self.estimate}, budgets={[s.key for s, _ in self.items]})"

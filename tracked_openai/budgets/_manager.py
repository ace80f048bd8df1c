"""Budgets in one process: leases, reservations, settlement, the background sync, alerts.

The caller's path touches only this process's memory: a call's worst-case cost is reserved
against the lease this process holds for each matching ``block`` budget. The ledger is asked only
when a lease runs short, for a slice (``slice_fraction`` of the limit, at least the call's cost),
and the caller waits for it at most the ledger timeout. Settled costs are reported to the ledger
by a background thread every ``sync_interval`` seconds, which also checks alert thresholds and
hands idle leases back.

Overshoot: leases are granted only while ``spent + held + grant <= limit`` over the window, and
each reservation is the call's worst case, so the window's spend stays within the limit. It can
pass it only by what calls cost beyond their worst case (a model missing from the price table is
reserved at $0) or by calls let through while the ledger was unreachable (``fail="open"``).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from .._errors import logger
from ._alerts import Alert, AlertDispatcher
from ._cost import plain_chat_bound
from ._ledger import DEFAULT_LEDGER_TIMEOUT, Ledger, LedgerUnavailableError, Report, default_ledger_url
from ._model import NANO, Budget, BudgetExceeded, Window, to_nano
from ._plan import Matched, NeedsLedgerError, Plan, Reservation, State

__all__ = ["BudgetManager", "NeedsLedgerError", "Reservation"]


DEFAULT_SLICE_FRACTION = 0.05
DEFAULT_SYNC_INTERVAL = 1.0
# A lease unused this long is given back to the ledger for other processes.
IDLE_RETURN_S = 5.0
# After the ledger refused a grant, calls needing more than the room it had left are blocked
# without asking again for this long (a budget that is spent would otherwise cost every blocked
# call a round trip). Room handed back meanwhile is seen once it passes.
REFUSAL_TTL_S = 1.0


class BudgetManager:
    def __init__(
        self,
        budgets: Iterable[Budget],
        ledger_url: str | None = None,
        ledger_timeout: float = DEFAULT_LEDGER_TIMEOUT,
        slice_fraction: float = DEFAULT_SLICE_FRACTION,
        sync_interval: float = DEFAULT_SYNC_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.budgets = list(budgets)
        self._untagged = [b for b in self.budgets if b.tag_key is None]
        self._tagged = [b for b in self.budgets if b.tag_key is not None]
        self._tag_keys = tuple(sorted({str(b.tag_key) for b in self._tagged}))
        # (feature, operation, model, values of the tag keys budgets use) -> what such calls match.
        self._matched: dict[tuple[Any, ...], Matched] = {}
        # Bumped at a fork: plans resolved before it point at the parent's states.
        self._generation = 0
        self.ledger = Ledger(ledger_url or default_ledger_url(), ledger_timeout)
        self.slice_fraction = slice_fraction
        self.sync_interval = sync_interval
        self.clock = clock
        self.alerts = AlertDispatcher()
        self.counters = {
            "reservations": 0,
            "blocked": 0,
            "ledger_unavailable": 0,
            "fail_open": 0,
            "fail_closed": 0,
            "alerts": 0,
        }
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], State] = {}
        # Ledger key -> (end of its current window, its state): the caller's path lookup.
        self._by_key: dict[str, tuple[float, State]] = {}
        self._windows: dict[int, tuple[float, Window]] = {}
        self._warned_unavailable = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.closed = False
        ref = weakref.ref(self)
        atexit.register(_exit_hook, ref)
        os.register_at_fork(after_in_child=lambda: _after_fork_hook(ref))

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Background: connect the ledger (and warm the price book); start the sync thread."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="tracked-openai-budgets", daemon=True)
            self._thread.start()

    def _after_fork(self) -> None:
        # The parent's leases are the parent's: the child starts with none. Only new objects
        # here: a lock a parent thread held at the fork stays held in the child forever.
        if self.closed:
            return
        self._lock = threading.Lock()
        self._states = {}
        self._by_key = {}
        self._generation += 1
        self._thread = None
        self._pid = os.getpid()
        if self.ledger._pid != self._pid:  # before any thread of the child can use it
            self.ledger._after_fork()
        self.alerts = AlertDispatcher(self.alerts)
        self._stop = threading.Event()
        self.start()

    def close(self, timeout: float = 2.0) -> None:
        """Report what is settled, hand leases back, stop the thread."""
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.sync(return_leases=True)
        self.alerts.wait(min(timeout, 2.0))
        self.ledger.close()

    def _loop(self) -> None:
        try:
            self.ledger.open()
            from ..pricing import get_price_book

            get_price_book()
        except Exception as exc:
            self._unavailable(exc)
        while not self._stop.wait(self.sync_interval):
            try:
                self.sync()
            except Exception as exc:  # never let the thread die
                logger.warning("tracked_openai: budget sync failed: %s", exc)

    # -- the caller's path ---------------------------------------------------------------------

    def _window(self, budget: Budget, now: float) -> Window:
        cached = self._windows.get(id(budget))
        if cached is not None and cached[0] > now:
            return cached[1]
        window = budget.window(now)
        self._windows[id(budget)] = (window.end.timestamp(), window)
        return window

    def _state(self, budget: Budget, key: str, now: float) -> State:
        hit = self._by_key.get(key)
        if hit is not None and now < hit[0]:
            return hit[1]
        window = self._window(budget, now)
        state = self._states.get((key, window.key))
        if state is None:
            with self._lock:
                state = self._states.setdefault((key, window.key), State(budget, key, window))
        if len(self._by_key) > 100_000:  # bounded: tag values come from callers
            self._by_key.clear()
        self._by_key[key] = (window.end.timestamp(), state)
        return state

    def matching(
        self, feature: str, operation: str | None, model: str | None, tags: Mapping[str, str] | None
    ) -> Matched:
        """``(budget, ledger key)`` of every budget the call falls in (a list), remembered per
        kind of call (its scope and the values of the tags budgets use) with their states."""
        values = tuple(tags.get(k) for k in self._tag_keys) if tags and self._tag_keys else ()
        scope = (feature, operation, model, values)
        found = self._matched.get(scope)
        if found is not None:
            return found
        pairs = [(b, k) for b in self._untagged if (k := b.matches(feature, operation, model, None))]
        for budget in self._tagged:
            key = budget.matches(feature, operation, model, tags)
            if key is not None:
                pairs.append((budget, key))
        if len(self._matched) > 10_000:  # bounded: model names and tag values come from callers
            self._matched.clear()
        found = self._matched.setdefault(scope, Matched(pairs))
        return found

    def reserve_plain(self, call: Any) -> Reservation | bool | None:
        """The usual call on the shortest path: a kind of call seen before in this window, a plain chat
        request (``_cost.plain_chat_bound``) whose bound fits every lease (when it does not,
        :meth:`reserve` counts the texts exactly before asking the ledger). Its reservation,
        ``None`` when no budget applies, ``False`` to take :meth:`matching` and :meth:`reserve`.
        The caller's path runs this cold, between the SDK's own work: each frame, dict and
        object it touches costs a cache miss, hence no matching, no general worst case."""
        keys, tags = self._tag_keys, call.tags
        values: tuple[Any, ...] = ()
        if tags and keys:
            values = (tags.get(keys[0]),) if len(keys) == 1 else tuple([tags.get(k) for k in keys])
        op = call.op
        matched = self._matched.get(
            (call.feature, op.record.operation if op is not None else None, call.model, values)
        )
        if matched is None:
            return False
        if not matched:
            return None
        plan = matched.plan
        if self.clock() >= plan[0] or plan[1] != self._generation or call.endpoint != "chat.completions":
            return False
        bound = plain_chat_bound(call.request, call.model, call.provider)
        if bound is None or bound[0] is None:
            return False
        reservation = self._from_leases(plan, bound[0])
        return False if reservation is None else reservation

    def _from_leases(self, plan: Plan, estimate: int) -> Reservation | None:
        """The usual case, under one lock: ``estimate`` out of the lease of every block budget
        of ``plan``; ``None`` (nothing taken) when one lease is short."""
        blocks = plan[3]
        with self._lock:
            for state in blocks:
                if state.available < estimate:
                    return None
            used = time.monotonic()
            for state in blocks:
                state.available -= estimate
                state.reserved += estimate
                state.last_used = used
            self.counters["reservations"] += 1
        return Reservation(self._settle, estimate, plan[2])

    def _plan(self, matched: Sequence[tuple[Budget, str]], now: float) -> Plan:
        """The states ``matched`` reserves in, for the windows ``now`` falls in."""
        items = tuple((self._state(b, k, now), b.action == "block") for b, k in matched)
        until = min((s.end for s, _ in items), default=float("inf"))
        plan: Plan = (until, self._generation, items, tuple(s for s, block in items if block))
        if isinstance(matched, Matched):
            matched.plan = plan
        return plan

    def reserve(
        self,
        matched: Sequence[tuple[Budget, str]],
        estimate_usd: Decimal | int | None,
        local_only: bool = False,
        exact: Callable[[], int | None] | None = None,
    ) -> Reservation:
        """Reserve ``estimate_usd`` (dollars, or nano-dollars as an int) in every matching
        budget; raises :class:`BudgetExceeded` (with nothing left reserved) when a block budget
        cannot take it. ``exact``: a tighter estimate (nano-dollars), worked out only when the
        given one does not fit in this process's leases."""
        if os.getpid() != self._pid:
            self._after_fork()
        estimate = to_nano(estimate_usd) if isinstance(estimate_usd, Decimal) else estimate_usd or 0
        now = self.clock()
        plan = matched.plan if isinstance(matched, Matched) else None
        if plan is None or now >= plan[0] or plan[1] != self._generation:
            plan = self._plan(matched, now)
        items = plan[2]
        if estimate_usd is not None:
            for attempt in (0, 1):
                reservation = self._from_leases(plan, estimate)
                if reservation is not None:
                    return reservation
                if attempt or exact is None:
                    break
                tighter = exact()  # the bound did not fit: count the request exactly
                exact = None
                if tighter is None or tighter >= estimate:
                    break
                estimate = tighter
        held: list[tuple[State, bool]] = []
        try:
            for (budget, _), (state, block) in zip(matched, items, strict=True):
                state.last_used = time.monotonic()
                if estimate_usd is None and budget.fail == "closed" and block:
                    self.counters["blocked"] += 1
                    raise self._exceeded(state, estimate, "the price table cannot price this call")
                if not block or estimate == 0:
                    held.append((state, False))
                elif self._take(state, estimate):
                    held.append((state, True))
                elif local_only:
                    raise NeedsLedgerError
                elif self._refill(state, estimate):
                    held.append((state, True))
                else:
                    held.append((state, False))  # ledger unreachable, failing open: counted, not held
        except BaseException:
            self._settle(held, estimate, 0)  # nothing left reserved
            raise
        self.counters["reservations"] += 1
        return Reservation(self._settle, estimate, held)

    def _take(self, state: State, amount: int) -> bool:
        with self._lock:
            if state.available >= amount:
                state.available -= amount
                state.reserved += amount
                return True
        return False

    def _refill(self, state: State, amount: int) -> bool:
        """Lease more from the ledger and reserve ``amount``; False to let the call go unreserved
        (ledger unreachable, failing open); raises when the budget cannot take it."""
        budget = state.budget
        # One deadline for the wait behind another thread's refill and for our own exchange.
        deadline = time.monotonic() + self.ledger.timeout
        if not state.refill.acquire(timeout=self.ledger.timeout):
            return self._ledger_down(state, amount, LedgerUnavailableError("another refill is still waiting"))
        try:
            if self._take(state, amount):  # another thread refilled meanwhile
                return True
            with self._lock:
                need = amount - max(state.available, 0)
                want = max(need, int(budget.limit_nano * self.slice_fraction))
                if need > state.room and time.monotonic() - state.refused_at < REFUSAL_TTL_S:
                    self.counters["blocked"] += 1
                    raise self._exceeded(state, amount)
                report = self._report_of(state, return_leases=False)
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise LedgerUnavailableError("the ledger timeout ran out waiting for another refill")
                ex = self.ledger.exchange(
                    state.key,
                    budget.limit_nano,
                    state.window.key,
                    state.window.index,
                    state.window.rolling,
                    [report] if report else (),
                    want,
                    need,
                    timeout=left,
                    on_failed=lambda: self._unreport(state, report),
                )
            except LedgerUnavailableError as exc:
                if not exc.pending:  # not applied: reported again next time
                    self._unreport(state, report)
                return self._ledger_down(state, amount, exc)
            with self._lock:
                state.spent, state.held = ex.spent, ex.held
                state.available += ex.granted
                state.outstanding += ex.granted
                if not ex.granted:
                    state.refused_at = time.monotonic()
                    state.room = budget.limit_nano - ex.spent - ex.held
            if ex.granted and self._take(state, amount):
                return True
            self.counters["blocked"] += 1
            raise self._exceeded(state, amount)
        finally:
            state.refill.release()

    def _ledger_down(self, state: State, amount: int, exc: BaseException) -> bool:
        self._unavailable(exc)
        if state.budget.fail == "closed":
            self.counters["fail_closed"] += 1
            raise self._exceeded(state, amount, "ledger unavailable")
        self.counters["fail_open"] += 1
        return False

    def _unavailable(self, exc: BaseException) -> None:
        self.counters["ledger_unavailable"] += 1
        if not self._warned_unavailable:
            self._warned_unavailable = True
            logger.warning(
                "tracked_openai: budget ledger %s unavailable (%s); budgets fail as configured "
                "(open: calls go on, counted in stats()['budget_fail_open'])",
                _safe_url(self.ledger.url),
                exc,
            )

    def _exceeded(self, state: State, amount: int, reason: str = "limit") -> BudgetExceeded:
        return BudgetExceeded(
            state.budget,
            state.key,
            state.window.describe(),
            Decimal(state.spent) / NANO,
            Decimal(state.held) / NANO,
            Decimal(amount) / NANO,
            reason,
        )

    # -- settlement (exporter thread) ----------------------------------------------------------

    def _settle(self, items: Sequence[tuple[State, bool]], estimate: int, actual: int) -> None:
        with self._lock:
            for state, held in items:
                if held:
                    state.reserved -= estimate
                    state.available += estimate - actual
                state.unreported += actual

    # -- sync (background thread) --------------------------------------------------------------

    def _report_of(self, state: State, return_leases: bool) -> Report | None:
        """Under the lock: take what ``state`` has to report (``_unreport`` puts it back)."""
        spent = state.unreported
        released = min(spent, state.outstanding)
        returned = 0
        if return_leases and state.available > 0:
            returned = min(state.available, state.outstanding - released)
        if not spent and not released and not returned:
            return None
        state.unreported -= spent
        state.outstanding -= released + returned
        state.available -= returned
        return Report(state.window.key, state.window.index, spent, released + returned, returned)

    def _unreport(self, state: State, report: Report | None) -> None:
        if report is None:
            return
        with self._lock:
            state.unreported += report.spent
            state.outstanding += report.released
            state.available += report.returned

    def sync(self, return_leases: bool = False) -> None:
        """Report settled costs and hand back idle leases (every budget in one transaction),
        then check alert thresholds."""
        now = self.clock()
        idle_before = time.monotonic() - IDLE_RETURN_S
        batch: list[tuple[State, Report]] = []
        with self._lock:
            for state in list(self._states.values()):
                back = return_leases or (state.reserved == 0 and state.last_used < idle_before)
                report = self._report_of(state, back)
                if report is not None:
                    batch.append((state, report))
                elif (
                    state.reserved == 0
                    and state.outstanding == 0
                    and state.unreported == 0
                    and state.end <= now
                ):
                    self._states.pop((state.key, state.window.key), None)  # a past window, settled
        if not batch:
            return
        items = [
            (s.key, s.budget.limit_nano, s.window.key, s.window.index, s.window.rolling, r) for s, r in batch
        ]
        def put_back() -> None:
            for state, report in batch:
                self._unreport(state, report)

        try:
            totals = self.ledger.report_many(items, on_failed=put_back)
        except LedgerUnavailableError as exc:
            # Still running, it may yet commit: put back only if it fails (counted once).
            if not exc.pending:
                put_back()
            self._unavailable(exc)
            return
        for (state, _), (spent, held) in zip(batch, totals, strict=True):
            with self._lock:
                state.spent, state.held = spent, held
            self._check_alerts(state)

    def _check_alerts(self, state: State) -> None:
        budget = state.budget
        if not budget.limit_nano:
            return
        for threshold in budget.thresholds:
            if threshold in state.fired or state.spent < budget.limit_nano * threshold:
                continue
            try:
                first = self.ledger.claim_alert(state.key, state.window.key, f"{threshold:g}")
            except LedgerUnavailableError as exc:
                self._unavailable(exc)
                return
            state.fired.add(threshold)
            if first:
                self.counters["alerts"] += 1
                self.alerts.dispatch(
                    Alert(
                        budget=state.key,
                        scope=budget.scope(),
                        window=state.window.describe(),
                        threshold=threshold,
                        spent_usd=f"{Decimal(state.spent) / NANO:.6f}",
                        limit_usd=str(budget.usd),
                        action=budget.action,
                        at=time.time(),
                    )
                )

    def stats(self) -> dict[str, int]:
        return {
            **{f"budget_{k}": v for k, v in self.counters.items()},
            "budget_ledger_round_trips": self.ledger.round_trips,
            "budget_webhooks_sent": self.alerts.sent,
            "budget_webhooks_failed": self.alerts.failed,
        }


def _safe_url(url: str) -> str:
    # Never log a password in a database URL.
    try:
        from sqlalchemy.engine import make_url

        return str(make_url(url).render_as_string(hide_password=True))
    except Exception:
        return url.split("@")[-1]


def _exit_hook(ref: weakref.ref[BudgetManager]) -> None:
    manager = ref()
    if manager is None or manager.closed or manager._pid != os.getpid():
        return
    try:
        # Calls finished but not yet settled are settled by the exporter first.
        from ..export import runtime as _runtime

        _runtime.flush(2.0)
        manager.close(2.0)
    except Exception:
        pass


def _after_fork_hook(ref: weakref.ref[BudgetManager]) -> None:
    manager = ref()
    if manager is not None:
        manager._after_fork()

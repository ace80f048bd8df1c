"""Budgets: spending limits per feature, operation, model, tag value or the whole app, checked
before each paid call leaves the process, shared by every process through a ledger.

Declare them in code (``tracked_openai.configure(budgets=[Budget(...)])``) or in a file
(``TRACKED_OPENAI_BUDGETS=budgets.yaml``, see ``_file``). The client calls :func:`guard` where a
request is about to be sent (one call site per sync/async path) and the exporter settles each
call's reservation to its exact cost once the call is priced (:func:`settle`).

Importing this package is cheap: SQLAlchemy, the price book and tiktoken load only once budgets
are configured (the ledger connects and the price book loads on a background thread then).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import logger, report_internal_error
from ..export import runtime as _runtime
from ..records import BUDGET_BLOCKED_TAG
from ._model import Budget, BudgetExceeded

if TYPE_CHECKING:
    from ._alerts import Alert
    from ._file import BudgetsFileError, load_budgets_file, parse_budgets_text

# Loaded on first use: YAML and urllib cost tens of milliseconds at import.
_LAZY = {
    "Alert": "._alerts",
    "BudgetsFileError": "._file",
    "load_budgets_file": "._file",
    "parse_budgets_text": "._file",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ACTIVE",
    "Alert",
    "Budget",
    "BudgetExceeded",
    "BudgetsFileError",
    "configure_budgets",
    "guard",
    "guard_async",
    "load_budgets_file",
    "parse_budgets_text",
    "settle",
    "stats",
    "warm_up",
]

BLOCKED_TAG = BUDGET_BLOCKED_TAG
_MAX_MESSAGE = 2_000

# Read on every tracked call: False costs the caller one global lookup.
ACTIVE: bool = bool(os.environ.get("TRACKED_OPENAI_BUDGETS"))
_current: Any = None  # BudgetManager | None, built lazily (it imports the ledger module)
_env_loaded = False
_lock = threading.Lock()


def configure_budgets(
    budgets: Iterable[Budget] | str | Path | None,
    *,
    ledger_url: str | None = None,
    ledger_timeout: float | None = None,
    on_alert: Callable[[Alert], Any] | None = None,
    webhooks: Iterable[str | dict[str, Any]] = (),
    slice_fraction: float | None = None,
    sync_interval: float | None = None,
) -> None:
    """Set the budgets in force (replacing any), from :class:`Budget` objects or a budgets file.

    Args:
        budgets: Budgets, or a path to a budgets file (:class:`BudgetsFileError` if malformed).
            ``None`` or ``[]`` removes them.
        ledger_url: SQLAlchemy URL of the ledger (default ``TRACKED_OPENAI_LEDGER_URL``, else a
            SQLite file ``.tracked_openai/budget_ledger.sqlite`` under the working directory).
        ledger_timeout: Longest a call waits for the ledger, in seconds (default 2, or
            ``TRACKED_OPENAI_LEDGER_TIMEOUT``).
        on_alert: Called with each :class:`Alert` (on the budgets' background thread).
        webhooks: URLs (or ``{"url": ..., "slack": True}``) each alert is POSTed to as JSON.
        slice_fraction: Share of a limit leased to a process at a time (default 0.05).
        sync_interval: Seconds between reports of settled costs to the ledger (default 1).
    """
    global _current, ACTIVE, _env_loaded
    from ._manager import DEFAULT_SLICE_FRACTION, DEFAULT_SYNC_INTERVAL, BudgetManager

    hooks: list[dict[str, Any]] = [w if isinstance(w, dict) else {"url": w} for w in webhooks]
    if isinstance(budgets, (str, Path)):
        from ._file import load_budgets_file

        loaded = load_budgets_file(budgets)
        budgets = loaded.budgets
        hooks += [{"url": w.url, "slack": w.slack, "timeout": w.timeout} for w in loaded.webhooks]
    items = list(budgets or [])
    for b in items:
        if not isinstance(b, Budget):
            raise TypeError(f"budgets must be tracked_openai.Budget objects (got {type(b).__name__})")
    timeout = (
        ledger_timeout if ledger_timeout is not None else _env_float("TRACKED_OPENAI_LEDGER_TIMEOUT", 2.0)
    )
    with _lock:
        old, _current = _current, None
        _env_loaded = True
        if items:
            manager = BudgetManager(
                items,
                ledger_url=ledger_url,
                ledger_timeout=timeout,
                slice_fraction=slice_fraction or DEFAULT_SLICE_FRACTION,
                sync_interval=sync_interval or DEFAULT_SYNC_INTERVAL,
            )
            if on_alert is not None:
                manager.alerts.callbacks.append(on_alert)
            for hook in hooks:
                manager.alerts.add_webhook(
                    str(hook["url"]), bool(hook.get("slack", False)), float(hook.get("timeout", 5.0))
                )
            manager.start()
            _current = manager
        ACTIVE = _current is not None
    if old is not None:
        old.close()


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
        if not 0 < value <= 3600:
            raise ValueError
        return value
    except ValueError:
        logger.warning(
            "tracked_openai: %s=%r is not a number of seconds (0 to 3600); using %g", name, raw, default
        )
        return default


def _from_env() -> Any:
    """The manager for ``TRACKED_OPENAI_BUDGETS``, loaded on first use; a malformed file is
    logged (file:line: field: problem) and no budget applies, as for the pricing file."""
    global _env_loaded, ACTIVE
    with _lock:
        if _env_loaded:
            return _current
        _env_loaded = True
    path = os.environ.get("TRACKED_OPENAI_BUDGETS")
    if not path:
        ACTIVE = False
        return None
    from ._file import BudgetsFileError

    try:
        configure_budgets(path)
    except BudgetsFileError as exc:
        logger.error("tracked_openai: TRACKED_OPENAI_BUDGETS ignored, no budget applies:\n%s", exc)
        ACTIVE = False
    return _current


def warm_up() -> None:
    """Load ``TRACKED_OPENAI_BUDGETS`` now rather than on the first call (``tracked_openai.start()``
    calls it); the ledger connects and the price book loads on the budgets' thread."""
    if not _env_loaded:
        _from_env()


def _cost_module() -> Any:
    # Not named ``_cost``: that is the submodule's attribute on this package.
    global _cost_loaded
    if _cost_loaded is None:
        from . import _cost

        _cost_loaded = _cost
    return _cost_loaded


_cost_loaded: Any = None


def _prepare(call: Any) -> tuple[Any, Any, int | None, Any] | None:
    """``(manager, matched budgets, estimate, exact)`` for ``call``, or ``None`` when no budget
    applies. The estimate counts the request's texts by their byte length (no tiktoken);
    ``exact`` counts them with tiktoken, for when that bound does not fit in the leases."""
    manager = _current if _env_loaded else _from_env()
    if manager is None:
        return None
    op = call.op
    operation = op.record.operation if op is not None else None
    matched = manager.matching(call.feature, operation, call.model, call.tags)
    if not matched:
        return None
    cost = _cost_module()
    exact: Any = None
    try:
        estimate, is_exact = cost.worst_case_bound(
            call.endpoint, call.request, call.model, call.provider, call.upload
        )
        if not is_exact:
            counted: list[int | None] = []  # counted once, if at all (an async call may ask twice)

            def exact() -> int | None:
                if not counted:
                    try:
                        args = (call.endpoint, call.request, call.model, call.provider, call.upload)
                        counted.append(cost.worst_case_nano(*args))
                    except Exception as exc:
                        report_internal_error(exc, "budget estimate")
                        counted.append(None)
                return counted[0]

    except Exception as exc:
        report_internal_error(exc, "budget estimate")
        estimate = None
    return manager, matched, estimate, exact


def guard(call: Any) -> None:
    """Before ``call`` is sent: reserve its worst-case cost in every budget it falls in. Raises
    :class:`BudgetExceeded` (the call recorded as blocked) when a block budget cannot take it;
    never raises anything else."""
    try:
        manager = _current if _env_loaded else _from_env()
        if manager is None:
            return
        quick = manager.reserve_plain(call)
        if quick is not False:
            call.budget = quick
            return
        prepared = _prepare(call)
        if prepared is None:
            return
        manager, matched, estimate, exact = prepared
        call.budget = manager.reserve(matched, estimate, exact=exact)
    except BudgetExceeded as exc:
        _blocked(call, exc)
        raise
    except Exception as exc:
        report_internal_error(exc, "budget guard")


async def guard_async(call: Any) -> None:
    """:func:`guard` for async clients: a reservation that needs the ledger waits for it on a
    worker thread, never on the event loop."""
    try:
        manager = _current if _env_loaded else _from_env()
        if manager is None:
            return
        quick = manager.reserve_plain(call)  # never waits for the ledger
        if quick is not False:
            call.budget = quick
            return
        prepared = _prepare(call)
        if prepared is None:
            return
        manager, matched, estimate, exact = prepared
        from ._plan import NeedsLedgerError

        try:
            call.budget = manager.reserve(matched, estimate, local_only=True, exact=exact)
        except NeedsLedgerError:
            # ``exact`` keeps its count: tiktoken does not run twice for one call.
            call.budget = await asyncio.to_thread(manager.reserve, matched, estimate, exact=exact)
    except BudgetExceeded as exc:
        _blocked(call, exc)
        raise
    except Exception as exc:
        report_internal_error(exc, "budget guard")


def _blocked(call: Any, exc: BudgetExceeded) -> None:
    try:
        from ..records import Usage

        rec = call.record
        rec.status = "blocked"
        rec.error_type = "BudgetExceeded"
        rec.error_message = str(exc)[:_MAX_MESSAGE]
        rec.usage = Usage()  # never sent: nothing billed
        rec.tags[BLOCKED_TAG] = exc.key
        call.finish()
    except Exception as err:
        report_internal_error(err, "budget blocked record")


def settle(reservation: Any, record: Any) -> None:
    """Exporter thread, once the call's record is priced: its reservation becomes its exact cost,
    is released (an error with nothing billed), or keeps its estimate (cost unknown)."""
    if reservation is None:
        return
    try:
        from ._model import to_nano

        cost = record.cost
        if cost is not None:
            actual: int | None = to_nano(cost.total_usd)
        elif record.status != "success" and record.usage.is_empty():
            actual = 0
        else:
            actual = None
        reservation.settle(actual)
    except Exception as exc:
        report_internal_error(exc, "budget settle")


def stats() -> dict[str, int]:
    """Budget counters (reservations, blocked, ledger unavailable, fail open/closed, alerts,
    ledger round trips, webhooks); empty without budgets."""
    manager = _current
    return manager.stats() if manager is not None else {}


def _warm_up_if_active() -> None:
    if ACTIVE:
        warm_up()


# The exporter calls these without importing this package (it sits below it).
_runtime.register_budget_hooks(
    warm_up=_warm_up_if_active,
    configure=lambda *a, **k: configure_budgets(*a, **k),
    stats=lambda: stats(),
    settle=lambda r, rec: settle(r, rec),
)


def _shutdown_for_tests() -> None:
    global _current, ACTIVE, _env_loaded
    with _lock:
        old, _current = _current, None
        ACTIVE = bool(os.environ.get("TRACKED_OPENAI_BUDGETS"))
        _env_loaded = False
    if old is not None:
        old.close()

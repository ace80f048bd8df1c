"""The caller's one-frame path (``BudgetManager.reserve_plain``): taken only for a kind of call
already matched in this window with a plain chat request whose bound fits every lease, holding
exactly what the general path (``matching`` + ``reserve``) holds; anything else declines."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tracked_openai.budgets import Budget
from tracked_openai.budgets._cost import worst_case_bound
from tracked_openai.budgets._manager import BudgetManager

REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say something short."}]}


def _call(request: dict[str, Any] = REQUEST, tenant: str = "acme", endpoint: str = "chat.completions") -> Any:
    op = SimpleNamespace(record=SimpleNamespace(operation="chat"))
    return SimpleNamespace(
        op=op,
        feature="bench",
        model="gpt-4o-mini",
        tags={"tenant": tenant},
        endpoint=endpoint,
        request=request,
        provider="openai",
        upload=None,
    )


def _general(manager: BudgetManager, call: Any) -> Any:
    matched = manager.matching(call.feature, "chat", call.model, call.tags)
    estimate, _ = worst_case_bound(call.endpoint, call.request, call.model)
    return manager.reserve(matched, estimate)


def test_plain_path_holds_what_the_general_path_holds(sqlite_url: str) -> None:
    manager = BudgetManager(
        [Budget(feature="bench", usd=10), Budget(tag="tenant", usd=5), Budget(usd=100, action="alert")],
        ledger_url=sqlite_url,
    )
    try:
        call = _call()
        assert manager.reserve_plain(call) is False  # a kind of call not seen yet: general path
        first = _general(manager, call)
        assert first.estimate > 0 and sum(held for _, held in first.items) == 2  # two block budgets
        states = [state for state, _ in first.items]
        available = [s.available for s in states]
        quick = manager.reserve_plain(call)
        assert quick is not None and quick is not False
        assert quick.estimate == first.estimate and list(quick.items) == list(first.items)
        blocks = [s for s, held in first.items if held]
        assert [s.available for s in states] == [
            a - (first.estimate if s in blocks else 0) for a, s in zip(available, states, strict=True)
        ]
        reserved = [s.reserved for s in blocks]
        quick.settle(0)
        assert [s.reserved for s in blocks] == [r - first.estimate for r in reserved]
        assert manager.counters["reservations"] == 2

        # Another tenant, another endpoint, a request with tools: not this path.
        assert manager.reserve_plain(_call(tenant="other")) is False
        assert manager.reserve_plain(_call(endpoint="responses")) is False
        assert manager.reserve_plain(_call({**REQUEST, "tools": [{"type": "function"}]})) is False

        # A bound the lease cannot cover: declined, the general path asks the ledger.
        for state in blocks:
            state.available = first.estimate - 1
        assert manager.reserve_plain(call) is False
        assert [s.available for s in blocks] == [first.estimate - 1] * 2  # nothing taken
    finally:
        manager.close()


def test_a_call_matching_no_budget_reserves_nothing(sqlite_url: str) -> None:
    manager = BudgetManager([Budget(feature="other", usd=10)], ledger_url=sqlite_url)
    try:
        call = _call()
        manager.matching(call.feature, "chat", call.model, call.tags)
        assert manager.reserve_plain(call) is None
    finally:
        manager.close()

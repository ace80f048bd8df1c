"""Budgets across real processes: 8 workers x 200 concurrent calls against one $1 block budget,
on the SQLite ledger and on PostgreSQL, through the fake OpenAI server (its request count is
the truth about what was sent)."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

from tracked_openai._fake_server import FakeOpenAIServer

WORKERS = 8
CALLS = 200
LIMIT = Decimal(1)
THRESHOLDS = (0.25, 0.5, 0.75)
PROMPT = "word " * 1000
MAX_TOKENS = 30


def _worker(base_url: str, ledger_url: str, start: Any, out: Any) -> None:
    """One worker process: 200 calls at once, then its counts, spend and alerts."""
    try:
        import tracked_openai
        from tracked_openai import Budget, BudgetExceeded, budgets
        from tracked_openai.sinks import InMemorySink

        sink = InMemorySink()
        alerts: list[float] = []
        tracked_openai.configure(sinks=[sink], flush_interval=0.05)
        budgets.configure_budgets(
            [Budget(usd=LIMIT, alert_at=THRESHOLDS)],
            ledger_url=ledger_url,
            ledger_timeout=10,
            on_alert=lambda a: alerts.append(a.threshold),
            sync_interval=0.2,
        )
        client = tracked_openai.OpenAI(api_key="sk-test", base_url=base_url, max_retries=0)
        client.models.list()  # connect before the burst (not a paid call)

        def one(_: int) -> str:
            try:
                client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS
                )
                return "sent"
            except BudgetExceeded:
                return "blocked"

        start.wait()
        with ThreadPoolExecutor(CALLS) as pool:
            outcomes = list(pool.map(one, range(CALLS)))
        tracked_openai.flush(30)
        stats = tracked_openai.stats()
        budgets._current.close(10)  # reports the last settlements, fires alerts, returns leases
        calls = sink.calls
        out.put(
            {
                "sent": outcomes.count("sent"),
                "blocked": outcomes.count("blocked"),
                "recorded_blocked": sum(c.status == "blocked" for c in calls),
                "spent": str(sum((c.cost.total_usd for c in calls if c.cost is not None), Decimal(0))),
                "unpriced": sum(c.status == "success" and c.cost is None for c in calls),
                "alerts": alerts,
                "fail_open": stats.get("budget_fail_open", 0),
                "round_trips": stats.get("budget_ledger_round_trips", 0),
            }
        )
    except BaseException as exc:  # the parent asserts on it
        out.put({"error": repr(exc)})


def _run(server: FakeOpenAIServer, ledger_url: str) -> list[dict[str, Any]]:
    # A fork server: workers are forked from a clean process that imported tracked_openai once
    # (no re-import per worker, and none of pytest's threads or their locks inherited).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tracked_openai", "tracked_openai.budgets._manager", "sqlalchemy"])
    start = ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(server.base_url, ledger_url, start, out)) for _ in range(WORKERS)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    results = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(30)
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors
    return results


def _worst_case() -> Decimal:
    from tracked_openai.budgets._cost import worst_case_usd

    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS}
    value = worst_case_usd("chat.completions", request, "gpt-4o")
    assert value is not None
    return value


def test_eight_processes_share_one_budget(ledger_url: str) -> None:
    from tracked_openai.budgets._ledger import Ledger

    with FakeOpenAIServer(latency_scale=0) as server:
        results = _run(server, ledger_url)
        sent = sum(r["sent"] for r in results)
        blocked = sum(r["blocked"] for r in results)
        spent = sum(Decimal(r["spent"]) for r in results)
        fail_open = sum(r["fail_open"] for r in results)
        print(
            f"\n{ledger_url.split(':')[0]}: sent {sent}, blocked {blocked}, spent ${spent:.6f}, "
            f"ledger round trips {sum(r['round_trips'] for r in results)}, fail-open {fail_open}"
        )
        assert sent + blocked == WORKERS * CALLS
        assert server.requests == sent  # every blocked call never reached the server
        assert sum(r["recorded_blocked"] for r in results) == blocked
        assert all(r["unpriced"] == 0 for r in results)
        # The documented bound: the limit, plus the worst case of calls let through unreserved
        # while the ledger was unreachable (fail open; none expected here).
        assert spent <= LIMIT + fail_open * _worst_case()
        assert spent >= Decimal("0.75") and blocked > 0  # the budget was used, then it blocked
        fired = sorted(t for r in results for t in r["alerts"])
        assert fired == list(THRESHOLDS)  # each threshold exactly once, across all processes

        ledger = Ledger(ledger_url, timeout=10)
        rows = ledger.rows()
        ledger.close()
        assert len(rows) == 1 and rows[0]["held"] == 0  # every lease handed back at exit
        assert spent <= Decimal(rows[0]["spent"]) / 10**9 <= spent + Decimal(sent) / 10**9

        # A restart keeps the window's spend: a new round of workers spends only what is left.
        before = server.requests
        again = _run(server, ledger_url)
        spent_again = sum(Decimal(r["spent"]) for r in again)
        assert server.requests - before == sum(r["sent"] for r in again)
        assert spent + spent_again <= LIMIT + sum(r["fail_open"] for r in again) * _worst_case()
        assert sum(r["blocked"] for r in again) >= WORKERS * CALLS - (LIMIT - spent) / Decimal("0.0026")
        assert sorted(t for r in again for t in r["alerts"]) == []  # already fired this window


def _spend_in_child(manager: Any, out: Any) -> None:
    try:
        from tracked_openai.budgets import BudgetExceeded

        calls = 0
        try:
            while True:
                manager.reserve(manager.matching("f", None, None, None), 1_000_000).settle(1_000_000)
                calls += 1
        except BudgetExceeded:
            pass
        manager.close(10)
        out.put(calls)
    except BaseException as exc:
        out.put(repr(exc))


def test_forked_workers_do_not_share_the_parent_lease(sqlite_url: str) -> None:
    """gunicorn --preload: budgets configured (and a lease taken) before the fork. Each child
    starts with no lease of its own, so the parent's is never spent twice."""
    from tracked_openai.budgets import Budget, BudgetExceeded
    from tracked_openai.budgets._manager import BudgetManager

    manager = BudgetManager([Budget(usd="0.1")], ledger_url=sqlite_url, ledger_timeout=10, sync_interval=0.2)
    manager.reserve(manager.matching("f", None, None, None), 1_000_000).settle(
        1_000_000
    )  # $0.001, leases $0.005
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_spend_in_child, args=(manager, out)) for _ in range(3)]
    for p in procs:
        p.start()
    children = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(isinstance(c, int) for c in children), children
    parent = 1
    try:
        while True:
            manager.reserve(manager.matching("f", None, None, None), 1_000_000).settle(1_000_000)
            parent += 1
    except BudgetExceeded:
        pass
    manager.close(10)
    assert parent + sum(children) == 100  # $0.001 each: exactly the $0.1 limit, never more

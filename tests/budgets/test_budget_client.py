"""Budgets on the client path: reserve before sending, block without sending, settle after."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

import tracked_openai
from tracked_openai import Budget, BudgetExceeded, track
from tracked_openai import budgets as budgets_module
from tracked_openai._fake_server import FakeOpenAIServer
from tracked_openai.testing import TrackedRecords

API_KEY = "sk-test-hardcoded"
PROMPT = "word " * 1000  # the fake server bills a word a token: about $0.0026 on gpt-4o


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_scale=0) as srv:
        yield srv


@pytest.fixture(autouse=True)
def no_budgets_after() -> Iterator[None]:
    yield
    budgets_module._shutdown_for_tests()


def _client(server: FakeOpenAIServer) -> tracked_openai.OpenAI:
    return tracked_openai.OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0)


def _chat(client: tracked_openai.OpenAI, **kw: object) -> object:
    return client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=30,
        **kw,  # type: ignore[call-overload]
    )


def test_a_zero_block_budget_is_a_kill_switch(
    server: FakeOpenAIServer, records: TrackedRecords, sqlite_url: str
) -> None:
    tracked_openai.configure(budgets=[Budget(model="gpt-4o", usd=0)], ledger_url=sqlite_url)
    client = _client(server)
    for _ in range(3):
        with pytest.raises(BudgetExceeded) as info:
            _chat(client)
        assert info.value.key == "model=gpt-4o|day" and info.value.limit == 0
    assert server.requests == 0
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert server.requests == 1  # another model: not in the budget's scope
    assert [c.status for c in records.calls] == ["blocked"] * 3 + ["success"]


def test_blocked_call_never_leaves_and_is_recorded(
    server: FakeOpenAIServer, records: TrackedRecords, sqlite_url: str
) -> None:
    tracked_openai.configure(budgets=[Budget(feature="vision", usd="0.01")], ledger_url=sqlite_url)
    client = _client(server)
    sent = blocked = 0
    with track("vision", "analyse"):
        for _ in range(10):
            try:
                _chat(client)
                sent += 1
            except BudgetExceeded as exc:
                blocked += 1
                assert exc.key == "feature=vision|day" and exc.limit == Decimal("0.01")
    assert sent == 3 and blocked == 7  # $0.00282 worst case each: a fourth would pass $0.01
    assert server.requests == sent  # blocked calls never reached the server
    calls = records.calls
    statuses = [c.status for c in calls]
    assert statuses.count("blocked") == 7 and statuses.count("success") == 3
    for c in calls:
        if c.status == "blocked":
            assert c.cost is None and c.error_type == "BudgetExceeded"
            assert c.tags[budgets_module.BLOCKED_TAG] == "feature=vision|day"
    spent = sum((c.cost.total_usd for c in calls if c.cost is not None), Decimal(0))
    assert spent <= Decimal("0.01")
    # Outside the feature, nothing applies.
    _chat(client)
    assert server.requests == sent + 1


def test_errors_release_and_streams_settle(
    server: FakeOpenAIServer, records: TrackedRecords, sqlite_url: str
) -> None:
    tracked_openai.configure(budgets=[Budget(usd="0.006")], ledger_url=sqlite_url)
    client = _client(server)
    for _ in range(5):  # 404s: nothing billed, each reservation released
        with pytest.raises(Exception, match="does not exist"):
            client.chat.completions.create(
                model="gpt-4o-unavailable", messages=[{"role": "user", "content": PROMPT}]
            )
    records.flush()
    stream = _chat(client, stream=True)
    for _ in stream:  # type: ignore[attr-defined]
        pass
    stream = _chat(client, stream=True)
    next(iter(stream))  # type: ignore[call-overload]
    stream.close()  # type: ignore[attr-defined]
    records.flush()
    with pytest.raises(BudgetExceeded):
        _chat(client)  # $0.0052 settled + $0.00282 > $0.006
    assert server.requests == 7


def test_tag_budgets_per_value(server: FakeOpenAIServer, records: TrackedRecords, sqlite_url: str) -> None:
    tracked_openai.configure(budgets=[Budget(tag="tenant", usd="0.005")], ledger_url=sqlite_url)
    client = _client(server)
    for tenant in ("acme", "zeta"):
        with track("reports", "summary", tenant=tenant):
            _chat(client)
            with pytest.raises(BudgetExceeded, match=f"tenant={tenant}"):
                _chat(client)
    _chat(client)  # no tenant: outside every budget
    assert server.requests == 3


async def test_async_client(server: FakeOpenAIServer, records: TrackedRecords, sqlite_url: str) -> None:
    tracked_openai.configure(budgets=[Budget(usd="0.006")], ledger_url=sqlite_url)
    client = tracked_openai.AsyncOpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0)
    results = await asyncio.gather(
        *[
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], max_tokens=30
            )
            for _ in range(4)
        ],
        return_exceptions=True,
    )
    assert sum(isinstance(r, BudgetExceeded) for r in results) == 2
    assert server.requests == 2
    await client.close()


@pytest.mark.parametrize("fail", ["open", "closed"])
def test_ledger_down(server: FakeOpenAIServer, records: TrackedRecords, fail: str) -> None:
    tracked_openai.configure(
        budgets=[Budget(usd="1", fail=fail)],  # type: ignore[arg-type]
        ledger_url="postgresql://postgres@127.0.0.1:9/none",
    )
    budgets_module._current.ledger.timeout = 0.3
    client = _client(server)
    if fail == "open":
        _chat(client)
        _chat(client)
        assert server.requests == 2
        assert tracked_openai.stats()["budget_fail_open"] == 2
    else:
        with pytest.raises(BudgetExceeded, match="ledger unavailable"):
            _chat(client)
        assert server.requests == 0
        assert records.calls[0].status == "blocked"


def test_malformed_budgets_file(tmp_path: Path, server: FakeOpenAIServer) -> None:
    bad = tmp_path / "budgets.yaml"
    bad.write_text("budgets:\n  - feature: x\n    usd: -5\n")
    with pytest.raises(budgets_module.BudgetsFileError, match=r"budgets.yaml:3: budgets\[0\].usd: must be"):
        tracked_openai.configure(budgets=str(bad))
    # Through the environment: logged with file:line, and the app keeps running without budgets.
    script = textwrap.dedent(
        f"""
        import tracked_openai
        tracked_openai.configure(sinks=[])
        client = tracked_openai.OpenAI(api_key="sk-x", base_url={server.base_url!r}, max_retries=0)
        client.chat.completions.create(model="gpt-4o", messages=[{{"role": "user", "content": "hi"}}])
        print("sent")
        """
    )
    env = {**os.environ, "TRACKED_OPENAI_BUDGETS": str(bad)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sent" in out.stdout
    assert f"{bad}:3: budgets[0].usd: must be a number of dollars >= 0" in out.stderr
    assert server.requests == 1


def test_exit_reports_spend_and_hands_leases_back(server: FakeOpenAIServer, sqlite_url: str) -> None:
    """A process that just ends (no close, no flush): its spend reaches the ledger at exit and
    its lease is handed back, so a restart sees the spend and the whole remaining budget."""
    script = textwrap.dedent(
        f"""
        import tracked_openai
        from tracked_openai import Budget
        tracked_openai.configure(sinks=[], budgets=[Budget(usd=1)], ledger_url={sqlite_url!r})
        client = tracked_openai.OpenAI(api_key="sk-x", base_url={server.base_url!r}, max_retries=0)
        client.chat.completions.create(model="gpt-4o", messages=[{{"role": "user", "content": {PROMPT!r}}}])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from tracked_openai.budgets._ledger import Ledger

    ledger = Ledger(sqlite_url, timeout=10)
    rows = ledger.rows()
    ledger.close()
    assert [(r["key"], r["held"]) for r in rows] == [("app|day", 0)]
    assert Decimal("0.0025") <= Decimal(rows[0]["spent"]) / 10**9 <= Decimal("0.0027")


def test_start_loads_the_budgets_file(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text("budgets:\n  - feature: f\n    usd: 2\n")
    monkeypatch.setenv("TRACKED_OPENAI_BUDGETS", str(path))
    monkeypatch.setenv("TRACKED_OPENAI_LEDGER_URL", sqlite_url)
    budgets_module._shutdown_for_tests()  # as at import with the variable set
    assert budgets_module.ACTIVE and budgets_module._current is None
    tracked_openai.start()
    manager = budgets_module._current
    assert manager is not None and [b.key for b in manager.budgets] == ["feature=f|day"]
    assert manager.ledger.url == sqlite_url

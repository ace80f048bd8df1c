"""Worst-case estimates, the ledger (SQLite and PostgreSQL), leases, alerts and webhooks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from tracked_openai.budgets import Alert, Budget, BudgetExceeded
from tracked_openai.budgets._cost import OUTPUT_LIMITS, worst_case_usd
from tracked_openai.budgets._ledger import Ledger, LedgerUnavailableError, Report
from tracked_openai.budgets._manager import BudgetManager
from tracked_openai.budgets._model import NANO
from tracked_openai.pricing import price_record
from tracked_openai.records import CallRecord, Usage


def _price(model: str, **usage: int) -> Decimal:
    rec = CallRecord(record_id="", started_at=time.time(), endpoint="chat.completions", model=model)
    rec.usage = Usage(**usage)
    price_record(rec)
    assert rec.cost is not None
    return rec.cost.total_usd


class TestWorstCase:
    def test_chat_with_a_cap_is_at_least_the_billed_price(self) -> None:
        """The estimate covers the prompt counted by tiktoken and the whole max_tokens."""
        request = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "word " * 100}],
            "max_tokens": 50,
        }
        est = worst_case_usd("chat.completions", request, "gpt-4o")
        assert est is not None
        # The fake server bills a word a token; tiktoken counts " word" as one token too.
        assert est >= _price("gpt-4o", input_tokens=100, output_tokens=50)
        assert est <= _price("gpt-4o", input_tokens=120, output_tokens=50)

    def test_no_cap_reserves_the_model_output_limit(self) -> None:
        request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "n": 2}
        est = worst_case_usd("chat.completions", request, "gpt-4o-mini")
        assert est is not None
        limit = OUTPUT_LIMITS["gpt-4o-mini"]
        assert est >= _price("gpt-4o-mini", input_tokens=1, output_tokens=2 * limit)

    def test_responses_max_output_tokens_and_images(self) -> None:
        request = {
            "model": "gpt-4o",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this"},
                        {"type": "input_image", "image_url": "https://x/y.png"},
                    ],
                }
            ],
            "max_output_tokens": 10,
        }
        est = worst_case_usd("responses", request, "gpt-4o")
        assert est is not None and est >= _price("gpt-4o", input_tokens=1445 + 3, output_tokens=10)

    def test_images_embeddings_speech_unknown(self) -> None:
        assert worst_case_usd("images.generate", {"prompt": "cat", "quality": "hd"}, "dall-e-3") == Decimal(
            "0.12"
        )
        assert worst_case_usd(
            "images.generate", {"prompt": "cat", "size": "1024x1024", "n": 3}, "dall-e-3"
        ) == Decimal("0.24")  # hd 1024x1024 ($0.08) is the dearest quality when none is asked for
        emb = worst_case_usd("embeddings", {"input": ["a b c"] * 4}, "text-embedding-3-small")
        assert emb is not None and Decimal(0) < emb < Decimal("0.000001")
        speech = worst_case_usd("audio.speech", {"input": "x" * 1000}, "tts-1")
        assert speech is not None and speech > 0
        assert worst_case_usd("chat.completions", {"messages": []}, "no-such-model") is None


    def test_transcription_by_the_upload_length(self) -> None:
        """A 30-second WAV upload reserves a little over half a minute of whisper-1."""
        import io
        import wave

        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(b"\0\0" * 8000 * 30)
        est = worst_case_usd("audio.transcriptions", {}, "whisper-1", upload=buf.getvalue())
        assert est is not None and Decimal("0.003") <= est <= Decimal("0.0032")  # $0.006 a minute
        unknown = worst_case_usd("audio.transcriptions", {}, "whisper-1", upload=None)
        assert unknown == Decimal("0.18")  # 30 minutes when the length can't be read


class TestLedger:
    def test_grants_never_pass_the_limit(self, ledger_url: str) -> None:
        ledger = Ledger(ledger_url, timeout=10)
        try:
            a = ledger.exchange("k", 1000, "w", 0, False, (), want=600, need=600)
            b = ledger.exchange("k", 1000, "w", 0, False, (), want=600, need=500)
            assert (a.granted, b.granted) == (600, 0)  # 500 does not fit beside the 600 held
            c = ledger.exchange("k", 1000, "w", 0, False, (), want=600, need=300)
            assert c.granted == 400 and c.held == 1000  # all that is left, since it covers the need
            # A process reports 250 spent out of its lease and hands back the rest of it.
            d = ledger.exchange("k", 1000, "w", 0, False, [Report("w", 0, 250, 600, 350)])
            assert (d.spent, d.held) == (250, 400)
            other = ledger.exchange("k", 1000, "w2", 0, False, (), want=1000, need=1000)
            assert other.granted == 1000  # another window starts empty
            assert ledger.claim_alert("k", "w", "0.8") is True
            assert ledger.claim_alert("k", "w", "0.8") is False
            rows = {(r["key"], r["bucket"]): r for r in ledger.rows()}
            assert rows[("k", "w")]["spent"] == 250 and rows[("k", "w")]["limit_nano"] == 1000
        finally:
            ledger.close()

    def test_rolling_window_sums_its_steps(self, sqlite_url: str) -> None:
        ledger = Ledger(sqlite_url, timeout=10)
        try:
            ledger.exchange("r", 1000, "r100", 100, True, [Report("r100", 100, 400, 0)])
            ledger.exchange("r", 1000, "r105", 105, True, [Report("r105", 105, 300, 0)])
            now = ledger.exchange("r", 1000, "r112", 112, True, (), want=400, need=400)
            assert now.granted == 0 and now.spent == 700  # r100 is still inside (112 - 12)
            later = ledger.exchange("r", 1000, "r113", 113, True, (), want=400, need=400)
            assert later.granted == 400 and later.spent == 300  # r100 left the window
        finally:
            ledger.close()

    def test_unreachable_ledger_fails_within_the_timeout(self) -> None:
        ledger = Ledger("postgresql://postgres@127.0.0.1:9/none", timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(LedgerUnavailableError):
            ledger.exchange("k", 1000, "w", 0, False, (), want=10, need=10)
        assert time.monotonic() - t0 < 1.5
        ledger.close()


def _spend_until_blocked(manager: BudgetManager, per_call: Decimal, actual: int, limit: int = 10_000) -> int:
    calls = 0
    for _ in range(limit):
        try:
            res = manager.reserve(manager.matching("f", None, "gpt-4o", {"tenant": "a"}), per_call)
        except BudgetExceeded:
            return calls
        res.settle(actual)
        calls += 1
    return calls


class TestManager:
    def test_spend_stays_within_the_limit(self, ledger_url: str) -> None:
        m = BudgetManager([Budget(usd="0.01")], ledger_url=ledger_url, ledger_timeout=10, sync_interval=60)
        try:
            calls = _spend_until_blocked(m, Decimal("0.0003"), 200_000)
            assert calls == 49  # $0.0098 spent; the next $0.0003 worst case would pass $0.01
            m.sync()
            assert m.stats()["budget_blocked"] == 1
        finally:
            m.close()
        again = BudgetManager(
            [Budget(usd="0.01")], ledger_url=ledger_url, ledger_timeout=10, sync_interval=60
        )
        try:
            # A new process (a restart) sees the window's spend ($0.0098): no room for $0.0003.
            with pytest.raises(BudgetExceeded) as info:
                again.reserve(again.matching("f", None, None, None), Decimal("0.0003"))
            assert info.value.spent == Decimal("0.0098") and info.value.reserved == 0
            again.reserve(again.matching("f", None, None, None), Decimal("0.0002")).settle(0)
        finally:
            again.close()

    def test_error_releases_and_unknown_cost_keeps_the_estimate(self, sqlite_url: str) -> None:
        m = BudgetManager([Budget(usd="0.001")], ledger_url=sqlite_url, ledger_timeout=10, sync_interval=60)
        try:
            matched = m.matching("f", None, None, None)
            for _ in range(100):
                m.reserve(matched, Decimal("0.0005")).settle(0)  # released: nothing billed
            m.reserve(matched, Decimal("0.0005")).settle(None)  # kept at its estimate
            m.reserve(matched, Decimal("0.0005")).settle(None)
            with pytest.raises(BudgetExceeded) as info:
                m.reserve(matched, Decimal("0.0001"))
            assert info.value.key == "app|day" and info.value.limit == Decimal("0.001")
        finally:
            m.close()

    def test_tag_budgets_are_independent_per_value(self, sqlite_url: str) -> None:
        m = BudgetManager([Budget(tag="tenant", usd="0.001")], ledger_url=sqlite_url, ledger_timeout=10)
        try:
            for tenant in ("acme", "zeta"):
                matched = m.matching("f", None, None, {"tenant": tenant})
                m.reserve(matched, Decimal("0.0008")).settle(int(Decimal("0.0008") * NANO))
                with pytest.raises(BudgetExceeded, match=f"tenant={tenant}"):
                    m.reserve(matched, Decimal("0.0003"))
            assert m.matching("f", None, None, {}) == []  # untagged calls are outside
        finally:
            m.close()

    @pytest.mark.parametrize("fail", ["open", "closed"])
    def test_ledger_down(self, fail: str, caplog: pytest.LogCaptureFixture) -> None:
        b = Budget(usd="1", fail=fail)  # type: ignore[arg-type]
        m = BudgetManager([b], ledger_url="postgresql://postgres@127.0.0.1:9/none", ledger_timeout=0.3)
        try:
            matched = m.matching("f", None, None, None)
            if fail == "open":
                for _ in range(3):
                    m.reserve(matched, Decimal("0.01")).settle(10)
                assert m.stats()["budget_fail_open"] == 3
                warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
                assert len(warnings) == 1  # one warning, then counted
            else:
                with pytest.raises(BudgetExceeded, match="ledger unavailable"):
                    m.reserve(matched, Decimal("0.01"))
                assert m.stats()["budget_fail_closed"] == 1
        finally:
            m.close(0.5)


class _Hook(BaseHTTPRequestHandler):
    bodies: ClassVar[list[Any]] = []
    fail_first = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        type(self).bodies.append(body)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_server() -> Iterator[str]:
    _Hook.bodies = []
    _Hook.fail_first = 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


class TestAlerts:
    def test_each_threshold_once_per_window_across_managers(self, sqlite_url: str, hook_server: str) -> None:
        """Two managers (as two processes would) share the ledger: each threshold fires once,
        to the callback and (after one failed attempt, retried) the Slack-shaped webhook."""
        seen: list[Alert] = []
        managers = []
        for _ in range(2):
            m = BudgetManager(
                [Budget(feature="f", usd="0.01", action="alert", alert_at=(0.5, 0.8, 1.0))],
                ledger_url=sqlite_url,
                ledger_timeout=10,
                sync_interval=60,
            )
            m.alerts.callbacks.append(seen.append)
            m.alerts.add_webhook(hook_server, slack=True)
            managers.append(m)
        try:
            for _ in range(12):
                for m in managers:
                    m.reserve(m.matching("f", None, None, None), Decimal("0.001")).settle(500_000)
                    m.sync()
            assert sorted(a.threshold for a in seen) == [0.5, 0.8, 1.0]
            assert all(a.budget == "feature=f|day|alert" for a in seen)
            for m in managers:
                assert m.alerts.wait(10)
            assert sorted(b["threshold"] for b in _Hook.bodies) == [0.5, 0.8, 1.0]
            assert all(b["text"].startswith("tracked_openai budget") for b in _Hook.bodies)
        finally:
            for m in managers:
                m.close()


def test_a_call_never_waits_longer_than_the_ledger_timeout(tmp_path: Any) -> None:
    """The SQLite ledger is locked by another writer: 8 threads needing a lease each give up
    within the timeout (waiting behind each other's refill included) and fail open."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    m = BudgetManager([Budget(usd="1")], ledger_url=url, ledger_timeout=0.4, sync_interval=60)
    m.ledger.timeout = 10
    m.ledger.open()  # tables created before the lock is taken
    m.ledger.timeout = 0.4
    blocker = sqlite3.connect(f"{tmp_path}/ledger.sqlite", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:

        def one(_: int) -> float:
            t0 = time.monotonic()
            m.reserve(m.matching("f", None, None, None), Decimal("0.01")).settle(0)
            return time.monotonic() - t0

        with ThreadPoolExecutor(8) as pool:
            waits = list(pool.map(one, range(8)))
        assert max(waits) < 0.4 + 0.3, waits
        assert m.stats()["budget_fail_open"] == 8
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        m.close(1)

"""Hosted tools' fees (issue 19, item 1): dated entries in `tools`, per kind; an unknown kind is an
unpriced part (cost_status "partial"), never $0 and never an error."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tracked_openai.pricing import PricingError, load_price_book, parse_price_text, price_record
from tracked_openai.pricing.book import PriceBook
from tracked_openai.records import CallRecord, Cost, Usage, record_from_dict

D = Decimal
NOW = datetime(2026, 12, 7, tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return load_price_book()


def _record(model: str, tools: dict[str, int], details: dict | None = None, *, at: float = NOW, **usage):
    usage.setdefault("input_tokens", 1000)
    usage.setdefault("output_tokens", 100)
    return CallRecord(
        endpoint="responses",
        model=model,
        response_model=model,
        started_at=at,
        usage=Usage(tool_calls=tools, tool_details=details or {}, **usage),
        usage_source="response",
    )


def test_shipped_table_cites_openai_pricing_page_per_tool(book: PriceBook) -> None:
    assert {"web_search", "web_search_preview", "file_search", "code_interpreter", "image_generation"} <= set(
        book.tools
    )
    for tool in book.tools.values():
        assert "developers.openai.com/api/docs/pricing" in tool.source, tool.name


def test_web_search_preview_depends_on_model(book: PriceBook) -> None:
    # gpt-4.1-mini (non-reasoning) $25 / 1k; gpt-5 (reasoning) $10 / 1k. Three calls each.
    mini = _record("gpt-4.1-mini-2025-04-14", {"web_search_preview": 3})
    price_record(mini, book)
    assert mini.cost is not None and mini.cost.tool_usd == D("0.075")
    gpt5 = _record("gpt-5", {"web_search_preview": 3})
    price_record(gpt5, book)
    assert gpt5.cost is not None and gpt5.cost.tool_usd == D("0.03")
    # gpt-5: 1000 x 1.25 + 100 x 10 = 2250 per 1M, plus the fee.
    assert gpt5.cost.total_usd == D("0.00225") + D("0.03")


def test_unknown_tool_is_an_unpriced_part(book: PriceBook) -> None:
    rec = _record("gpt-5", {"file_search": 2, "quantum_oracle": 1})
    price_record(rec, book)
    assert rec.cost_status == "partial"
    assert rec.cost is not None and rec.cost.tool_usd == D("0.005")  # file search priced
    assert rec.cost.total_usd == D("0.00225") + D("0.005")
    assert "tools unpriced: quantum_oracle (no price entry)" in (rec.pricing_rule or "")


def test_only_unknown_tools_leave_tool_usd_empty(book: PriceBook) -> None:
    rec = _record("gpt-5", {"quantum_oracle": 1})
    price_record(rec, book)
    assert rec.cost_status == "partial"
    assert rec.cost is not None and rec.cost.tool_usd is None and rec.cost.total_usd == D("0.00225")


def test_chat_search_model_without_a_rate_is_unpriced_part(book: PriceBook) -> None:
    rec = _record("gpt-4o", {"chat_search": 1})
    rec.endpoint = "chat.completions"
    price_record(rec, book)
    assert rec.cost_status == "partial" and "chat_search x1 (no price for model" in (rec.pricing_rule or "")
    ok = _record("gpt-5-search-api-2025-10-14", {"chat_search": 1})
    price_record(ok, book)
    assert ok.cost_status == "priced" and ok.cost is not None and ok.cost.tool_usd == D("0.01")


@pytest.mark.parametrize(
    ("day", "memory", "fee", "how"),
    [
        # One container each; the dated entries of code_interpreter.
        (datetime(2026, 1, 10, tzinfo=UTC), "1g", D("0.03"), "until 2026-03-31"),
        (datetime(2026, 4, 10, tzinfo=UTC), "4g", D("0.12"), "until 2026-06-02"),
        (datetime(2026, 7, 10, tzinfo=UTC), "4g", D("0.030"), "5-minute minimum"),  # 5 x $0.006
    ],
)
def test_code_interpreter_dated_entries(
    book: PriceBook, day: datetime, memory: str, fee: Decimal, how: str
) -> None:
    rec = _record(
        "gpt-5",
        {"code_interpreter": 3},
        {"code_interpreter": {"containers": 1, "memory_limit": memory}},
        at=day.timestamp(),
    )
    price_record(rec, book)
    assert rec.cost is not None and rec.cost.tool_usd == fee
    assert how in (rec.pricing_rule or "")


def test_code_interpreter_unknown_memory_is_unpriced_part(book: PriceBook) -> None:
    rec = _record(
        "gpt-5", {"code_interpreter": 1}, {"code_interpreter": {"containers": 1, "memory_limit": "2g"}}
    )
    price_record(rec, book)
    assert rec.cost_status == "partial" and "memory 2g" in (rec.pricing_rule or "")


def test_image_generation_tokens_win_over_per_image(book: PriceBook) -> None:
    # tool_usage.image_gen: 30 text input tokens at gpt-image-1's $5, 1056 image output tokens at $40.
    tokens = {"input_tokens": 30, "image_input_tokens": 0, "output_tokens": 1056, "image_output_tokens": 1056}
    detail = {"model": "gpt-image-1", "images": {"high/1024x1024": 1}, "tokens": tokens}
    rec = _record("gpt-5", {"image_generation": 1}, {"image_generation": detail})
    price_record(rec, book)
    assert rec.cost is not None and rec.cost.tool_usd == (30 * D(5) + 1056 * D(40)) / 1_000_000


def test_image_generation_unknown_size_or_model(book: PriceBook) -> None:
    rec = _record(
        "gpt-5",
        {"image_generation": 1},
        {"image_generation": {"model": "gpt-image-1", "images": {"auto/auto": 1}}},
    )
    price_record(rec, book)
    assert rec.cost_status == "partial" and "size=auto" in (rec.pricing_rule or "")
    rec = _record("gpt-5", {"image_generation": 1}, {"image_generation": {"model": None, "images": {}}})
    price_record(rec, book)
    assert rec.cost_status == "partial" and "names no image model" in (rec.pricing_rule or "")


def test_tool_usage_round_trips_through_to_dict() -> None:
    rec = _record("gpt-5", {"file_search": 1})
    rec.cost = Cost(D("0.1"), D("0.2"), D("0.3025"), tool_usd=D("0.0025"))
    back = record_from_dict(rec.to_dict())
    assert isinstance(back, CallRecord)
    assert back.usage.tool_calls == {"file_search": 1}
    assert back.cost is not None and back.cost.tool_usd == D("0.0025")
    # A record without tools keeps the dict it always had.
    assert "tool_calls" not in Usage(input_tokens=1).to_dict()
    assert "tool_usd" not in Cost(D(1), D(1), D(2)).to_dict()


def test_tool_entry_schema() -> None:
    text = """
version: t
models: {m: {source: s, input: 1, output: 1}}
tools:
  x: {source: s, per_1k_calls: 1, per_container: {1g: 1}}
"""
    with pytest.raises(PricingError, match="exactly one unit"):
        parse_price_text(text)
    with pytest.raises(PricingError, match=r"tools\.x\.per_container: .*>= 0"):
        parse_price_text(text.replace("per_1k_calls: 1, per_container: {1g: 1}", "per_container: {1g: -1}"))
    ok = parse_price_text(text.replace(", per_container: {1g: 1}", ""))
    assert ok.tools["x"].per_1k_calls == 1


def _stored_run(rec: CallRecord, *, keep_tag: bool = True):
    from types import SimpleNamespace

    from tracked_openai.mlflow.runs import run_fields

    _, tags, metrics, params = run_fields(rec)
    if not keep_tag:
        tags.pop("tool_usage")
    return SimpleNamespace(
        data=SimpleNamespace(tags=tags, metrics=metrics, params=params),
        info=SimpleNamespace(run_id="r1", start_time=int(rec.started_at * 1000)),
    )


def test_a_stored_call_run_is_priced_again_with_its_tools(book: PriceBook) -> None:
    from tracked_openai.reports.call_runs import call_from_run

    detail = {"model": "gpt-image-1", "images": {"high/1536x1024": 1}}
    rec = _record("gpt-5", {"image_generation": 1, "file_search": 2}, {"image_generation": detail})
    price_record(rec, book)
    assert rec.cost is not None and rec.cost.tool_usd == D("0.25") + D("0.005")
    again = call_from_run(_stored_run(rec))
    assert (
        again.usage.tool_calls == rec.usage.tool_calls and again.usage.tool_details == rec.usage.tool_details
    )
    price_record(again, book)
    assert again.cost == rec.cost and again.cost_status == "priced"
    # A run without the tag (counts as metrics only): what depends on more is unpriced, not guessed.
    counts_only = call_from_run(_stored_run(rec, keep_tag=False))
    price_record(counts_only, book)
    assert counts_only.cost_status == "partial"
    assert counts_only.cost is not None and counts_only.cost.tool_usd == D("0.005")

"""Cross-check against an independent source: the ``genai-prices`` package (test-only dependency,
pydantic/genai-prices 0.2.3, its OpenAI tiers verified 2026-10-12/14 on OpenAI's pricing page).

Every model both tables know is priced by both for the same usage (text, cached, output; image
output tokens for image models; a >272k prompt where we have long-context rates), in every service
tier both list, and at a date inside each of our history periods. Totals must be equal to the last
digit, except for the disagreements listed below, each with its reason. A new disagreement (or a
listed one that went away) fails the test, so the list stays true.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers.pricing import reset_price_book
from tracked_openai import pricing
from tracked_openai.pricing import load_price_book, price_record
from tracked_openai.records import CallRecord, Usage

genai_prices = pytest.importorskip(
    "genai_prices", reason="genai-prices is a dev dependency (pip install -e .[dev])"
)

AT = datetime(2026, 11, 1, tzinfo=UTC)
TEXT = {"input_tokens": 10_000, "cached_input_tokens": 2_000, "output_tokens": 3_000}
LONG = {"input_tokens": 300_000, "cached_input_tokens": 100_000, "output_tokens": 3_000}

# (our model key, tier, scenario) -> why the totals differ. Reviewed one by one.
KNOWN: dict[tuple[str, str, str], str] = {
    ("ft:gpt-4o-2024-08-06", "standard", "text"): "we bill cached input at 1.875 (litellm); genai-prices lists no cached rate for fine-tunes",  # noqa: E501
    ("ft:gpt-4o-mini-2024-07-18", "standard", "text"): "cached 0.15 (litellm) vs none in genai-prices, as above",  # noqa: E501
    ("gpt-4o-search-preview", "standard", "text"): "cached 1.25 (litellm + MLflow agree) vs none in genai-prices",  # noqa: E501
    ("gpt-5.4", "flex", "text"): "cached 0.125 = 50% of 0.25 vs genai-prices' rounded 0.13 (prices.md disagreement 11)",  # noqa: E501
    ("gpt-5.4", "batch", "text"): "cached 0.125 vs 0.13, rounding as above",
    ("o4-mini", "flex", "text"): "cached 0.1375 = 50% of 0.275 vs the rounded 0.138",
    ("gpt-image-1.5", "batch", "text"): "cached text 0.625 vs the rounded 0.63",
    ("gpt-image-1", "batch", "text"): "cached text 0.625 vs the rounded 0.63",
    ("gpt-realtime-2", "standard", "text"): "DISPUTED text output: we chose 16 (litellm + MLflow); genai-prices groups it with gpt-realtime-2.1 at 24",  # noqa: E501
    ("gpt-5.4", "priority", "long"): "genai-prices has no long-context priority rate and bills >272k at the flat priority rate; we scale the long-context rates by the tier (OpenAI excludes >128k prompts from priority, so this should not occur)",  # noqa: E501
    ("gpt-5.5", "priority", "long"): "as gpt-5.4 priority above",
    ("gpt-5.5-pro", "flex", "long"): "genai-prices' pro flex/batch variants have no long-context tiers; we scale the standard 2x/1.5x long-context rates by the tier, as genai-prices itself does for gpt-5.5",  # noqa: E501
    ("gpt-5.5-pro", "batch", "long"): "as gpt-5.5-pro flex above",
    ("gpt-4o", "standard", "until 2024-10-02"): "genai-prices prices the alias at 2.50/10 throughout; the alias served gpt-4o-2024-05-13 at 5/15 until 2024-10-02 (prices.md history)",  # noqa: E501
    ("o1-mini", "standard", "until 2025-01-31"): "genai-prices has no o1-mini history; we keep the 3/1.50/12 launch price until the cut seen on OpenAI's page by 2025-01-31 (exact date unverified)",  # noqa: E501
    ("o3", "standard", "until 2025-06-10"): "launch cached input 2.50 (ours) vs 0.50 in genai-prices' pre-cut row (prices.md disagreement 5)",  # noqa: E501
}  # fmt: skip


@pytest.fixture(scope="module")
def book() -> Iterator[pricing.PriceBook]:
    book = load_price_book()
    yield book


@pytest.fixture(autouse=True)
def _use(book: pricing.PriceBook) -> Iterator[None]:
    reset_price_book(book)
    yield
    reset_price_book()


def _ours(model: str, tier: str, usage: dict[str, int], at: datetime) -> Decimal | None:
    record = CallRecord(
        started_at=at.timestamp(),
        endpoint="chat.completions",
        model=model,
        service_tier=None if tier == "standard" else tier,
        usage=Usage(**usage),
    )
    price_record(record)
    return None if record.cost is None else record.cost.total_usd


def _theirs(model: str, tier: str, usage: dict[str, int], at: datetime) -> tuple[Decimal, Any]:
    context = None
    if tier in ("flex", "priority"):
        context = {"service_tier": tier}
    elif tier == "batch":
        context = {"processing": "batch"}
    result = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage["input_tokens"],
            cache_read_tokens=usage["cached_input_tokens"],
            output_tokens=usage["output_tokens"],
            output_image_tokens=usage.get("image_output_tokens"),
        ),
        model_ref=model,
        provider_id="openai",
        genai_request_timestamp=at,
        price_context=context,
    )
    return result.total_price, result.model


def _comparisons(book: pricing.PriceBook) -> Iterator[tuple[str, str, str, dict[str, int], datetime]]:
    for name, entry in sorted(book.models.items()):
        if entry.input is None or (entry.output is None and entry.image_output is None):
            continue
        try:
            _, their_model = _theirs(name, "standard", TEXT, AT)
        except LookupError:
            continue  # genai-prices does not know this model
        variants = {next(iter(v.when.items())) for v in their_model.price_variants or []}
        tiers = ["standard"] + [
            t
            for t in ("flex", "priority", "batch")
            if t in (entry.tiers or {})
            and (("service_tier", t) in variants or (t == "batch" and ("processing", "batch") in variants))
        ]
        image = "image" in name
        for tier in tiers:
            for label, usage in (("text", TEXT), ("long", LONG)):
                if label == "long" and entry.long_context is None:
                    continue
                if image:
                    usage = {**usage, "image_output_tokens": usage["output_tokens"]}
                yield name, tier, label, usage, AT
        for period in entry.history:
            until = datetime(period.until.year, period.until.month, period.until.day, tzinfo=UTC)
            at = until - timedelta(days=1)
            yield name, "standard", f"until {period.until.isoformat()}", TEXT, at
            if period.long_context is not None:
                yield name, "standard", f"until {period.until.isoformat()} long", LONG, at


def test_prices_agree_with_genai_prices_except_documented(book: pricing.PriceBook) -> None:
    compared = 0
    disagree: dict[tuple[str, str, str], tuple[Decimal | None, Decimal]] = {}
    for name, tier, label, usage, at in _comparisons(book):
        ours = _ours(name, tier, usage, at)
        theirs, _ = _theirs(name, tier, usage, at)
        compared += 1
        if ours != theirs:
            disagree[(name, tier, label)] = (ours, theirs)
    assert compared > 150  # the models both know, in every shared tier
    unexpected = {k: v for k, v in disagree.items() if k not in KNOWN}
    assert unexpected == {}
    stale = sorted(set(KNOWN) - set(disagree))
    assert stale == []


def test_the_known_disagreements_are_what_the_reasons_say(book: pricing.PriceBook) -> None:
    # Spot-check two reasons with exact figures, so the list cannot hide a different problem.
    # gpt-realtime-2: 8000 * 4 + 2000 * 0.4 + 3000 * 16 = 32000 + 800 + 48000 = 80800/1M (ours)
    #                                   ... + 3000 * 24 = 32000 + 800 + 72000 = 104800/1M (theirs)
    assert _ours("gpt-realtime-2", "standard", TEXT, AT) == Decimal("0.0808")
    assert _theirs("gpt-realtime-2", "standard", TEXT, AT)[0] == Decimal("0.1048")
    # o3 before the cut: 8000 * 10 + 2000 * 2.5 + 3000 * 40 = 80000 + 5000 + 120000 = 205000/1M
    early = datetime(2025, 5, 1, tzinfo=UTC)
    assert _ours("o3", "standard", TEXT, early) == Decimal("0.205")
    # genai-prices: 8000 * 10 + 2000 * 0.5 + 3000 * 40 = 201000/1M
    assert _theirs("o3", "standard", TEXT, early)[0] == Decimal("0.201")

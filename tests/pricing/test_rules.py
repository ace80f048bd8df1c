"""Unit tests of the pricing rules on hand-built call records (no client): effective dates,
snapshot fallback, fine-tunes, Azure, tiers, long context, units, unknown models. Every expected
cost is worked out by hand from ``pricing/openai.yaml`` (rates in USD per 1M tokens)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers.pricing import reset_price_book
from tracked_openai import pricing
from tracked_openai.pricing import get_price_book, price_record
from tracked_openai.records import CallRecord, Usage


@pytest.fixture(autouse=True)
def _fresh_book() -> Iterator[None]:
    reset_price_book()
    yield
    reset_price_book()


def ts(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


def priced(
    model: str | None,
    *,
    response_model: str | None = None,
    at: str = "2026-11-01",
    tier: str | None = None,
    provider: str = "openai",
    endpoint: str = "chat.completions",
    params: dict[str, Any] | None = None,
    usage_source: str = "response",
    **usage: Any,
) -> CallRecord:
    record = CallRecord(
        started_at=ts(at),
        endpoint=endpoint,
        provider=provider,
        model=model,
        response_model=response_model,
        service_tier=tier,
        params=params or {},
        usage=Usage(**usage),
        usage_source=usage_source,  # type: ignore[arg-type]
    )
    price_record(record)
    return record


def costs(record: CallRecord) -> tuple[Decimal, Decimal, Decimal]:
    assert record.cost is not None, record.pricing_rule
    return record.cost.input_usd, record.cost.output_usd, record.cost.total_usd


M = Decimal(1_000_000)


# ---------------------------------------------------------------- effective dates


def test_gpt4o_alias_costs_5_15_until_2024_10_02() -> None:
    # 1000 in * 5 = 5000/1M; 100 out * 15 = 1500/1M
    r = priced("gpt-4o", at="2024-10-01T23:59:59", input_tokens=1000, output_tokens=100)
    assert costs(r) == (Decimal("0.005"), Decimal("0.0015"), Decimal("0.0065"))
    assert r.pricing_rule == "exact; until 2024-10-02"


def test_gpt4o_alias_costs_2_50_10_from_2024_10_02() -> None:
    # 1000 in * 2.5 = 2500/1M; 100 out * 10 = 1000/1M
    r = priced("gpt-4o", at="2024-10-02T00:00:00", input_tokens=1000, output_tokens=100)
    assert costs(r) == (Decimal("0.0025"), Decimal("0.001"), Decimal("0.0035"))
    assert r.pricing_rule == "exact"


def test_gpt4o_2024_08_06_never_inherits_the_alias_history() -> None:
    # listed on its own: $2.50/$10 since its launch. 1000 * 2.5 = 2500/1M; 100 * 10 = 1000/1M
    r = priced(
        "gpt-4o", response_model="gpt-4o-2024-08-06", at="2024-09-01", input_tokens=1000, output_tokens=100
    )
    assert costs(r)[2] == Decimal("0.0035")
    assert r.pricing_rule == "exact"


def test_a_record_without_a_start_time_gets_the_current_price() -> None:
    record = CallRecord(endpoint="chat.completions", model="gpt-4o", usage=Usage(input_tokens=1000))
    assert record.started_at == 0.0
    price_record(record)
    assert costs(record)[0] == Decimal("0.0025")  # 1000 * 2.50, not the 2024 $5
    assert record.pricing_rule == "exact"


def test_o3_launch_price_until_2025_06_10() -> None:
    # 10 / cached 2.50 / 40: in (2000 - 500) * 10 + 500 * 2.5 = 15000 + 1250 = 16250/1M
    # out 1000 * 40 = 40000/1M
    r = priced(
        "o3",
        response_model="o3-2025-04-16",
        at="2025-06-09T12:00:00",
        input_tokens=2000,
        cached_input_tokens=500,
        output_tokens=1000,
        reasoning_tokens=800,
    )
    assert costs(r) == (Decimal("0.01625"), Decimal("0.04"), Decimal("0.05625"))
    assert r.pricing_rule == "snapshot->o3; until 2025-06-10"


def test_o3_after_the_2025_06_10_cut() -> None:
    # 2 / cached 0.50 / 8: in 1500 * 2 + 500 * 0.5 = 3000 + 250 = 3250/1M; out 1000 * 8 = 8000/1M
    r = priced(
        "o3",
        response_model="o3-2025-04-16",
        at="2025-06-10",
        input_tokens=2000,
        cached_input_tokens=500,
        output_tokens=1000,
        reasoning_tokens=800,
    )
    assert costs(r) == (Decimal("0.00325"), Decimal("0.008"), Decimal("0.01125"))
    assert r.pricing_rule == "snapshot->o3"


def test_history_tiers_are_not_borrowed_from_the_current_price() -> None:
    # o3's launch period lists no priority rates: unpriced rather than today's 3.5/14.
    r = priced("o3", at="2025-05-01", tier="priority", input_tokens=10, output_tokens=10)
    assert r.cost is None and r.cost_status == "unpriced"
    assert r.pricing_rule == "exact; until 2025-06-10; no priority tier price"


def test_gpt56_terra_cut_on_2026_07_30() -> None:
    # before: 2.5 / 15 -> 1000 * 2.5 + 100 * 15 = 2500 + 1500 = 4000/1M; after: 2 / 12 -> 2000 + 1200
    before = priced("gpt-5.6-terra", at="2026-07-29", input_tokens=1000, output_tokens=100)
    after = priced("gpt-5.6-terra", at="2026-07-30", input_tokens=1000, output_tokens=100)
    assert costs(before)[2] == Decimal("0.004")
    assert costs(after)[2] == Decimal("0.0032")


# ---------------------------------------------------------------- resolution


@pytest.mark.parametrize(
    ("served", "key", "rule"),
    [
        ("gpt-4o-2024-11-20", "gpt-4o", "snapshot->gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13", "exact"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", "snapshot->gpt-4o-mini"),
        ("gpt-4-0314", "gpt-4", "snapshot->gpt-4"),
        ("gpt-3.5-turbo-1106", "gpt-3.5-turbo-1106", "exact"),
        ("gpt-3.5-turbo-0613", "gpt-3.5-turbo-0613", "exact"),
        ("o3-mini-2025-01-31", "o3-mini", "snapshot->o3-mini"),
        ("gpt-5.5-2026-04-23", "gpt-5.5", "snapshot->gpt-5.5"),
        ("openai/gpt-4.1", "gpt-4.1", "exact"),
        ("ft:gpt-4o-2024-08-06:acme::B1x2", "ft:gpt-4o-2024-08-06", "fine-tune->ft:gpt-4o-2024-08-06"),
        (
            "ft:gpt-4.1-2025-04-14:acme:v2:Ab3:ckpt-step-40",
            "ft:gpt-4.1-2025-04-14",
            "fine-tune->ft:gpt-4.1-2025-04-14",
        ),
        ("ft:gpt-4o-2024-11-20:acme::C9", "ft:gpt-4o", "fine-tune+snapshot->ft:gpt-4o"),
        ("ft:gpt-3.5-turbo-0125:acme::Z", "ft:gpt-3.5-turbo", "fine-tune+snapshot->ft:gpt-3.5-turbo"),
        (
            "gpt-4o-mini-2024-07-18.ft-0123abcd",
            "ft:gpt-4o-mini-2024-07-18",
            "fine-tune->ft:gpt-4o-mini-2024-07-18",
        ),
        ("gpt-35-turbo", "gpt-3.5-turbo", "azure-spelling->gpt-3.5-turbo"),
        ("gpt-35-turbo-16k", "gpt-3.5-turbo-16k", "azure-spelling->gpt-3.5-turbo-16k"),
        ("gpt-35-turbo-0125", "gpt-3.5-turbo-0125", "azure-spelling->gpt-3.5-turbo-0125"),
    ],
)
def test_resolution_rules(served: str, key: str, rule: str) -> None:
    assert get_price_book().resolve(served) == (key, rule)


def test_snapshot_priced_differently_uses_its_own_price() -> None:
    # gpt-4o-2024-05-13: 5 / 15 (not the alias's 2.50 / 10). 1000 * 5 + 100 * 15 = 6500/1M
    r = priced("gpt-4o", response_model="gpt-4o-2024-05-13", input_tokens=1000, output_tokens=100)
    assert costs(r)[2] == Decimal("0.0065")


def test_fine_tune_is_priced_above_its_base() -> None:
    # ft:gpt-4o-2024-08-06: 3.75 / cached 1.875 / 15.
    # in (1000 - 400) * 3.75 + 400 * 1.875 = 2250 + 750 = 3000/1M; out 200 * 15 = 3000/1M
    r = priced(
        "ft:gpt-4o-2024-08-06:acme::B1x2",
        response_model="ft:gpt-4o-2024-08-06:acme::B1x2",
        input_tokens=1000,
        cached_input_tokens=400,
        output_tokens=200,
    )
    assert costs(r) == (Decimal("0.003"), Decimal("0.003"), Decimal("0.006"))


def test_fine_tune_of_an_unlisted_base_is_unpriced() -> None:
    r = priced("ft:gpt-9-turbo:acme::X", input_tokens=10, output_tokens=10)
    assert r.cost is None and r.cost_status == "unpriced"


def test_azure_never_prices_the_deployment_name() -> None:
    # The deployment is called "gpt-4o" but served gpt-4o-mini: price the served model.
    # gpt-4o-mini 0.15 / 0.60: 1000 * 0.15 = 150/1M; 100 * 0.6 = 60/1M
    r = priced(
        "gpt-4o",
        response_model="gpt-4o-mini-2024-07-18",
        provider="azure",
        input_tokens=1000,
        output_tokens=100,
    )
    assert costs(r) == (Decimal("0.00015"), Decimal("0.00006"), Decimal("0.00021"))
    assert r.pricing_rule == "snapshot->gpt-4o-mini"


def test_azure_without_a_served_model_is_unpriced(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tracked_openai")
    r = priced("gpt-4o", provider="azure", input_tokens=1000, output_tokens=100)
    assert r.cost is None and r.cost_status == "unpriced"
    assert r.pricing_rule == "no served model in the response"
    assert "azure deployment gpt-4o" in caplog.text


# ---------------------------------------------------------------- unknown model


def test_unknown_model_is_unpriced_never_zero_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tracked_openai")
    first = priced("gpt-imaginary", input_tokens=10, output_tokens=10)
    second = priced("gpt-imaginary", input_tokens=20, output_tokens=20)
    other = priced("another-imaginary", input_tokens=1, output_tokens=1)
    for r in (first, second, other):
        assert r.cost is None
        assert r.cost_status == "unpriced"
        assert r.pricing_version == get_price_book().version
    warnings = [m for m in caplog.messages if "cannot price model" in m]
    assert warnings == [
        "tracked_openai: cannot price model 'gpt-imaginary' (unknown model); cost left empty",
        "tracked_openai: cannot price model 'another-imaginary' (unknown model); cost left empty",
    ]


def test_missing_usage_is_no_usage_not_zero() -> None:
    r = priced("gpt-4o")
    assert r.cost is None and r.cost_status == "no_usage"


def test_bad_usage_never_raises() -> None:
    r = priced("gpt-4o", input_tokens="many", output_tokens=1)  # a corrupt record
    assert r.cost is None and r.cost_status == "unpriced"
    assert r.pricing_rule == "error: TypeError"


def test_estimated_usage_is_flagged() -> None:
    # gpt-4o 2.5 / 10: 100 * 2.5 = 250/1M; 10 * 10 = 100/1M
    r = priced("gpt-4o", usage_source="estimated", input_tokens=100, output_tokens=10)
    assert r.cost_status == "estimated"
    assert costs(r)[2] == Decimal("0.00035")


# ---------------------------------------------------------------- tiers


def test_batch_tier_without_a_cached_rate_keeps_the_standard_cached_rate() -> None:
    # gpt-4.1 batch 1 / 4 lists no cached rate: cached keeps the standard 0.50 (OpenAI's batch
    # table publishes none; genai-prices does the same).
    # in 600 * 1 + 400 * 0.5 = 800/1M; out 100 * 4 = 400/1M
    r = priced("gpt-4.1", tier="batch", input_tokens=1000, cached_input_tokens=400, output_tokens=100)
    assert costs(r) == (Decimal("0.0008"), Decimal("0.0004"), Decimal("0.0012"))
    assert r.pricing_rule == "exact; tier=batch"


def test_tier_cached_rate_never_exceeds_the_tier_input_rate() -> None:
    table = pricing.parse_price_text(
        "version: t\nmodels:\n  m:\n    source: s\n    input: 1\n    cached_input: 0.9\n"
        "    output: 2\n    tiers:\n      batch: {input: 0.5, output: 1}\n"
    )
    reset_price_book(pricing.PriceBook([("t", table)]))
    # batch cached = min(standard cached 0.9, batch input 0.5) = 0.5: 1000 * 0.5 = 500/1M
    r = priced("m", tier="batch", input_tokens=1000, cached_input_tokens=1000)
    assert costs(r)[0] == Decimal("0.0005")


@pytest.mark.parametrize("tier", [None, "auto", "default", "standard"])
def test_standard_tier_spellings(tier: str | None) -> None:
    # gpt-4.1 2 / 8: 1000 * 2 + 100 * 8 = 2800/1M
    r = priced("gpt-4.1", tier=tier, input_tokens=1000, output_tokens=100)
    assert costs(r)[2] == Decimal("0.0028")
    assert r.pricing_rule == "exact"


def test_fast_is_billed_as_priority() -> None:
    # gpt-4.1 priority 3.5 / 14: 1000 * 3.5 + 100 * 14 = 4900/1M
    r = priced("gpt-4.1", tier="fast", input_tokens=1000, output_tokens=100)
    assert costs(r)[2] == Decimal("0.0049")
    assert r.pricing_rule == "exact; tier=priority"


def test_unknown_tier_is_unpriced() -> None:
    r = priced("gpt-4.1", tier="scale", input_tokens=1000, output_tokens=100)
    assert r.cost is None and r.cost_status == "unpriced"
    assert r.pricing_rule == "exact; no scale tier price"


def test_o3_flex_and_priority() -> None:
    # flex 1 / 0.25 / 4: in 900 * 1 + 100 * 0.25 = 925/1M; out 50 * 4 = 200/1M
    flex = priced("o3", tier="flex", input_tokens=1000, cached_input_tokens=100, output_tokens=50)
    assert costs(flex) == (Decimal("0.000925"), Decimal("0.0002"), Decimal("0.001125"))
    # priority 3.5 / 0.875 / 14: in 900 * 3.5 + 100 * 0.875 = 3150 + 87.5 = 3237.5/1M; out 50 * 14 = 700/1M
    prio = priced("o3", tier="priority", input_tokens=1000, cached_input_tokens=100, output_tokens=50)
    assert costs(prio) == (Decimal("0.0032375"), Decimal("0.0007"), Decimal("0.0039375"))


def test_gpt55_priority_is_the_disputed_decision_2_5x() -> None:
    # DISPUTED: 12.50 / 1.25 / 75 chosen. in 1000 * 12.5 = 12500/1M; out 100 * 75 = 7500/1M
    r = priced("gpt-5.5", tier="priority", input_tokens=1000, output_tokens=100)
    assert costs(r) == (Decimal("0.0125"), Decimal("0.0075"), Decimal("0.02"))


def test_gpt56_sol_before_and_after_the_2026_08_21_cut() -> None:
    # the recorded chat_gpt56_cached_4012 call (2026-07-15): 5 / 0.50 / 30
    # in 8 * 5 + 4012 * 0.5 = 40 + 2006 = 2046/1M; out 4 * 30 = 120/1M
    before = priced(
        "gpt-5.6-sol", at="2026-07-15", input_tokens=4020, cached_input_tokens=4012, output_tokens=4
    )
    assert costs(before) == (Decimal("0.002046"), Decimal("0.00012"), Decimal("0.002166"))
    assert before.pricing_rule == "exact; until 2026-08-21"
    # from 2026-08-21: 4 / 0.40 / 20 -> 8 * 4 + 4012 * 0.4 = 1636.8/1M; 4 * 20 = 80/1M
    after = priced(
        "gpt-5.6-sol", at="2026-08-21", input_tokens=4020, cached_input_tokens=4012, output_tokens=4
    )
    assert costs(after) == (Decimal("0.0016368"), Decimal("0.00008"), Decimal("0.0017168"))
    # pre-cut flex (litellm 50%): 2.5 / 15 -> 1000 * 2.5 + 100 * 15 = 4000/1M
    flex = priced("gpt-5.6", at="2026-08-01", tier="flex", input_tokens=1000, output_tokens=100)
    assert costs(flex)[2] == Decimal("0.004")
    assert flex.pricing_rule == "exact; until 2026-08-21; tier=flex"


# ---------------------------------------------------------------- long context


def test_long_context_whole_request_at_the_higher_rate_gpt55() -> None:
    # gpt-5.5 > 272k: 10 / cached 1 / 45 for the whole request.
    # in (280000 - 80000) * 10 + 80000 * 1 = 2,000,000 + 80,000 = 2,080,000/1M; out 1000 * 45 = 45,000/1M
    r = priced("gpt-5.5", input_tokens=280_000, cached_input_tokens=80_000, output_tokens=1000)
    assert costs(r) == (Decimal("2.08"), Decimal("0.045"), Decimal("2.125"))
    assert r.pricing_rule == "exact; long-context"


def test_long_context_in_flex_scales_with_the_tier() -> None:
    # gpt-5.4 flex is 1.25 / 2.50 = half of standard, so flex long context = 2.5 / 0.25 / 11.25.
    # in 300000 * 2.5 = 750,000/1M; out 1000 * 11.25 = 11,250/1M
    r = priced("gpt-5.4", tier="flex", input_tokens=300_000, output_tokens=1000)
    assert costs(r) == (Decimal("0.75"), Decimal("0.01125"), Decimal("0.76125"))
    assert r.pricing_rule == "exact; tier=flex; long-context"


def test_cache_write_long_context_gpt56() -> None:
    # gpt-5.6 > 272k (since 2026-08-21): input 8, cache write 10, output 30.
    # in (300000 - 100000) * 8 + 100000 * 10 = 1,600,000 + 1,000,000 = 2,600,000/1M; out 10 * 30 = 300/1M
    r = priced("gpt-5.6", input_tokens=300_000, cache_write_tokens=100_000, output_tokens=10)
    assert costs(r) == (Decimal("2.6"), Decimal("0.0003"), Decimal("2.6003"))


def test_explicit_tier_long_context_gpt56_batch() -> None:
    # batch > 272k, listed explicitly: 4 / 0.40 / 15. in 300000 * 4 = 1,200,000/1M; out 1000 * 15
    r = priced("gpt-5.6", tier="batch", input_tokens=300_000, output_tokens=1000)
    assert costs(r) == (Decimal("1.2"), Decimal("0.015"), Decimal("1.215"))
    assert r.pricing_rule == "exact; tier=batch; long-context"


# ---------------------------------------------------------------- other units


def test_realtime_audio_and_cached_audio() -> None:
    # gpt-4o-realtime-preview-2024-10-01 (launch audio price): text 5 / 20, audio 100 / 200.
    # in 100 text * 5 + 50 audio * 100 = 500 + 5000 = 5500/1M; out 10 text * 20 + 40 audio * 200 = 200 + 8000
    r = priced(
        "gpt-4o-realtime-preview-2024-10-01",
        input_tokens=150,
        audio_input_tokens=50,
        output_tokens=50,
        audio_output_tokens=40,
    )
    assert costs(r) == (Decimal("0.0055"), Decimal("0.0082"), Decimal("0.0137"))


def test_gpt4o_mini_tts_tokens() -> None:
    # text input 0.60 (the resolved dispute), audio output 12: 20 * 0.6 = 12/1M; 1000 * 12 = 12000/1M
    r = priced(
        "gpt-4o-mini-tts",
        endpoint="audio.speech",
        input_tokens=20,
        output_tokens=1000,
        audio_output_tokens=1000,
        characters=80,
    )
    assert costs(r) == (Decimal("0.000012"), Decimal("0.012"), Decimal("0.012012"))
    assert r.pricing_rule == "exact"


def test_gpt4o_mini_tts_usage_without_a_modality_split() -> None:
    # speech.audio.done usage may give plain input/output tokens: output is audio all the same ($12).
    # 20 * 0.6 = 12/1M; 1000 * 12 = 12000/1M
    r = priced("gpt-4o-mini-tts", endpoint="audio.speech", input_tokens=20, output_tokens=1000, characters=80)
    assert costs(r) == (Decimal("0.000012"), Decimal("0.012"), Decimal("0.012012"))


def test_gpt4o_mini_tts_with_characters_only_is_unpriced() -> None:
    r = priced("gpt-4o-mini-tts", endpoint="audio.speech", characters=80)
    assert r.cost is None and r.pricing_rule == "exact; no per-character price"


def test_tts1_per_character() -> None:
    # tts-1 $15 / 1M characters: 1000 * 15 = 15000/1M
    r = priced("tts-1", endpoint="audio.speech", characters=1000)
    assert costs(r) == (Decimal("0.015"), Decimal("0"), Decimal("0.015"))


def test_whisper_per_minute_fraction() -> None:
    # $0.006 / min: 8.47 s -> 8.47 * 0.006 / 60 = 0.000847
    r = priced("whisper-1", endpoint="audio.transcriptions", seconds=8.47)
    assert costs(r)[0] == Decimal("0.000847")


def test_transcribe_mini_uses_the_decided_3_dollar_audio_rate() -> None:
    # gpt-4o-mini-transcribe-2025-12-15 falls back to the base: audio 3 (DISPUTED), text out 5.
    # in 1000 * 3 = 3000/1M; out 100 * 5 = 500/1M
    r = priced(
        "gpt-4o-mini-transcribe-2025-12-15",
        endpoint="audio.transcriptions",
        input_tokens=1000,
        audio_input_tokens=1000,
        output_tokens=100,
    )
    assert costs(r) == (Decimal("0.003"), Decimal("0.0005"), Decimal("0.0035"))
    assert r.pricing_rule == "snapshot->gpt-4o-mini-transcribe"


@pytest.mark.parametrize(
    ("params", "images", "expected"),
    [
        ({"size": "1024x1024"}, 1, Decimal("0.04")),  # dall-e-3 standard by default
        ({"size": "1024x1792", "quality": "standard"}, 1, Decimal("0.08")),
        ({"size": "1024x1024", "quality": "hd"}, 1, Decimal("0.08")),
        ({}, 1, Decimal("0.04")),  # default size 1024x1024
        # the count of images returned wins over the requested n: 2 * 0.12
        ({"size": "1792x1024", "quality": "hd", "n": 3}, 2, Decimal("0.24")),
    ],
)
def test_dalle3_per_image(params: dict[str, Any], images: int, expected: Decimal) -> None:
    r = priced("dall-e-3", endpoint="images.generate", params=params, images=images)
    assert costs(r) == (Decimal("0"), expected, expected)


def test_dalle_unknown_size_is_unpriced() -> None:
    r = priced("dall-e-2", endpoint="images.generate", params={"size": "2048x2048"}, images=1)
    assert r.cost is None
    assert r.pricing_rule == "exact; no per-image price for quality=standard size=2048x2048"


def test_gpt_image_per_image_table_when_no_token_usage() -> None:
    # gpt-image-1 high 1024x1024 $0.167 each, 2 images = 0.334
    r = priced("gpt-image-1", endpoint="images.generate", params={"quality": "high"}, images=2)
    assert costs(r)[2] == Decimal("0.334")


def test_exact_arithmetic_at_scale() -> None:
    # 10^9 input tokens of gpt-4o-mini at 0.15 = 150 USD exactly; 7 output tokens at 0.60 = 4.2/1M
    r = priced("gpt-4o-mini", input_tokens=1_000_000_000, output_tokens=7)
    assert costs(r) == (Decimal("150"), Decimal("0.0000042"), Decimal("150.0000042"))


def test_price_is_cached_per_model_name() -> None:
    book = get_price_book()
    priced("gpt-4o", response_model="gpt-4o-2024-11-20", input_tokens=1, output_tokens=1)
    assert ("openai", "gpt-4o-2024-11-20") in book._cache

"""The cost of one call record, from the price book in use. Never raises."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

from .._errors import logger
from ..records import CallRecord, Cost
from .book import PriceBook, _Period, _Rates, get_price_book, warned
from .tools import tool_cost

__all__ = ["price_record"]

_MILLION = Decimal(1_000_000)
_SIXTY = Decimal(60)


_TIER_ALIASES = {
    None: "standard",
    "auto": "standard",
    "default": "standard",
    "standard": "standard",
    "fast": "priority",
}
_IMAGE_ENDPOINTS = frozenset({"images.generate", "images.edit", "images.variation"})


def _warn_once(model: str, reason: str) -> None:
    key = (model, reason)
    if key in warned:
        return
    warned.add(key)
    logger.warning("tracked_openai: cannot price model %r (%s); cost left empty", model, reason)


def _unpriced(record: CallRecord, book: PriceBook, model: str, reason: str, rule: str | None) -> None:
    record.cost = None
    record.cost_status = "unpriced"
    record.pricing_version = book.version
    record.pricing_rule = f"{rule}; {reason}" if rule else reason
    _warn_once(model, reason)


def price_record(record: CallRecord, book: PriceBook | None = None) -> None:
    """Set ``cost``, ``cost_status``, ``pricing_version`` and ``pricing_rule`` on ``record``,
    priced with ``book`` (default: the book in use, :func:`get_price_book`)."""
    try:
        _price(record, book)
    except Exception as exc:  # never raise into the exporter: an unexpected shape is unpriced
        record.cost = None
        record.cost_status = "unpriced"
        record.pricing_rule = f"error: {type(exc).__name__}"
        _warn_once(str(record.response_model or record.model), f"pricing failed: {exc!r}")


def _price(record: CallRecord, book: PriceBook | None) -> None:
    book = book if book is not None else get_price_book()
    usage = record.usage
    # Azure requests carry a deployment name: only the served model says what was billed.
    name = record.response_model or record.model if record.provider == "openai" else record.response_model
    if usage.is_empty():
        record.cost = None
        record.cost_status = "no_usage"
        record.pricing_version = book.version
        record.pricing_rule = None
        return
    if not name:
        _unpriced(
            record,
            book,
            f"<{record.provider} deployment {record.model}>",
            "no served model in the response",
            None,
        )
        return
    found = book._resolve(name, record.provider)
    if found is None:
        _unpriced(record, book, name, "unknown model", None)
        return
    compiled, rule = found
    period = compiled.at(record.started_at)
    if period.label:
        rule = f"{rule}; {period.label}"
    tier = _TIER_ALIASES.get(record.service_tier, record.service_tier)

    cost: Cost | None = None
    reason = ""
    if usage.input_tokens is not None or usage.output_tokens is not None:
        rates = period.tiers.get(tier or "standard")
        if rates is None:
            reason = "no per-token prices" if not period.tiers else f"no {tier} tier price"
        else:
            if tier != "standard":
                rule = f"{rule}; tier={tier}"
            if rates.long is not None and (usage.input_tokens or 0) > (rates.long_threshold or 0):
                rates = rates.long
                rule = f"{rule}; long-context"
            if record.endpoint in _IMAGE_ENDPOINTS and _output_unsplit(usage):
                # The Images API documents output_tokens as "the number of image tokens in the
                # output image"; gpt-image edits report no output breakdown, so all are image tokens.
                usage = replace(usage, image_output_tokens=usage.output_tokens)
                rule = f"{rule}; output tokens priced as image output (no output breakdown)"
            cost, reason = _token_cost(usage, rates)
    elif record.endpoint in _IMAGE_ENDPOINTS or usage.images is not None:
        cost, reason = _image_cost(record, period)
    elif usage.seconds is not None:
        if period.per_minute is None:
            reason = "no per-minute price"
        else:
            amount = Decimal(repr(usage.seconds)) * period.per_minute / _SIXTY
            cost = Cost(amount, Decimal(0), amount)
    elif usage.characters is not None:
        if period.per_1m_characters is None:
            reason = "no per-character price"
        else:
            amount = Decimal(usage.characters) * period.per_1m_characters / _MILLION
            cost = Cost(amount, Decimal(0), amount)
    else:
        reason = "usage has no billable unit"
    if cost is None:
        _unpriced(record, book, name, reason, rule)
        return
    status = "estimated" if record.usage_source == "estimated" else "priced"
    if usage.tool_calls:
        tools = tool_cost(record, book, compiled.name)
        if tools.usd is not None:
            cost = Cost(cost.input_usd, cost.output_usd, cost.total_usd + tools.usd, tool_usd=tools.usd)
            rule = f"{rule}; tools: {'; '.join(tools.rules)}"
        if tools.unpriced:
            # The rest is priced; the total lacks these fees, and says so.
            status = "partial"
            rule = f"{rule}; tools unpriced: {'; '.join(tools.unpriced)}"
    record.cost = cost
    record.cost_status = status
    record.pricing_version = book.version
    record.pricing_rule = rule


def _output_unsplit(usage: Any) -> bool:
    return bool(usage.output_tokens) and usage.image_output_tokens is None and not usage.audio_output_tokens


def _token_cost(usage: Any, r: _Rates) -> tuple[Cost | None, str]:
    inp = usage.input_tokens or 0
    cached = usage.cached_input_tokens or 0
    write = usage.cache_write_tokens or 0
    audio_in = usage.audio_input_tokens or 0
    image_in = usage.image_input_tokens or 0
    out = usage.output_tokens or 0
    audio_out = usage.audio_output_tokens or 0
    image_out = usage.image_output_tokens or 0
    # Inclusive counts: the plain-text share is what is left after the specific buckets.
    text_in = max(inp - cached - write - audio_in - image_in, 0)
    text_out = max(out - audio_out - image_out, 0)
    total_in = Decimal(0)
    for n, rate, what in (
        (text_in, r.text_in, "input"),
        (cached, r.cached_in, "cached input"),
        (write, r.cache_write, "cache write"),
        (audio_in, r.audio_in, "audio input"),
        (image_in, r.image_in, "image input"),
    ):
        if n:
            if rate is None:
                return None, f"no {what} price"
            total_in += n * rate
    total_out = Decimal(0)
    for n, rate, what in (
        (text_out, r.text_out, "output"),
        (audio_out, r.audio_out, "audio output"),
        (image_out, r.image_out, "image output"),
    ):
        if n:
            if rate is None:
                return None, f"no {what} price"
            total_out += n * rate
    cin = total_in / _MILLION
    cout = total_out / _MILLION
    return Cost(cin, cout, cin + cout), ""


def _image_cost(record: CallRecord, period: _Period) -> tuple[Cost | None, str]:
    params = record.params
    size = str(params.get("size") or "1024x1024")
    quality = params.get("quality")
    if quality in (None, "auto", "standard") and "standard" in period.per_image:
        quality = "standard"
    count = record.usage.images
    if count is None:
        n = params.get("n")
        count = n if isinstance(n, int) and not isinstance(n, bool) else 1
    price = period.per_image.get(str(quality), {}).get(size)
    if price is None:
        return None, f"no per-image price for quality={quality} size={size}"
    amount = price * count
    return Cost(Decimal(0), amount, amount), ""


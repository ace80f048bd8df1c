"""The fees of the hosted tools one call used (``Usage.tool_calls``), from the book's ``tools``.

Each kind is priced from its dated entry in force when the call started: per 1,000 calls (with a
rate per model where the fee depends on it), per container or per container-minute by memory
limit, or as the tool's own image model. A kind without an entry, or whose entry has no price for
what was used, is an unpriced part: named in ``pricing_rule``, never counted as $0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..records import CallRecord
from .book import PriceBook, _ToolPeriod

__all__ = ["ToolCost", "tool_cost"]

_THOUSAND = Decimal(1000)
_MILLION = Decimal(1_000_000)
_DATED = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


@dataclass(slots=True)
class ToolCost:
    """The priced tool fees (``usd``, ``None`` when no kind was priced), how each kind was priced,
    and the kinds left unpriced with why."""

    usd: Decimal | None = None
    rules: list[str] = field(default_factory=list)
    unpriced: list[str] = field(default_factory=list)


def tool_cost(record: CallRecord, book: PriceBook, model_key: str | None) -> ToolCost:
    """The hosted-tool fees of ``record`` (``model_key``: the price-table name of its model)."""
    out = ToolCost()
    calls = record.usage.tool_calls
    if not calls:
        return out
    details = record.usage.tool_details or {}
    for kind, n in sorted(calls.items()):
        entry = book.tools.get(kind)
        if entry is None:
            out.unpriced.append(f"{kind} (no price entry)")
            continue
        period = entry.at(record.started_at)
        amount, how = _kind_cost(kind, n, details.get(kind) or {}, period, record, book, model_key)
        label = f"{kind} x{n}"
        if period.label:
            how = f"{how}, {period.label}"
        if amount is None:
            out.unpriced.append(f"{label} ({how})")
            continue
        out.usd = amount if out.usd is None else out.usd + amount
        out.rules.append(f"{label}: {how}")
    return out


def _kind_cost(
    kind: str,
    n: int,
    detail: dict[str, Any],
    period: _ToolPeriod,
    record: CallRecord,
    book: PriceBook,
    model_key: str | None,
) -> tuple[Decimal | None, str]:
    f = period.fields
    if f.priced_as == "tool_model":
        return _tool_model_cost(detail, record, book)
    if f.per_container or f.per_minute:
        memory = str(detail.get("memory_limit") or "1g")
        containers = detail.get("containers")
        count = containers if isinstance(containers, int) and not isinstance(containers, bool) else n
        if f.per_container:
            price = f.per_container.get(memory)
            if price is None:
                return None, f"no per-container price for memory {memory}"
            return price * count, f"{count} container(s) x ${price} ({memory})"
        assert f.per_minute is not None
        rate = f.per_minute.get(memory)
        if rate is None:
            return None, f"no per-minute price for memory {memory}"
        minutes = f.minimum_minutes or 0
        if not minutes:
            return None, "container minutes are not in the response"
        # The response does not say how long a container ran: its minimum is what is known billed.
        return (
            rate * minutes * count,
            f"{count} container(s) x {minutes}-minute minimum x ${rate}/min ({memory})",
        )
    rate = _model_rate(f.by_model, record, model_key)
    if rate is None:
        rate = f.per_1k_calls
    if rate is None:
        return None, f"no price for model {model_key or record.response_model or record.model}"
    return rate * n / _THOUSAND, f"${rate}/1k calls"


def _model_rate(
    by_model: dict[str, Decimal] | None, record: CallRecord, model_key: str | None
) -> Decimal | None:
    if not by_model:
        return None
    for name in (model_key, record.response_model, record.model):
        if not name:
            continue
        name = name.removeprefix("openai/")
        m = _DATED.match(name)
        for candidate in (name, m.group("base") if m else None):
            if candidate and candidate in by_model:
                return by_model[candidate]
    return None


def _tool_model_cost(
    detail: dict[str, Any], record: CallRecord, book: PriceBook
) -> tuple[Decimal | None, str]:
    model = detail.get("model")
    if not isinstance(model, str) or not model:
        return None, "the response names no image model"
    found = book._resolve(model, record.provider)
    if found is None:
        return None, f"unknown image model {model}"
    compiled, _ = found
    period = compiled.at(record.started_at)
    tokens = detail.get("tokens")
    if isinstance(tokens, dict) and tokens:
        rates = period.tiers.get("standard")
        if rates is None:
            return None, f"{model}: no token prices"
        inp = int(tokens.get("input_tokens") or 0)
        image_in = int(tokens.get("image_input_tokens") or 0)
        out = int(tokens.get("output_tokens") or 0)
        image_out = int(tokens.get("image_output_tokens") or 0)
        total = Decimal(0)
        for count, rate in (
            (max(inp - image_in, 0), rates.text_in),
            (image_in, rates.image_in),
            (max(out - image_out, 0), rates.text_out),
            (image_out, rates.image_out),
        ):
            if count:
                if rate is None:
                    return None, f"{model}: no rate for its image tokens"
                total += count * rate
        return total / _MILLION, f"{model} image tokens"
    images = detail.get("images")
    if not isinstance(images, dict) or not images:
        return None, "no image reported"
    total = Decimal(0)
    for key, count in sorted(images.items()):
        quality, _, size = str(key).partition("/")
        price = period.per_image.get(quality, {}).get(size)
        if price is None:
            return None, f"{model}: no per-image price for quality={quality} size={size}"
        total += price * int(count)
    return total, f"{model} per image ({', '.join(sorted(images))})"

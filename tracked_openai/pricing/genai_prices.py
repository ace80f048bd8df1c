"""A draft price table from the genai-prices package's data, for a human to review.

``tracked-openai pricing import-genai-prices`` writes it; nothing here is used to price calls.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

__all__ = ["draft_from_genai_prices"]


def _fmt(value: Decimal) -> str:
    return format(value.normalize(), "f")


_GENAI_FIELDS = {
    "input_mtok": "input",
    "cache_read_mtok": "cached_input",
    "cache_write_mtok": "cache_write",
    "output_mtok": "output",
    "input_audio_mtok": "audio_input",
    "output_audio_mtok": "audio_output",
    "input_image_mtok": "image_input",
    "cache_image_read_mtok": "cached_image_input",
    "output_image_mtok": "image_output",
}


def _rates_from_genai(price: Any) -> tuple[dict[str, Decimal], dict[str, Any]]:
    """Flat rates and long-context rates (from TieredPrices) of one genai-prices ModelPrice."""
    flat: dict[str, Decimal] = {}
    long: dict[str, Any] = {}
    for their, ours in _GENAI_FIELDS.items():
        value = getattr(price, their, None)
        if value is None:
            continue
        if isinstance(value, Decimal):
            flat[ours] = value
        elif getattr(value, "tiers", None):
            flat[ours] = value.base
            long["threshold"] = value.tiers[0].start
            long[ours] = value.tiers[0].price
    return flat, long


def _yaml_rates(rates: Mapping[str, Any], indent: str) -> list[str]:
    return [f"{indent}{k}: {_fmt(v) if isinstance(v, Decimal) else v}" for k, v in rates.items()]


def draft_from_genai_prices(table_version: str | None = None) -> str:
    """A price file drafted from the installed genai-prices data (OpenAI provider only).

    Conditional prices with start dates become ``history``; service-tier and batch variants
    become ``tiers``. Web-search and storage fees have no place in our schema and are dropped.
    Every entry's ``source`` says it is a draft: a human reviews it before it ships.
    """
    import importlib.metadata

    from genai_prices import data

    provider = next(p for p in data.providers if p.id == "openai")
    pkg_version = importlib.metadata.version("genai-prices")
    today = datetime.now(UTC).date().isoformat()
    out = [
        "# Drafted by `tracked-openai pricing import-genai-prices`"
        f" from genai-prices {pkg_version} on {today}.",
        "# DRAFT: review every entry against OpenAI's pricing page before shipping it.",
        f'version: "{table_version or f"genai-prices-{pkg_version}-draft"}"',
        "currency: USD",
        "models:",
    ]
    for model in sorted(provider.models, key=lambda m: m.id):
        prices = model.prices
        periods: list[tuple[date | None, Any]] = []
        if isinstance(prices, list):
            for conditional in prices:
                constraint = getattr(conditional, "constraint", None)
                periods.append((getattr(constraint, "start_date", None), conditional.prices))
        else:
            periods.append((None, prices))
        _, current = periods[-1]
        flat, long = _rates_from_genai(current)
        if not flat:
            continue
        out.append(f"  {model.id}:")
        out.append(f'    source: "genai-prices {pkg_version} (draft, review)"')
        out.extend(_yaml_rates(flat, "    "))
        if long:
            out.append("    long_context:")
            out.extend(_yaml_rates(long, "      "))
        tiers: list[str] = []
        for variant in model.price_variants or []:
            (key, value), *_ = variant.when.items()
            batch = (key, value) == ("processing", "batch")
            tier = value if key == "service_tier" else "batch" if batch else None
            if tier not in ("flex", "priority", "batch"):
                continue
            t_flat, t_long = _rates_from_genai(variant.prices)
            if not t_flat:
                continue
            tiers.append(f"      {tier}:")
            tiers.extend(_yaml_rates(t_flat, "        "))
            if t_long:
                tiers.append("        long_context:")
                tiers.extend(_yaml_rates(t_long, "          "))
        if tiers:
            out.append("    tiers:")
            out.extend(tiers)
        history = []
        for (_, price), (next_start, _) in itertools.pairwise(periods):
            h_flat, h_long = _rates_from_genai(price)
            if not h_flat or next_start is None:
                continue
            history.append(f"      - until: {next_start.isoformat()}")
            history.extend(_yaml_rates(h_flat, "        "))
            if h_long:
                history.append("        long_context:")
                history.extend(_yaml_rates(h_long, "          "))
        if history:
            out.append("    history:")
            out.extend(history)
    return "\n".join(out) + "\n"

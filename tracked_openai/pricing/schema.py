"""The price file's schema: pydantic models that validate every field of a YAML price table.

Prices are exact: the loader gives ``Decimal``; a binary float is refused.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "HistoryEntry",
    "LongContext",
    "ModelPrice",
    "PriceFile",
    "PricingError",
    "TierRates",
    "TokenRates",
    "ToolHistoryEntry",
    "ToolPrice",
]

_TOKEN_FIELDS = (
    "input",
    "cached_input",
    "cache_write",
    "output",
    "audio_input",
    "cached_audio_input",
    "audio_output",
    "image_input",
    "cached_image_input",
    "image_output",
)


class PricingError(ValueError):
    """A price file is malformed; the message names the file, the line and the field."""



Rate = Decimal


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenRates(_Strict):
    """USD per 1M tokens. A missing specific rate falls back to the plain input/output rate."""

    input: Rate | None = Field(default=None, ge=0)
    cached_input: Rate | None = Field(default=None, ge=0)
    cache_write: Rate | None = Field(default=None, ge=0)
    output: Rate | None = Field(default=None, ge=0)
    audio_input: Rate | None = Field(default=None, ge=0)
    cached_audio_input: Rate | None = Field(default=None, ge=0)
    audio_output: Rate | None = Field(default=None, ge=0)
    image_input: Rate | None = Field(default=None, ge=0)
    cached_image_input: Rate | None = Field(default=None, ge=0)
    image_output: Rate | None = Field(default=None, ge=0)

    @field_validator(*_TOKEN_FIELDS, mode="before")
    @classmethod
    def _no_floats(cls, value: Any) -> Any:
        # Prices are exact: bools and binary floats never reach Decimal (the YAML loader gives
        # Decimals; Python callers must pass str/int/Decimal).
        if isinstance(value, (bool, float)):
            raise ValueError(f"a price must be a number written in the file (got {value!r})")
        return value

    def has_token_rates(self) -> bool:
        return any(getattr(self, f) is not None for f in _TOKEN_FIELDS)


class LongContext(TokenRates):
    """Rates for the whole request once its input tokens exceed ``threshold``."""

    threshold: int = Field(gt=0)


class TierRates(TokenRates):
    long_context: LongContext | None = None


class _PeriodFields(TokenRates):
    long_context: LongContext | None = None
    per_image: dict[str, dict[str, Rate]] | None = None
    per_minute: Rate | None = Field(default=None, ge=0)
    per_1m_characters: Rate | None = Field(default=None, ge=0)
    tiers: dict[str, TierRates] | None = None

    @field_validator("per_image")
    @classmethod
    def _sizes(cls, value: dict[str, dict[str, Rate]] | None) -> dict[str, dict[str, Rate]] | None:
        for quality, sizes in (value or {}).items():
            for size, price in sizes.items():
                if not re.fullmatch(r"\d+x\d+", size):
                    raise ValueError(f"per_image.{quality}: size {size!r} is not WIDTHxHEIGHT")
                if price < 0:
                    raise ValueError(f"per_image.{quality}.{size}: price must be >= 0")
        return value

    @field_validator("tiers")
    @classmethod
    def _tier_names(cls, value: dict[str, TierRates] | None) -> dict[str, TierRates] | None:
        for name in value or {}:
            if name in _STANDARD_TIERS:
                raise ValueError(f"tier {name!r} is the standard price: put its rates on the model itself")
        return value

    @model_validator(mode="after")
    def _something_priced(self) -> _PeriodFields:
        if not (
            self.has_token_rates()
            or self.per_image
            or self.per_minute is not None
            or self.per_1m_characters is not None
        ):
            raise ValueError(
                "no price given: set input/output (per 1M tokens), per_image, per_minute or per_1m_characters"
            )
        return self


class HistoryEntry(_PeriodFields):
    """An earlier price, in force until (not including) ``until`` (UTC)."""

    until: date
    note: str | None = None


class ModelPrice(_PeriodFields):
    """The current price of one model, its source, and its earlier prices."""

    source: str = Field(min_length=1)
    note: str | None = None
    history: list[HistoryEntry] = Field(default_factory=list)

    @field_validator("history")
    @classmethod
    def _ordered(cls, value: list[HistoryEntry]) -> list[HistoryEntry]:
        dates = [h.until for h in value]
        if dates != sorted(dates) or len(set(dates)) != len(dates):
            raise ValueError("history entries must be in increasing `until` order, each date once")
        return value


def _exact(value: Any) -> Any:
    if isinstance(value, (bool, float)):
        raise ValueError(f"a price must be a number written in the file (got {value!r})")
    return value


class _ToolFields(_Strict):
    """What a hosted tool's fee is, in one period. Units (see docs/pricing.md, "Hosted tools"):

    * ``per_1k_calls``: USD per 1,000 calls; ``by_model`` gives it for the models (price-table
      names) that pay another rate. A model in neither is unpriced for this tool.
    * ``per_container`` / ``per_minute``: USD per container (session) or per minute it runs, by
      container memory limit (``1g``, ``4g``…); ``minimum_minutes``: the minutes billed at least.
    * ``priced_as: tool_model``: the tool's own model (``tools[].model``) priced from its entry in
      ``models`` (per image by quality and size, or its image tokens).
    """

    per_1k_calls: Rate | None = Field(default=None, ge=0)
    by_model: dict[str, Rate] | None = None
    per_container: dict[str, Rate] | None = None
    per_minute: dict[str, Rate] | None = None
    minimum_minutes: int | None = Field(default=None, ge=0)
    priced_as: Literal["tool_model"] | None = None

    @field_validator("per_1k_calls", mode="before")
    @classmethod
    def _no_floats(cls, value: Any) -> Any:
        return _exact(value)

    @field_validator("by_model", "per_container", "per_minute", mode="before")
    @classmethod
    def _no_float_values(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for price in value.values():
                _exact(price)
                if isinstance(price, (int, Decimal)) and price < 0:
                    raise ValueError("a price must be >= 0")
        return value

    @model_validator(mode="after")
    def _one_unit(self) -> _ToolFields:
        units = [
            self.per_1k_calls is not None or bool(self.by_model),
            bool(self.per_container),
            bool(self.per_minute),
            self.priced_as is not None,
        ]
        if sum(units) != 1:
            raise ValueError(
                "give exactly one unit: per_1k_calls (and/or by_model), per_container, per_minute "
                "or priced_as"
            )
        if self.minimum_minutes is not None and not self.per_minute:
            raise ValueError("minimum_minutes goes with per_minute")
        return self


class ToolHistoryEntry(_ToolFields):
    """An earlier fee of a hosted tool, in force until (not including) ``until`` (UTC)."""

    until: date
    note: str | None = None


class ToolPrice(_ToolFields):
    """The current fee of one hosted tool (besides the model's tokens), its source, its history."""

    source: str = Field(min_length=1)
    note: str | None = None
    history: list[ToolHistoryEntry] = Field(default_factory=list)

    @field_validator("history")
    @classmethod
    def _ordered(cls, value: list[ToolHistoryEntry]) -> list[ToolHistoryEntry]:
        dates = [h.until for h in value]
        if dates != sorted(dates) or len(set(dates)) != len(dates):
            raise ValueError("history entries must be in increasing `until` order, each date once")
        return value


class PriceFile(_Strict):
    """One price table file."""

    version: str = Field(min_length=1)
    currency: str = "USD"
    models: dict[str, ModelPrice]
    # Hosted tools' fees (Responses API tools, chat search models), by tool kind.
    tools: dict[str, ToolPrice] = Field(default_factory=dict)

    @field_validator("currency")
    @classmethod
    def _usd(cls, value: str) -> str:
        if value != "USD":
            raise ValueError("only USD price tables are supported")
        return value


_STANDARD_TIERS = frozenset({"standard", "default", "auto"})


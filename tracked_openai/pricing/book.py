"""The compiled price book: model names resolved to rates, and the book in use in this process.

The YAML is compiled at load into per-tier rate tuples with every fallback already applied, so
pricing a record once its model name is resolved (cached per book) costs a few microseconds.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

from .._config import settings
from .._errors import logger
from .load import load_price_file, shipped_pricing_dir, yaml_files
from .schema import (
    _TOKEN_FIELDS,
    LongContext,
    ModelPrice,
    PriceFile,
    PricingError,
    TierRates,
    TokenRates,
    ToolPrice,
    _PeriodFields,
    _ToolFields,
)

__all__ = ["PriceBook", "get_price_book", "load_price_book", "use_pricing", "warned"]



@dataclass(slots=True, frozen=True)
class _Rates:
    """Per-1M-token rates of one tier with every fallback applied (None = no rate at all).

    Cached audio/image rates are not compiled: usage does not split cached tokens by modality, so
    every cached token is billed at the cached (text) rate.
    """

    text_in: Decimal | None
    cached_in: Decimal | None
    cache_write: Decimal | None
    audio_in: Decimal | None
    image_in: Decimal | None
    text_out: Decimal | None
    audio_out: Decimal | None
    image_out: Decimal | None
    long_threshold: int | None
    long: _Rates | None


def _compile_rates(r: TokenRates, long: LongContext | None, standard: TokenRates | None = None) -> _Rates:
    inp, out = r.input, r.output
    audio_in = r.audio_input if r.audio_input is not None else inp
    image_in = r.image_input if r.image_input is not None else inp
    cached = r.cached_input
    if cached is None and standard is not None and standard.cached_input is not None and inp is not None:
        # OpenAI's batch table lists no cached rate: cached input keeps the standard cached rate
        # (genai-prices does the same), never more than the tier's own input rate.
        cached = min(standard.cached_input, inp)
    return _Rates(
        text_in=inp,
        cached_in=cached if cached is not None else inp,
        cache_write=r.cache_write if r.cache_write is not None else inp,
        audio_in=audio_in,
        image_in=image_in,
        text_out=out,
        audio_out=r.audio_output if r.audio_output is not None else out,
        image_out=r.image_output if r.image_output is not None else out,
        long_threshold=long.threshold if long is not None else None,
        long=_compile_rates(long, None) if long is not None else None,
    )


def _scaled_long(base: _PeriodFields, tier: TierRates) -> LongContext | None:
    """A tier without its own long-context rates scales the standard ones by tier/standard input."""
    if tier.long_context is not None or base.long_context is None:
        return tier.long_context
    if tier.input is None or not base.input:
        return None
    ratio = tier.input / base.input
    lc = base.long_context
    scaled = {f: getattr(lc, f) * ratio for f in _TOKEN_FIELDS if getattr(lc, f) is not None}
    return LongContext(threshold=lc.threshold, **scaled)


@dataclass(slots=True, frozen=True)
class _Period:
    until_ts: float | None  # None: the current price
    label: str  # "" for current, "until YYYY-MM-DD" for history
    tiers: dict[str, _Rates]  # "standard" present when the model has token rates
    per_image: dict[str, dict[str, Decimal]]
    per_minute: Decimal | None
    per_1m_characters: Decimal | None


def _compile_period(p: _PeriodFields, until: date | None) -> _Period:
    tiers: dict[str, _Rates] = {}
    if p.has_token_rates():
        tiers["standard"] = _compile_rates(p, p.long_context)
    for name, t in (p.tiers or {}).items():
        tiers[name] = _compile_rates(t, _scaled_long(p, t), standard=p)
    until_ts = datetime(until.year, until.month, until.day, tzinfo=UTC).timestamp() if until else None
    return _Period(
        until_ts=until_ts,
        label=f"until {until.isoformat()}" if until else "",
        tiers=tiers,
        per_image=dict(p.per_image or {}),
        per_minute=p.per_minute,
        per_1m_characters=p.per_1m_characters,
    )


@dataclass(slots=True, frozen=True)
class _Compiled:
    name: str
    periods: tuple[_Period, ...]  # history in order, then the current price

    def at(self, ts: float) -> _Period:
        if ts <= 0:  # no start time recorded: today's price, not the oldest one
            return self.periods[-1]
        for p in self.periods:
            if p.until_ts is None or ts < p.until_ts:
                return p
        return self.periods[-1]


@dataclass(slots=True, frozen=True)
class _ToolPeriod:
    until_ts: float | None  # None: the current fee
    label: str
    fields: _ToolFields


@dataclass(slots=True, frozen=True)
class _CompiledTool:
    name: str
    origin: str
    source: str
    periods: tuple[_ToolPeriod, ...]  # history in order, then the current fee

    def at(self, ts: float) -> _ToolPeriod:
        if ts <= 0:
            return self.periods[-1]
        for p in self.periods:
            if p.until_ts is None or ts < p.until_ts:
                return p
        return self.periods[-1]


def _compile_tool(name: str, origin: str, entry: ToolPrice) -> _CompiledTool:
    periods = [
        _ToolPeriod(
            datetime(h.until.year, h.until.month, h.until.day, tzinfo=UTC).timestamp(),
            f"until {h.until.isoformat()}",
            h,
        )
        for h in entry.history
    ]
    periods.append(_ToolPeriod(None, "", entry))
    return _CompiledTool(name, origin, entry.source, tuple(periods))


# --------------------------------------------------------------------------------------------
# Price book and model resolution
# --------------------------------------------------------------------------------------------

_DATED = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
_AZURE_FT = re.compile(r"^(?P<base>.+?)\.ft-[0-9A-Za-z_-]+$")


def _lookup(layer: dict[str, _Compiled], name: str, provider: str) -> tuple[_Compiled, str] | None:
    # A user may price a provider specifically ("azure/gpt-4o"); then the plain name.
    if provider != "openai":
        hit = layer.get(f"{provider}/{name}")
        if hit is not None:
            return hit, f"{provider}/"
    hit = layer.get(name)
    return (hit, "") if hit is not None else None


def _resolve_in(layer: dict[str, _Compiled], name: str, provider: str) -> tuple[_Compiled, str] | None:
    """Exact name, then fine-tune base / Azure spelling, then the name without its date suffix."""
    name = name.strip().removeprefix("openai/")
    exact = _lookup(layer, name, provider)
    if exact is not None:
        return exact[0], f"{exact[1]}exact"
    steps: list[str] = []
    candidate = name
    azure_ft = _AZURE_FT.match(candidate)
    if candidate.startswith("ft:"):
        # ft:<base>:<org>:<suffix>:<id>[:ckpt-step-N] is billed as ft:<base>
        candidate = "ft:" + candidate[3:].split(":", 1)[0]
        steps.append("fine-tune")
    elif azure_ft is not None:
        candidate = "ft:" + azure_ft.group("base")
        steps.append("fine-tune")
    if "gpt-35" in candidate:
        candidate = candidate.replace("gpt-35", "gpt-3.5")
        steps.append("azure-spelling")
    for _ in range(2):  # the name as rewritten, then without its date suffix
        hit = _lookup(layer, candidate, provider)
        if hit is not None:
            return hit[0], f"{hit[1]}{'+'.join(steps) or 'exact'}->{hit[0].name}"
        m = _DATED.match(candidate)
        if m is None:
            break
        candidate = m.group("base")
        steps.append("snapshot")
    return None


class PriceBook:
    """Shipped tables plus user overrides, compiled for pricing. Immutable once built.

    ``files`` are the shipped tables, ``overrides`` the user's (in each list a later file's entry
    replaces an earlier one of the same name). Resolution runs its whole rule chain over the
    user's entries first, then over ours: a user's ``gpt-4o`` also prices ``gpt-4o-2024-08-06``
    (a snapshot we list on its own) unless the user lists that snapshot too.
    """

    def __init__(
        self, files: Iterable[tuple[str, PriceFile]], overrides: Iterable[tuple[str, PriceFile]] = ()
    ) -> None:
        shipped, user = list(files), list(overrides)
        self.models: dict[str, ModelPrice] = {}
        self.origin: dict[str, str] = {}
        for origin, pf in (*shipped, *user):
            for name, entry in pf.models.items():
                self.models[name] = entry
                self.origin[name] = origin
        self.version = "+".join(dict.fromkeys(pf.version for _, pf in (*shipped, *user))) or "empty"
        # Hosted tools' fees by kind; a user's entry replaces ours of the same kind as a whole.
        self.tools: dict[str, _CompiledTool] = {}
        for origin, pf in (*shipped, *user):
            for kind, tool in pf.tools.items():
                self.tools[kind] = _compile_tool(kind, origin, tool)
        self._layers: list[dict[str, _Compiled]] = []
        for group in (user, shipped):
            layer: dict[str, _Compiled] = {}
            for _, pf in group:
                for name, entry in pf.models.items():
                    periods = [_compile_period(h, h.until) for h in entry.history]
                    periods.append(_compile_period(entry, None))
                    layer[name] = _Compiled(name, tuple(periods))
            if layer:
                self._layers.append(layer)
        self._cache: dict[tuple[str, str], tuple[_Compiled, str] | None] = {}

    def resolve(self, name: str, provider: str = "openai") -> tuple[str, str] | None:
        """``(price key, rule)`` for a served model name, or ``None`` if unknown."""
        found = self._resolve(name, provider)
        return (found[0].name, found[1]) if found is not None else None

    def _resolve(self, name: str, provider: str) -> tuple[_Compiled, str] | None:
        key = (provider, name)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found: tuple[_Compiled, str] | None = None
        for layer in self._layers:
            found = _resolve_in(layer, name, provider)
            if found is not None:
                break
        if len(self._cache) < 10_000:  # bounded: model names come from responses
            self._cache[key] = found
        return found



# --------------------------------------------------------------------------------------------
# Process-wide state
# --------------------------------------------------------------------------------------------

_lock = threading.Lock()
_book: PriceBook | None = None
# (model, reason) pairs warned about as unpriced with the book in use (cleared with a new book).
warned: set[tuple[str, str]] = set()


def _shipped_files() -> list[tuple[str, PriceFile]]:
    folder = shipped_pricing_dir()
    return [(f"shipped:{p.name}", load_price_file(p)) for p in yaml_files(folder)]


def load_price_book(overrides: str | Path | None = None, *, shipped: bool = True) -> PriceBook:
    """The shipped tables (unless ``shipped=False``) overridden by a user file or folder."""
    files = _shipped_files() if shipped else []
    user = [(str(p), load_price_file(p)) for p in yaml_files(Path(overrides))] if overrides else []
    return PriceBook(files, user)


def _initial_book() -> PriceBook:

    source = settings.pricing
    if source:
        try:
            return load_price_book(source)
        except PricingError as exc:
            # The env var is read at run time: never stop the host, price on the shipped table.
            logger.error("tracked_openai: TRACKED_OPENAI_PRICING ignored, using the shipped prices: %s", exc)
    return load_price_book()


def get_price_book() -> PriceBook:
    """The price book in use (loaded on first use)."""
    book = _book
    if book is None:
        with _lock:
            if _book is None:
                _set_book(_initial_book())
            book = _book
    assert book is not None
    return book


def _set_book(book: PriceBook) -> None:
    global _book
    _book = book
    warned.clear()


def use_pricing(source: str | Path | PriceBook | None) -> PriceBook:
    """Price with the shipped tables plus ``source`` (a file or folder path, or a built
    :class:`PriceBook` used as is). ``None`` restores the shipped tables. A bad file raises
    :class:`PricingError` and leaves the current tables in use."""
    book = source if isinstance(source, PriceBook) else load_price_book(source)
    with _lock:
        _set_book(book)
    return book



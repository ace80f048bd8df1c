"""Versioned OpenAI price tables and the cost of one call.

Price tables are YAML files (``pricing/*.yaml`` in the source tree, ``tracked_openai/_pricing_data``
in a wheel), validated by the pydantic models below. A user file or folder
(``TRACKED_OPENAI_PRICING`` or ``configure(pricing=...)``) overrides or extends them: a model
entry in a user file replaces the shipped entry of the same name as a whole.

:func:`price_record` runs on the exporter thread for every call record. It never raises and, once
a model name has been resolved (cached per book), costs a few microseconds: the YAML is compiled at
load into per-tier rate tuples with every fallback already applied.

``cost_status`` values set here:

* ``"priced"``: ``cost`` holds the exact cost (``Decimal`` USD) from usage the response reported.
* ``"estimated"``: priced, but from usage the library estimated (``usage_source == "estimated"``).
* ``"unpriced"``: ``cost`` is ``None``: the model is unknown, or the price table has no rate for
  what was used (a service tier, an image size/quality, a unit). Warned once per model and reason.
* ``"no_usage"``: ``cost`` is ``None``: nothing billable was reported or estimated (e.g. a failed
  call, or a stream without a usage chunk).

``pricing_rule`` says how the model was found (``"exact"``, ``"snapshot->gpt-4o"``,
``"fine-tune->ft:gpt-4o-mini-2024-07-18"``, ``"azure-spelling->gpt-3.5-turbo"``, …) plus the
tier / long-context / history period used, e.g. ``"exact; tier=priority; until 2024-10-02"``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._config import settings
from ._errors import logger
from .records import CallRecord, Cost

__all__ = [
    "COST_STATUSES",
    "ModelPrice",
    "PriceBook",
    "PriceFile",
    "PricingError",
    "get_price_book",
    "load_price_book",
    "load_price_file",
    "price_record",
    "resolve_model",
    "shipped_pricing_dir",
    "use_pricing",
]

COST_STATUSES = ("priced", "estimated", "unpriced", "no_usage")

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
_MILLION = Decimal(1_000_000)
_SIXTY = Decimal(60)


class PricingError(ValueError):
    """A price file is malformed; the message names the file, the line and the field."""


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------

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


class PriceFile(_Strict):
    """One price table file."""

    version: str = Field(min_length=1)
    currency: str = "USD"
    models: dict[str, ModelPrice]

    @field_validator("currency")
    @classmethod
    def _usd(cls, value: str) -> str:
        if value != "USD":
            raise ValueError("only USD price tables are supported")
        return value


_STANDARD_TIERS = frozenset({"standard", "default", "auto"})


# --------------------------------------------------------------------------------------------
# Loading with line numbers
# --------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader whose floats are exact Decimals (0.1 stays 0.1)."""


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    text = str(loader.construct_scalar(node)).replace("_", "")  # type: ignore[arg-type]
    if text.lower() in (".inf", "+.inf", "-.inf", ".nan"):
        return text  # left as text: the schema rejects it with a line number
    try:
        return Decimal(text)
    except InvalidOperation:
        return text  # YAML 1.1's sexagesimal floats (1:30.5): the same


def _construct_timestamp(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    try:
        return loader.construct_yaml_timestamp(node)  # type: ignore[arg-type]
    except ValueError:
        # Shaped like a date but none (2024-02-30): left as text, the schema names the field.
        return loader.construct_scalar(node)  # type: ignore[arg-type]


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def _line_map(
    node: yaml.Node,
    path: tuple[Any, ...],
    out: dict[tuple[Any, ...], int],
    errors: list[str],
    above: frozenset[int] = frozenset(),
) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if id(node) in above:  # an alias to a node that contains it (&a ... *a): endless
        errors.append(f"{out[path]}: {'.'.join(map(str, path))}: refers to itself (a YAML alias)")
        return
    above = above | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                errors.append(
                    f"{key_node.start_mark.line + 1}: {'.'.join(map(str, (*path, key)))}: duplicate key"
                )
            seen.add(key)
            out[(*path, key)] = key_node.start_mark.line + 1
            _line_map(value_node, (*path, key), out, errors, above)
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*path, i), out, errors, above)


def _locate(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    for end in range(len(loc), -1, -1):
        line = lines.get(tuple(str(p) if not isinstance(p, int) else p for p in loc[:end]))
        if line is not None:
            return line
    return 1


def _field_name(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


def load_price_file(path: str | Path) -> PriceFile:
    """Read and validate one YAML price file; :class:`PricingError` names file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PricingError(f"{path}: cannot read price file: {exc.strerror or exc}") from None
    return parse_price_text(text, str(path))


def parse_price_text(text: str, name: str = "<string>") -> PriceFile:
    """Validate YAML text as a price file (``name`` is used in error messages)."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (a control character)
        line = text.count("\n", 0, exc.position) + 1
        problem = f"character #x{exc.character:04x}: {exc.reason}"
        raise PricingError(f"{name}:{line}: invalid YAML: {problem}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise PricingError(f"{name}:1: empty price file (expected `version:` and `models:`)")
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise PricingError(f"{name}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise PricingError(f"{name}:1: invalid YAML: {exc}") from None
    except RecursionError:
        raise PricingError(f"{name}:1: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    lines: dict[tuple[Any, ...], int] = {}
    dupes: list[str] = []
    _line_map(node, (), lines, dupes)
    if dupes:
        raise PricingError("\n".join(f"{name}:{d}" for d in dupes))
    if not isinstance(data, dict):
        raise PricingError(f"{name}:1: a price file is a mapping with `version:` and `models:`")
    try:
        return PriceFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{name}:{_locate(loc, lines)}: {_field_name(loc)}: {msg}")
        raise PricingError("\n".join(problems)) from None


def shipped_pricing_dir() -> Path:
    """The shipped tables: ``pricing/`` in a source tree or editable install, else the wheel's copy."""
    here = Path(__file__).resolve()
    source_tree = here.parents[1] / "pricing"
    if source_tree.is_dir() and any(source_tree.glob("*.yaml")):
        return source_tree
    from importlib.resources import files

    packaged = files("tracked_openai").joinpath("_pricing_data")
    return Path(str(packaged))


def _yaml_files(source: Path) -> list[Path]:
    if source.is_dir():
        found = sorted([*source.glob("*.yaml"), *source.glob("*.yml")])
        if not found:
            raise PricingError(f"{source}: no *.yaml price files in this folder")
        return found
    if not source.exists():
        raise PricingError(f"{source}: no such price file or folder")
    return [source]


def load_price_files(source: str | Path) -> list[PriceFile]:
    """Every price file in a file or folder (sorted by name: later files override earlier)."""
    return [load_price_file(p) for p in _yaml_files(Path(source))]


# --------------------------------------------------------------------------------------------
# Compiled form (hot path)
# --------------------------------------------------------------------------------------------


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
_warned: set[tuple[str, str]] = set()


def _shipped_files() -> list[tuple[str, PriceFile]]:
    folder = shipped_pricing_dir()
    return [(f"shipped:{p.name}", load_price_file(p)) for p in _yaml_files(folder)]


def load_price_book(overrides: str | Path | None = None, *, shipped: bool = True) -> PriceBook:
    """The shipped tables (unless ``shipped=False``) overridden by a user file or folder."""
    files = _shipped_files() if shipped else []
    user = [(str(p), load_price_file(p)) for p in _yaml_files(Path(overrides))] if overrides else []
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
    _warned.clear()


def use_pricing(source: str | Path | PriceBook | None) -> PriceBook:
    """Price with the shipped tables plus ``source`` (a file or folder path, or a built
    :class:`PriceBook` used as is). ``None`` restores the shipped tables. A bad file raises
    :class:`PricingError` and leaves the current tables in use."""
    book = source if isinstance(source, PriceBook) else load_price_book(source)
    with _lock:
        _set_book(book)
    return book


def resolve_model(name: str, provider: str = "openai") -> tuple[str, str] | None:
    """``(price key, rule)`` the current book uses for ``name``, or ``None``."""
    return get_price_book().resolve(name, provider)


# --------------------------------------------------------------------------------------------
# Pricing one record
# --------------------------------------------------------------------------------------------

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
    if key in _warned:
        return
    _warned.add(key)
    logger.warning("tracked_openai: cannot price model %r (%s); cost left empty", model, reason)


def _unpriced(record: CallRecord, book: PriceBook, model: str, reason: str, rule: str | None) -> None:
    record.cost = None
    record.cost_status = "unpriced"
    record.pricing_version = book.version
    record.pricing_rule = f"{rule}; {reason}" if rule else reason
    _warn_once(model, reason)


def price_record(record: CallRecord) -> None:
    """Set ``cost``, ``cost_status``, ``pricing_version`` and ``pricing_rule`` on ``record``."""
    try:
        _price(record)
    except Exception as exc:  # never raise into the exporter: an unexpected shape is unpriced
        record.cost = None
        record.cost_status = "unpriced"
        record.pricing_rule = f"error: {type(exc).__name__}"
        _warn_once(str(record.response_model or record.model), f"pricing failed: {exc!r}")


def _price(record: CallRecord) -> None:
    book = get_price_book()
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
    record.cost = cost
    record.cost_status = "estimated" if record.usage_source == "estimated" else "priced"
    record.pricing_version = book.version
    record.pricing_rule = rule


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


def _reset_for_tests(book: PriceBook | None = None) -> None:
    """Drop the loaded book (next use reloads from settings) and the warned-once memory."""
    global _book
    with _lock:
        _book = book
        _warned.clear()


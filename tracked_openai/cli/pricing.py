"""``tracked-openai pricing show|check|diff|import-genai-prices``: inspect, validate and compare
price tables.

Exit codes (``cli.output``): 0 ok, 1 invalid price file or unknown model, 2 bad arguments (a
path that does not exist, genai-prices not installed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from .. import pricing
from ..pricing import ModelPrice, PriceBook, PricingError
from ..pricing.load import yaml_files
from .output import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, new_console

__all__ = ["add_commands"]

_RATE_COLUMNS = (
    ("input", "input"),
    ("cached_input", "cached"),
    ("cache_write", "cache write"),
    ("output", "output"),
    ("audio_input", "audio in"),
    ("audio_output", "audio out"),
    ("image_input", "image in"),
    ("image_output", "image out"),
)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "pricing",
        help="show, check and compare price tables",
        description="Price tables: the shipped ones plus $TRACKED_OPENAI_PRICING (or --pricing).",
    )
    cmds = parser.add_subparsers(dest="pricing_command", metavar="SUBCOMMAND")
    cmds.required = True

    show = cmds.add_parser("show", help="table of prices, or every price of one model")
    show.add_argument("model", nargs="?", help="a model name as the API reports it (snapshots, ft:, Azure)")
    show.add_argument(
        "--pricing", metavar="PATH", help="your price file or folder (default: $TRACKED_OPENAI_PRICING)"
    )
    show.add_argument("--provider", default="openai", help="provider for resolution (openai, azure)")
    show.set_defaults(handler=_show)

    check = cmds.add_parser("check", help="validate a price file or folder")
    check.add_argument("file", help="a YAML price file or a folder of them")
    check.set_defaults(handler=_check)

    diff = cmds.add_parser("diff", help="what changed between two price files or folders")
    diff.add_argument("old")
    diff.add_argument("new")
    diff.set_defaults(handler=_diff)

    draft = cmds.add_parser(
        "import-genai-prices",
        help="draft a price file from the genai-prices package's data, for a human to review",
    )
    draft.add_argument("--out", metavar="FILE", help="write here (default: stdout)")
    draft.add_argument("--version", dest="table_version", help="version of the drafted table")
    draft.set_defaults(handler=_import_genai_prices)


# ------------------------------------------------------------------------------------------ helpers


def _err(message: str) -> None:
    print(f"tracked-openai pricing: {message}", file=sys.stderr)


def _fmt(value: Decimal | None) -> str:
    if value is None:
        return "-"
    text = format(value.normalize(), "f")
    return text


def _load_book(path: str | None) -> PriceBook:
    if path is not None:
        return pricing.load_price_book(path)
    return pricing.get_price_book()


# ---------------------------------------------------------------------------------------------- show


def _show(args: argparse.Namespace) -> int:
    if args.pricing is not None and not Path(args.pricing).exists():
        _err(f"{args.pricing}: no such file or folder")
        return EXIT_USAGE
    try:
        book = _load_book(args.pricing)
    except PricingError as exc:
        _err(str(exc))
        return EXIT_PROBLEM
    if args.model:
        return _show_model(book, args.model, args.provider)
    return _show_all(book)


def _units(entry: Any) -> str:
    parts = []
    if entry.long_context is not None:
        parts.append(f">{entry.long_context.threshold // 1000}k")
    if entry.per_image:
        parts.append("per image")
    if entry.per_minute is not None:
        parts.append(f"${_fmt(entry.per_minute)}/min")
    if entry.per_1m_characters is not None:
        parts.append(f"${_fmt(entry.per_1m_characters)}/1M chars")
    if entry.history:
        parts.append(f"{len(entry.history)} earlier")
    return ", ".join(parts)


def _show_all(book: PriceBook) -> int:
    from rich.table import Table

    table = Table(title=f"Prices (USD per 1M tokens), version {book.version}")
    table.add_column("model")
    for _, label in _RATE_COLUMNS:
        table.add_column(label, justify="right")
    table.add_column("tiers")
    table.add_column("also")
    for name in sorted(book.models):
        entry = book.models[name]
        table.add_row(
            name,
            *(_fmt(getattr(entry, field)) for field, _ in _RATE_COLUMNS),
            ", ".join(entry.tiers or {}),
            _units(entry),
        )
    new_console().print(table)
    return EXIT_OK


def _show_model(book: PriceBook, name: str, provider: str) -> int:
    from rich.table import Table

    found = book.resolve(name, provider)
    if found is None:
        _err(f"no price for model {name!r} (unknown model) in version {book.version}")
        return EXIT_PROBLEM
    key, rule = found
    entry = book.models[key]
    console = new_console()
    console.print(f"[bold]{name}[/bold] -> {key} ({rule}); version {book.version}; from {book.origin[key]}")
    console.print(f"source: {entry.source}", markup=False)
    if entry.note:
        console.print(f"note: {entry.note}", markup=False)
    table = Table(title="USD per 1M tokens")
    table.add_column("in force")
    table.add_column("tier")
    for _, label in _RATE_COLUMNS:
        table.add_column(label, justify="right")
    for when, period in _periods(entry):
        for tier, rates in _tiers(period):
            table.add_row(when, tier, *(_fmt(getattr(rates, f)) for f, _ in _RATE_COLUMNS))
    if table.row_count:
        console.print(table)
    for when, period in _periods(entry):
        if period.per_image:
            images = Table(title=f"USD per image ({when})")
            images.add_column("quality")
            images.add_column("size")
            images.add_column("price", justify="right")
            for quality, sizes in period.per_image.items():
                for size, price in sizes.items():
                    images.add_row(quality, size, _fmt(price))
            console.print(images)
        if period.per_minute is not None:
            console.print(f"{when}: ${_fmt(period.per_minute)} per minute of audio")
        if period.per_1m_characters is not None:
            console.print(f"{when}: ${_fmt(period.per_1m_characters)} per 1M characters")
    return EXIT_OK


def _periods(entry: ModelPrice) -> Iterator[tuple[str, Any]]:
    start: date | None = None
    for h in entry.history:
        yield (f"{start.isoformat() if start else '...'} to {h.until.isoformat()}", h)
        start = h.until
    yield (f"since {start.isoformat()}" if start else "current", entry)


def _tiers(period: Any) -> Iterator[tuple[str, Any]]:
    if period.has_token_rates():
        yield "standard", period
        if period.long_context is not None:
            yield f"standard >{period.long_context.threshold}", period.long_context
    for name, rates in (period.tiers or {}).items():
        yield name, rates
        if rates.long_context is not None:
            yield f"{name} >{rates.long_context.threshold}", rates.long_context


# --------------------------------------------------------------------------------------------- check


def _check(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.exists():
        _err(f"{path}: no such file or folder")
        return EXIT_USAGE
    try:
        files = pricing.load_price_files(path)
    except PricingError as exc:
        _err(str(exc))
        return EXIT_PROBLEM
    shipped_files = yaml_files(pricing.shipped_pricing_dir())
    shipped_paths = {p.resolve() for p in shipped_files}
    shipped_versions = {pricing.load_price_file(p).version for p in shipped_files}
    shipped = pricing.load_price_book().models
    for pf, file in zip(files, yaml_files(path), strict=True):
        print(f"{file}: ok, version {pf.version}, {_plural(len(pf.models), 'model')}"
              f"{_against_shipped(pf, file, shipped, shipped_paths, shipped_versions)}")
    return EXIT_OK


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _against_shipped(
    pf: Any, file: Path, shipped: Mapping[str, ModelPrice], paths: set[Path], versions: set[str]
) -> str:
    """How a checked file relates to the shipped table: it is the shipped table (or a copy of
    it), or it overrides some shipped models with other prices and adds others."""
    if file.resolve() in paths:
        return " (the shipped price table)"
    same = [name for name, entry in pf.models.items() if shipped.get(name) == entry]
    changed = sorted(name for name, entry in pf.models.items() if name in shipped and shipped[name] != entry)
    added = len(pf.models) - len(same) - len(changed)
    if pf.version in versions and not changed and not added:
        return " (a copy of the shipped price table)"
    parts = []
    if changed:
        names = f" ({', '.join(changed)})" if len(changed) <= 5 else ""
        parts.append(f"overrides the shipped price of {_plural(len(changed), 'model')}{names}")
    if added:
        parts.append(f"adds {_plural(added, 'model')}")
    if same:
        parts.append(f"{len(same)} as shipped")
    return "; " + ", ".join(parts) if parts else ""


# ---------------------------------------------------------------------------------------------- diff


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for item in value:
            label = item.get("until") if isinstance(item, Mapping) else None
            yield from _flatten(item, f"{prefix}[until {label}]" if label else f"{prefix}[]")
    elif value is not None:
        yield prefix, _fmt(value) if isinstance(value, Decimal) else str(value)


def _models_of(path: Path) -> tuple[str, dict[str, dict[str, str]]]:
    files = pricing.load_price_files(path)
    models: dict[str, dict[str, str]] = {}
    for pf in files:
        for name, entry in pf.models.items():
            models[name] = dict(_flatten(entry.model_dump(exclude_none=True)))
    return "+".join(pf.version for pf in files), models


def _diff(args: argparse.Namespace) -> int:
    from rich.table import Table

    old_path, new_path = Path(args.old), Path(args.new)
    for path in (old_path, new_path):
        if not path.exists():
            _err(f"{path}: no such file or folder")
            return EXIT_USAGE
    try:
        old_version, old = _models_of(old_path)
        new_version, new = _models_of(new_path)
    except PricingError as exc:
        _err(str(exc))
        return EXIT_PROBLEM
    table = Table(title=f"{old_version} -> {new_version}")
    table.add_column("model")
    table.add_column("change")
    table.add_column("field")
    table.add_column("old", justify="right")
    table.add_column("new", justify="right")
    for name in sorted(set(old) | set(new)):
        if name not in new:
            table.add_row(name, "removed", "", "", "")
            continue
        if name not in old:
            table.add_row(name, "added", "", "", "")
            continue
        before, after = old[name], new[name]
        for field in sorted(set(before) | set(after)):
            if field in ("source", "note") or field.endswith((".note", ".source")):
                continue
            a, b = before.get(field), after.get(field)
            if a != b:
                table.add_row(name, "changed", field, a or "-", b or "-")
    console = new_console()
    if table.row_count == 0:
        console.print(f"no price changes ({old_version} -> {new_version})")
    else:
        console.print(table)
    return EXIT_OK


# --------------------------------------------------------------------------------- import-genai-prices


def _import_genai_prices(args: argparse.Namespace) -> int:
    try:
        from ..pricing.genai_prices import draft_from_genai_prices

        text = draft_from_genai_prices(args.table_version)
    except ImportError:
        _err("genai-prices is not installed (pip install genai-prices)")
        return EXIT_USAGE
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}: review every entry, then `tracked-openai pricing diff` it against ours")
    else:
        sys.stdout.write(text)
    return EXIT_OK

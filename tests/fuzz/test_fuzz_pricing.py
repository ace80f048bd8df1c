"""Price files (hypothesis): valid tables, then the same tables mutated (wrong types, missing
fields, bad dates, negative numbers, unknown keys, duplicate models, history out of order) and
their text broken (stray characters, lost indentation, cut short). ``parse_price_text`` returns a
valid table or raises ``PricingError`` whose every line reads ``file:line: field: problem`` with
a line inside the file; never another exception."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracked_openai.pricing import PricingError, load_price_file, parse_price_text

from ._located import check_located_error
from ._tally import counted, fuzz_settings, outcome

# Hypothesis properties: make test runs them, make test-fast skips them (README, Development).
pytestmark = pytest.mark.slow

NAME = "prices.yaml"
PROP = "pricing files: valid / mutated / broken YAML"

# A YAML tree we emit ourselves, so that it can hold what a dict cannot (duplicate keys) and
# scalars written exactly as a person would (dates, numbers, broken ones).
Pairs = list[tuple[str, Any]]  # a mapping, in order, keys may repeat


@dataclass
class Seq:
    items: list[Any]


def emit(node: Any, indent: int = 0) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(node, Seq):
        for item in node.items:
            sub = emit(item, indent + 2)
            if isinstance(item, list) and sub:
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {item if not isinstance(item, (list, Seq)) else '[]'}")
        return lines
    for key, value in node:
        if isinstance(value, (list, Seq)) and value and (not isinstance(value, Seq) or value.items):
            lines.append(f"{pad}{key}:")
            lines.extend(emit(value, indent + 2))
        elif isinstance(value, (list, Seq)):
            lines.append(f"{pad}{key}: {'[]' if isinstance(value, Seq) else '{}'}")
        else:
            lines.append(f"{pad}{key}: {value}")
    return lines


# -- valid tables --------------------------------------------------------------------------------

prices = st.sampled_from(["0", "0.1", "1", "1.25", "2.50", "0.075", "15", "1_000", "0.000001", "3e-2"])
RATES = [
    "input",
    "cached_input",
    "cache_write",
    "output",
    "audio_input",
    "audio_output",
    "image_input",
    "image_output",
]
model_names = st.from_regex(r"(gpt|o|dall-e|ft:gpt)-[a-z0-9][a-z0-9.\-]{0,12}", fullmatch=True)


@st.composite
def rates(draw: st.DrawFn) -> Pairs:
    chosen = draw(st.lists(st.sampled_from(RATES), min_size=1, max_size=4, unique=True))
    return [(name, draw(prices)) for name in chosen]


@st.composite
def model_entry(draw: st.DrawFn) -> Pairs:
    kind = draw(st.sampled_from(["tokens", "tokens", "image", "minute", "chars"]))
    entry: Pairs = [("source", '"prices.csv row"')]
    if kind == "tokens":
        entry += draw(rates())
        if draw(st.booleans()):
            entry.append(
                ("long_context", [("threshold", str(draw(st.integers(1, 400_000)))), *draw(rates())])
            )
        if draw(st.booleans()):
            tiers = draw(st.lists(st.sampled_from(["batch", "flex", "priority"]), min_size=1, unique=True))
            entry.append(("tiers", [(t, draw(rates())) for t in tiers]))
    elif kind == "image":
        sizes = draw(
            st.lists(st.sampled_from(["1024x1024", "256x256", "1792x1024"]), min_size=1, unique=True)
        )
        entry.append(("per_image", [("standard", [(s, draw(prices)) for s in sizes])]))
    elif kind == "minute":
        entry.append(("per_minute", draw(prices)))
    else:
        entry.append(("per_1m_characters", draw(prices)))
    if draw(st.booleans()):
        years = sorted(draw(st.lists(st.integers(2020, 2026), min_size=1, max_size=3, unique=True)))
        entry.append(
            (
                "history",
                Seq(
                    [
                        [
                            ("until", f"{y}-0{draw(st.integers(1, 9))}-1{draw(st.integers(0, 9))}"),
                            *draw(rates()),
                        ]
                        for y in years
                    ]
                ),
            )
        )
    if draw(st.booleans()):
        entry.append(("note", '"why this price"'))
    return entry


@st.composite
def price_table(draw: st.DrawFn) -> Pairs:
    names = draw(st.lists(model_names, min_size=1, max_size=5, unique=True))
    table: Pairs = [("version", f'"openai-{draw(st.integers(2024, 2030))}.1"')]
    if draw(st.booleans()):
        table.append(("currency", "USD"))
    table.append(("models", [(name, draw(model_entry())) for name in names]))
    return table


# -- mutations -----------------------------------------------------------------------------------

WRONG = [
    '"abc"',
    "[1, 2]",
    "{a: 1}",
    "true",
    "null",
    "~",
    ".inf",
    "-.inf",
    ".nan",
    "1:30.5",
    "1:30",
    "0x1F",
    "0o17",
    "1e400",
    "-1e400",
    "2024-01-01",
    '""',
    "-0",
    "!!binary aGVsbG8=",
    "&a 1",
    "*a",
    "!!str 1",
    "'1.5'",
    "99999999999999999999999999999999",
    "1.0e+999999999999",
    "EUR",
    "|\n  text",
    "? x",
]
BAD_DATES = [
    "2024-02-30",
    "2024-13-01",
    "2023-02-29",
    "0000-01-01",
    "2024-1-1",
    "9999-99-99",
    "2024-01-01 25:00:00",
    "2024-01-01T10:00:99",
    "2024-04-31",
    "20240101",
    "2024-00-10",
]
NEGATIVE = ["-1", "-0.5", "-0.000001", "-1_000"]
UNKNOWN = ["bogus", "input_price", "Input", "cached", "until", "tier", "models", "<<"]


def _mappings(node: Any, out: list[Pairs]) -> list[Pairs]:
    if isinstance(node, Seq):
        for item in node.items:
            _mappings(item, out)
    elif isinstance(node, list):
        out.append(node)
        for _, value in node:
            _mappings(value, out)
    return out


@st.composite
def mutate(draw: st.DrawFn, table: Pairs) -> Pairs:
    mappings = _mappings(table, [])
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(mappings))
        op = draw(
            st.sampled_from(["wrong", "missing", "date", "negative", "unknown", "duplicate", "shuffle"])
        )
        if not target:
            target.append((draw(st.sampled_from(UNKNOWN)), draw(st.sampled_from(WRONG))))
            continue
        i = draw(st.integers(0, len(target) - 1))
        key, value = target[i]
        if op == "wrong":
            target[i] = (key, draw(st.sampled_from(WRONG)))
        elif op == "missing":
            del target[i]
        elif op == "date":
            target[i] = ("until", draw(st.sampled_from(BAD_DATES)))
        elif op == "negative":
            target[i] = (key, draw(st.sampled_from(NEGATIVE)))
        elif op == "unknown":
            target.insert(i, (draw(st.sampled_from(UNKNOWN)), draw(prices | st.sampled_from(WRONG))))
        elif op == "duplicate":
            target.insert(i, (key, value))
        else:
            target.reverse()  # history out of order, version after models, ...
    return table


@st.composite
def broken_text(draw: st.DrawFn, text: str) -> str:
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "dedent", "cut"]))
        if op == "insert":
            text = (
                text[:at]
                + draw(st.sampled_from([*":{}[]-\t'\"&*!|>%@`#,?", "\n  ", ": :", "\x00"]))
                + text[at:]
            )
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 12)) :]
        elif op == "dedent":
            lines = text.split("\n")
            j = draw(st.integers(0, len(lines) - 1))
            lines[j] = lines[j].lstrip() if draw(st.booleans()) else " " + lines[j]
            text = "\n".join(lines)
        else:
            text = text[:at]
    return text


@st.composite
def price_texts(draw: st.DrawFn) -> tuple[str, str]:
    table = draw(price_table())
    # Hypothesis draws the first choices most: mutated tables first, valid ones last.
    how = draw(st.sampled_from(["mutated", "both", "broken", "mutated", "garbage", "valid"]))
    if how in ("mutated", "both"):
        table = draw(mutate(table))
    text = "\n".join(emit(table)) + "\n"
    if how in ("broken", "both"):
        text = draw(broken_text(text))
    if how == "garbage":
        text = draw(st.text(max_size=200))
    return how, text


# Problems of the whole file, which has no field to name.
WHOLE_FILE = (
    "empty price file (expected `version:` and `models:`)",
    "a price file is a mapping with `version:` and `models:`",
)


def check_error(exc: PricingError, text: str) -> None:
    check_located_error(exc, text, NAME, WHOLE_FILE)


@given(case=price_texts())
@fuzz_settings(500)
def test_price_text_gives_a_table_or_a_located_error(case: tuple[str, str]) -> None:
    how, text = case
    with counted(PROP):
        try:
            table = parse_price_text(text, NAME)
        except PricingError as exc:
            assert how != "valid", f"a valid table was refused: {exc}\n{text}"
            check_error(exc, text)
            outcome(PROP, f"{how}: PricingError")
        else:
            outcome(PROP, f"{how}: table")
            assert table.models or "models: {}" in text or how != "valid"
            for price in table.models.values():
                assert price.source  # the schema's promises hold for what it accepts
                dates = [h.until for h in price.history]
                assert dates == sorted(dates)


def test_a_file_on_disk_reads_as_its_text(tmp_path: Any) -> None:
    """``load_price_file`` is ``parse_price_text`` with the path as the name."""
    path = tmp_path / NAME
    path.write_text('version: "v"\nmodels:\n  m: {source: s, input: -1}\n')
    try:
        load_price_file(path)
    except PricingError as exc:
        assert str(exc) == f"{path}:3: models.m.input: Input should be greater than or equal to 0"
    else:
        raise AssertionError("a negative price was accepted")

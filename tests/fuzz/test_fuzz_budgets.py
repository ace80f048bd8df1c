"""Budgets files (hypothesis): valid files, the same files with fields mutated (wrong types,
unknown keys, negative or non-finite limits, bad windows, thresholds and time zones, broken
webhooks) and their text broken (stray characters, lost indentation, cut short).
``parse_budgets_text`` returns the budgets or raises ``BudgetsFileError`` whose every line reads
``file:line: field: problem`` with a line inside the file; never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracked_openai.budgets import Budget, BudgetsFileError, parse_budgets_text
from tracked_openai.budgets._model import to_nano

from ._located import check_located_error
from ._tally import counted, fuzz_settings, outcome

pytestmark = pytest.mark.slow

NAME = "budgets.yaml"
PROP = "budgets files: valid / mutated / broken YAML"

Item = list[tuple[str, str]]

SCOPES = [
    ("feature", ["visual_generation", "crs_analysis", "pid_verification"]),
    ("operation", ["verify_diagram", "embed_document"]),
    ("model", ["gpt-4o", "gpt-4o-mini", "gpt-image-1"]),
    ("tag", ["tenant", "user"]),
]


@st.composite
def budget_item(draw: st.DrawFn) -> Item:
    item: Item = [("usd", draw(st.sampled_from(["1", "5", "0.5", "2000", "12.75", "1_000"])))]
    for key, values in draw(st.lists(st.sampled_from(SCOPES), max_size=2, unique_by=lambda s: s[0])):
        item.append((key, draw(st.sampled_from(values))))
    if draw(st.booleans()):
        item.append(("per", draw(st.sampled_from(["day", "week", "month", "24h", "1h", "72h"]))))
    action = draw(st.sampled_from(["block", "alert", None]))
    if action:
        item.append(("action", action))
    if draw(st.booleans()):
        item.append(("alert_at", draw(st.sampled_from(["[0.5, 0.8, 1.0]", "[0.9]", "[1.0]", "[0.25, 0.5]"]))))
    if draw(st.booleans()):
        item.append(("fail", draw(st.sampled_from(["open", "closed"]))))
    if draw(st.booleans()):
        item.append(("tz", draw(st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]))))
    return item


@st.composite
def webhook_item(draw: st.DrawFn) -> Item:
    item: Item = [("url", draw(st.sampled_from(["https://hooks.example/a", "http://127.0.0.1:9/x"])))]
    if draw(st.booleans()):
        item.append(("slack", draw(st.sampled_from(["true", "false"]))))
    if draw(st.booleans()):
        item.append(("timeout", draw(st.sampled_from(["1", "5", "30.5"]))))
    return item


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
    "-1",
    "0",
    "-0.5",
    "1e400",
    "2024-01-01",
    '""',
    "!!binary aGVsbG8=",
    "*a",
    "'1.5'",
    "99999999999999999999999",
    "fortnight",
    "0h",
    "-3h",
    "Mars/Olympus",
    "[2.0]",
    "[-0.1]",
    "[]",
    "[a]",
    "ftp://x",
    "maybe",
]
UNKNOWN = ["bogus", "limit", "USD", "window", "features", "tags", "<<", "budgets"]


def emit(budgets: list[Item], webhooks: list[Item]) -> str:
    lines = ["budgets:"] if budgets else ["budgets: []"]
    for item in budgets:
        for i, (key, value) in enumerate(item):
            lines.append(f"  {'- ' if i == 0 else '  '}{key}: {value}")
    if webhooks:
        lines.append("webhooks:")
        for item in webhooks:
            for i, (key, value) in enumerate(item):
                lines.append(f"  {'- ' if i == 0 else '  '}{key}: {value}")
    return "\n".join(lines) + "\n"


@st.composite
def budgets_texts(draw: st.DrawFn) -> tuple[str, str]:
    budgets = draw(st.lists(budget_item(), min_size=0, max_size=4))
    webhooks = draw(st.lists(webhook_item(), max_size=2))
    how = draw(st.sampled_from(["valid", "mutated", "mutated", "broken"]))
    if how == "mutated":
        items = budgets + webhooks
        if not items:
            budgets = [[("usd", draw(st.sampled_from(WRONG)))]]
        for _ in range(draw(st.integers(1, 3))):
            if not items:
                break
            target = draw(st.sampled_from(items))
            op = draw(st.sampled_from(["wrong", "unknown", "drop"]))
            if op == "wrong":
                i = draw(st.integers(0, len(target) - 1))
                target[i] = (target[i][0], draw(st.sampled_from(WRONG)))
            elif op == "unknown":
                target.append((draw(st.sampled_from(UNKNOWN)), draw(st.sampled_from(["1", "x"]))))
            elif len(target) > 1:
                target.pop(0)  # the first key: for a budget, its limit
            else:
                target[0] = ("name", "orphan")
    text = emit(budgets, webhooks)
    if how == "broken":
        lines = text.split("\n")
        cut = draw(st.sampled_from(["chars", "indent", "truncate", "tab"]))
        i = draw(st.integers(0, max(0, len(lines) - 2)))
        if cut == "chars":
            lines[i] = lines[i] + draw(st.sampled_from([" :", " - x", "\t", " {", " [", " &", " *", '"']))
        elif cut == "indent":
            lines[i] = lines[i].lstrip()
        elif cut == "tab":
            lines[i] = "\t" + lines[i]
        text = "\n".join(lines)
        if cut == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
    return how, text


@given(case=budgets_texts())
@fuzz_settings(400)
def test_budgets_text_gives_budgets_or_a_located_error(case: tuple[str, str]) -> None:
    how, text = case
    with counted(PROP):
        try:
            parsed = parse_budgets_text(text, NAME)
        except BudgetsFileError as exc:
            assert how != "valid", f"a valid budgets file was refused: {exc}\n{text}"
            check_located_error(exc, text, NAME)
            outcome(PROP, f"{how}: BudgetsFileError")
        else:
            outcome(PROP, f"{how}: budgets")
            for budget in parsed.budgets:
                assert isinstance(budget, Budget)
                # $0 is a limit too (a block budget that stops every paid call: a kill switch).
                assert budget.usd >= 0 and budget.limit_nano == to_nano(budget.usd)
            if how == "valid":
                assert len(parsed.budgets) == text.count("  - usd:")

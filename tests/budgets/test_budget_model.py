"""Budget declarations, windows and the budgets file (file:line: field: problem)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tracked_openai.budgets import (
    Budget,
    BudgetExceeded,
    BudgetsFileError,
    load_budgets_file,
    parse_budgets_text,
)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class TestBudget:
    def test_scope_keys_and_matching(self) -> None:
        """Keys name scope and window, not the limit; tag budgets get one key per value."""
        feature = Budget(feature="visual_generation", usd=50, per="day")
        assert feature.key == "feature=visual_generation|day"
        assert feature.matches("visual_generation", None, "gpt-4o", None) == feature.key
        assert feature.matches("crs_analysis", None, "gpt-4o", None) is None
        op = Budget(feature="f", operation="o", usd=1)
        assert op.matches("f", "o", None, None) == op.key
        assert op.matches("f", "other", None, None) is None
        model = Budget(model="gpt-4o", usd=1)
        assert model.matches("any", None, "gpt-4o-mini", None) is None
        tag = Budget(tag="tenant", usd=5)
        assert tag.matches("f", None, None, {"tenant": "acme"}) == "tag=tenant|day|tenant=acme"
        assert tag.matches("f", None, None, {"tenant": "zeta"}) == "tag=tenant|day|tenant=zeta"
        assert tag.matches("f", None, None, {}) is None
        one = Budget(tag="tenant=acme", usd=5)
        assert one.matches("f", None, None, {"tenant": "acme"}) == "tag=tenant=acme|day"
        assert one.matches("f", None, None, {"tenant": "zeta"}) is None
        app = Budget(usd=2000, per="month", action="alert")
        assert app.key == "app|month|alert" and app.thresholds == (1.0,)
        assert Budget(usd=1).thresholds == (0.8, 1.0)
        assert Budget(usd=1, name="mine").key == "mine"

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"usd": -1}, "usd"),
            ({"usd": "lots"}, "usd"),
            ({"usd": 1, "per": "fortnight"}, "per"),
            ({"usd": 1, "action": "stop"}, "action"),
            ({"usd": 1, "fail": "maybe"}, "fail"),
            ({"usd": 1, "alert_at": [0]}, "alert_at"),
            ({"usd": 1, "tz": "Mars/Olympus"}, "tz"),
        ],
    )
    def test_invalid_fields_are_named(self, kwargs: dict[str, object], field: str) -> None:
        with pytest.raises(ValueError, match=f"Budget {field}:"):
            Budget(**kwargs)  # type: ignore[arg-type]

    def test_calendar_windows_in_their_time_zone(self) -> None:
        """23:30 UTC on Sunday 6 Dec is already Monday 7 Dec in Paris: a new day and ISO week."""
        now = _ts("2026-12-06T23:30:00+00:00")
        assert Budget(usd=1, per="day").window(now).key == "2026-12-06"
        assert Budget(usd=1, per="day", tz="Europe/Paris").window(now).key == "2026-12-07"
        assert Budget(usd=1, per="week").window(now).key == "2026-W49"
        assert Budget(usd=1, per="week", tz="Europe/Paris").window(now).key == "2026-W50"
        month = Budget(usd=1, per="month").window(_ts("2026-12-31T12:00:00+00:00"))
        assert month.key == "2026-12" and month.end == datetime(2027, 1, 1, tzinfo=month.end.tzinfo)
        dst = Budget(usd=1, per="day", tz="Europe/Paris").window(_ts("2026-03-29T12:00:00+00:00"))
        assert dst.end.timestamp() - dst.start.timestamp() == 23 * 3600  # the spring-forward day

    def test_rolling_window_counts_in_twelfths(self) -> None:
        b = Budget(usd=1, per="24h")
        w = b.window(_ts("2026-12-07T10:30:00+00:00"))
        assert w.rolling and w.key.startswith("r")
        # The current two-hour step (10:00-12:00) and the twelve before it.
        assert w.start == datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
        assert w.end == datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
        assert b.window(_ts("2026-12-07T11:59:00+00:00")).key == w.key
        assert b.window(_ts("2026-12-07T12:00:00+00:00")).index == w.index + 1

    def test_exception_names_budget_window_spent_reserved_limit(self) -> None:
        b = Budget(feature="f", usd=1)
        exc = BudgetExceeded(b, b.key, "2026-12-07", Decimal("0.9"), Decimal("0.05"), Decimal("0.1"))
        text = str(exc)
        for part in ("feature=f|day", "2026-12-07", "0.900000", "0.050000", "0.100000", "$1"):
            assert part in text
        assert exc.limit == Decimal(1) and exc.spent == Decimal("0.9")
        import pickle

        assert str(pickle.loads(pickle.dumps(exc))) == text


class TestBudgetsFile:
    def test_valid_file(self, tmp_path: Path) -> None:
        path = tmp_path / "budgets.yaml"
        path.write_text(
            "budgets:\n"
            "  - feature: visual_generation\n    usd: 50\n    per: day\n    action: block\n"
            "  - feature: crs_analysis\n    usd: 500.25\n    per: month\n    action: alert\n"
            "    alert_at: [0.5, 0.8, 1.0]\n"
            "  - tag: tenant\n    usd: 5\n"
            "  - usd: 2000\n    per: 24h\n    action: alert\n    tz: Europe/Paris\n"
            "webhooks:\n  - url: https://hooks.example.com/x\n    slack: true\n"
        )
        loaded = load_budgets_file(path)
        assert [b.key for b in loaded.budgets] == [
            "feature=visual_generation|day",
            "feature=crs_analysis|month|alert",
            "tag=tenant|day",
            "app|24h|alert",
        ]
        assert loaded.budgets[1].usd == Decimal("500.25")
        assert loaded.budgets[1].thresholds == (0.5, 0.8, 1.0)
        assert loaded.webhooks[0].url == "https://hooks.example.com/x" and loaded.webhooks[0].slack

    def test_every_problem_named_with_file_and_line(self) -> None:
        text = (
            "budgets:\n"  # 1
            "  - usd: lots\n"  # 2
            "    per: fortnight\n"  # 3
            "    colour: red\n"  # 4
            "  - feature: x\n"  # 5
            "  - usd: 1\n"  # 6
            "    alert_at: [0.5, -1]\n"  # 7
            "    tz: Nowhere/Land\n"  # 8
            "    action: stop\n"  # 9
            "webhooks:\n"  # 10
            "  - url: ftp://x\n"  # 11
        )
        with pytest.raises(BudgetsFileError) as info:
            parse_budgets_text(text, "budgets.yaml")
        lines = str(info.value).splitlines()
        assert "budgets.yaml:2: budgets[0].usd: must be a number of dollars >= 0 (got 'lots')" in lines
        assert any(
            line.startswith("budgets.yaml:3: budgets[0].per: must be day, week, month") for line in lines
        )
        assert any(line.startswith("budgets.yaml:4: budgets[0].colour: unknown field") for line in lines)
        assert "budgets.yaml:5: budgets[1].usd: missing (the limit in dollars)" in lines
        assert any(line.startswith("budgets.yaml:7: budgets[2].alert_at:") for line in lines)
        assert "budgets.yaml:8: budgets[2].tz: unknown time zone 'Nowhere/Land'" in lines
        assert any(line.startswith("budgets.yaml:9: budgets[2].action:") for line in lines)
        assert "budgets.yaml:11: webhooks[0].url: must be an http(s) URL" in lines

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("", "b.yaml:1: (top level): empty budgets file"),
            ("budgets: [\n", "b.yaml:2: invalid YAML"),
            ("- usd: 1\n", "b.yaml:1: (top level): a mapping"),
            ("budgets:\n  usd: 1\n", "b.yaml:2: budgets: must be a list"),
            ("budgets: []\nbudgets: []\n", "b.yaml:2: budgets: duplicate key"),
        ],
    )
    def test_malformed_documents(self, text: str, expected: str) -> None:
        with pytest.raises(BudgetsFileError, match="^" + expected.replace("(", r"\(").replace(")", r"\)")):
            parse_budgets_text(text, "b.yaml")

    def test_unreadable_file(self, tmp_path: Path) -> None:
        with pytest.raises(BudgetsFileError, match=r"missing.yaml:1: cannot read budgets file"):
            load_budgets_file(tmp_path / "missing.yaml")

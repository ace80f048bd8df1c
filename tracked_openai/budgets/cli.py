"""``tracked-openai budgets``: spend, reserved, limit, window, a bar and the projected
end-of-window spend of each budget, read from the ledger."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_commands", "cmd_budgets"]

_BAR = 20


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "budgets",
        help="where each budget stands in its current window",
        description="Spend, reserved, limit, window and projected end-of-window spend of each budget "
        "(from the budgets file and the ledger).",
    )
    p.add_argument("--budgets", default=None, help="budgets file (default: $TRACKED_OPENAI_BUDGETS)")
    p.add_argument(
        "--ledger-url",
        default=None,
        help="ledger (default: $TRACKED_OPENAI_LEDGER_URL, else the SQLite file)",
    )
    p.set_defaults(handler=cmd_budgets)


def bar(used: float) -> str:
    filled = max(0, min(_BAR, round(used * _BAR)))
    return "█" * filled + "░" * (_BAR - filled)


def cmd_budgets(args: argparse.Namespace) -> int:
    from ._file import BudgetsFileError, load_budgets_file
    from ._ledger import LedgerUnavailableError
    from ._status import budget_status

    path = args.budgets or os.environ.get("TRACKED_OPENAI_BUDGETS")
    if not path:
        # Nothing to show is not an error: an app without budgets is the usual case.
        print("no budgets configured (pass --budgets FILE or set TRACKED_OPENAI_BUDGETS)")
        return 0
    try:
        budgets = load_budgets_file(path).budgets
    except BudgetsFileError as exc:
        print(f"tracked-openai budgets: error:\n{exc}", file=sys.stderr)
        return 1
    try:
        rows = budget_status(budgets, args.ledger_url)
    except LedgerUnavailableError as exc:
        print(f"tracked-openai budgets: error: ledger unavailable: {exc}", file=sys.stderr)
        return 3
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Budgets")
    for name in ("budget", "action", "window", "spent", "reserved", "limit", "used", "projected"):
        table.add_column(
            name, justify="right" if name in ("spent", "reserved", "limit", "projected") else "left"
        )
    for r in rows:
        table.add_row(
            r["budget"],
            r["action"],
            r["window"],
            f"${r['spent_usd']:.4f}",
            f"${r['reserved_usd']:.4f}",
            f"${r['limit_usd']}",
            f"{bar(r['used'])} {r['used']:.0%}",
            f"${r['projected_usd']:.4f}",
        )
    Console(width=160).print(table)
    return 0

"""The fuzz tests' summary: one line per property with the cases tried and the cases that failed,
printed after the run (``make test`` shows it above the final counts)."""

from __future__ import annotations

from typing import Any

from ._tally import BUDGET, DERANDOMIZED, ENV, OUTCOMES, TALLY


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY:
        return
    tr = terminalreporter
    tr.write_sep("-", "fuzz cases (hypothesis)")
    width = max(len(name) for name in TALLY)
    tr.write_line(f"{'property':<{width}}  {'cases':>7}  {'failures':>8}")
    for name in sorted(TALLY):
        cases, failures = TALLY[name]
        tr.write_line(f"{name:<{width}}  {cases:>7}  {failures:>8}")
        seen = OUTCOMES.get(name)
        if seen:
            tr.write_line("    " + ", ".join(f"{label}: {n}" for label, n in seen.most_common(8)))
    total = sum(row[0] for row in TALLY.values())
    failed = sum(row[1] for row in TALLY.values())
    budget = f"{ENV}={BUDGET}" if BUDGET else f"default examples ({ENV} unset)"
    seeds = "derandomized (CI)" if DERANDOMIZED else "random"
    tr.write_line(f"{'total':<{width}}  {total:>7}  {failed:>8}   [{budget}; {seeds}]")

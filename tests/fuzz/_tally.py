"""Counts of the fuzz cases tried, per property, printed at the end of the test run (see
``conftest.py``), and the example budget each property runs with.

``TRACKED_OPENAI_FUZZ_EXAMPLES=N`` runs every property with N examples instead of its default
(the defaults keep the fuzz tests to about a minute on a 2-core machine). Under CI (``CI`` set) the
examples are derandomized, so a run is reproducible; elsewhere each run draws new ones.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import HealthCheck, settings

ENV = "TRACKED_OPENAI_FUZZ_EXAMPLES"


def _budget() -> int | None:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: expected a whole number of examples") from None
    if value < 1:
        raise ValueError(f"{ENV}={raw!r}: expected at least 1")
    return value


BUDGET = _budget()
DERANDOMIZED = bool(os.environ.get("CI"))

# property -> [cases tried, tests failed]
TALLY: dict[str, list[int]] = {}
_FAILED: set[tuple[str, str]] = set()
# property -> what its cases came to (the caller's exception type, a status code, ...)
OUTCOMES: dict[str, Counter[str]] = {}


def fuzz_settings(default_examples: int, **overrides: Any) -> settings:
    """Hypothesis settings for one property: its default example count (or the environment's),
    no per-example deadline (the machine is shared), and the ``records`` fixture allowed (each
    example counts its own records)."""
    return settings(
        max_examples=BUDGET or default_examples,
        deadline=None,
        derandomize=DERANDOMIZED,
        database=None if DERANDOMIZED else settings.default.database,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
        **overrides,
    )


@contextmanager
def counted(prop: str) -> Iterator[None]:
    """Count one case of ``prop``; a failing case marks its test failed (once: hypothesis runs a
    failing test's cases again while it shrinks them, and those are cases, not failures)."""
    row = TALLY.setdefault(prop, [0, 0])
    row[0] += 1
    try:
        yield
    except BaseException:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
        if (prop, test) not in _FAILED:
            _FAILED.add((prop, test))
            row[1] += 1
        raise


def outcome(prop: str, label: str) -> None:
    """Note what one case of ``prop`` came to, for the summary's breakdown."""
    OUTCOMES.setdefault(prop, Counter())[label] += 1

"""Calls written through the library (tracked client over the fake OpenAI transport) in one
mode, for the call-totals tests: the Python API's (tests/reports/test_totals.py) and the CLI's
and REST API's (tests/reports/test_totals_surfaces.py, tests/django/test_totals_django.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tracked_openai
from tests.helpers.fakeopenai import FakeOpenAI
from tests.mlflow.traces.helpers import Made, make_records
from tracked_openai.sinks.modes import mode_sinks
from tracked_openai.testing import TrackedRecords

__all__ = ["SAME", "figures", "settings_restored", "unique_feature", "write_calls"]

# What may differ between two ways of adding up the same calls.
SAME = ("method", "fallback_reason")


@pytest.fixture
def settings_restored() -> Iterator[None]:
    """``configure()`` below changes the process's settings: put them back."""
    from tracked_openai._config import settings

    saved = dict(settings.__dict__)
    yield
    settings.__dict__.clear()
    settings.__dict__.update(saved)


def write_calls(
    mode: str, uri: str, fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path, feature: str
) -> Made:
    """``make_records`` (5 calls: 4 in operations of ``feature``, 1 outside any, under
    ``feature + "_default"``) written to ``uri`` in ``mode`` (``runs``, ``traces``,
    ``runs+traces``), flushed, nothing spooled."""
    # A feature of its own: the session's server holds other tests' experiments too.
    tracked_openai.configure(
        experiment_prefix=f"totals-{time.time_ns()}-",
        default_feature=feature + "_default",
        spool_dir=str(tmp_path / "spool"),
    )
    tracked_openai.configure(sinks=[*mode_sinks(mode, uri, timeout=120), records.sink])
    records.sink.clear()
    make_records(fake, records, feature=feature)
    assert tracked_openai.flush(timeout=120)
    assert tracked_openai.stats().get("spooled", 0) == 0
    return Made(records.records)  # (read after the flush: the MLflow sinks come first)


def figures(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in SAME}


def unique_feature(prefix: str) -> str:
    return f"{prefix}_{time.time_ns()}"

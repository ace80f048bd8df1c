"""Pytest helpers for applications that use tracked-openai (registered as a pytest plugin).

``tracked_records`` routes every record to an in-memory sink for the test and fails the test if
tracked-openai swallowed an internal error while it ran::

    def test_summary_is_tracked(tracked_records):
        summarize("...")
        tracked_records.flush()
        assert tracked_records.calls[0].feature == "summaries"
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._config import settings
from ._errors import set_internal_error_hook
from .export import runtime
from .records import CallRecord, OperationRecord, Record
from .sinks import InMemorySink

__all__ = ["TrackedRecords", "tracked_records"]


class TrackedRecords:
    """The records of one test, with a synchronous ``flush``."""

    def __init__(self, sink: InMemorySink) -> None:
        self.sink = sink
        self.internal_errors: list[BaseException] = []

    def flush(self) -> None:
        runtime.flush(timeout=30)

    @property
    def records(self) -> list[Record]:
        self.flush()
        return self.sink.records

    @property
    def calls(self) -> list[CallRecord]:
        self.flush()
        return self.sink.calls

    @property
    def operations(self) -> list[OperationRecord]:
        self.flush()
        return self.sink.operations


@pytest.fixture
def tracked_records() -> Iterator[TrackedRecords]:
    """Send records to memory for this test; fail it on any swallowed internal error."""
    sink = InMemorySink()
    state = TrackedRecords(sink)
    previous_enabled = settings.enabled
    previous_sinks = runtime.configured_sinks()
    runtime.configure(sinks=[sink], enabled=True)
    set_internal_error_hook(state.internal_errors.append)
    try:
        yield state
        runtime.flush(timeout=30)
    finally:
        set_internal_error_hook(None)
        runtime.shutdown(timeout=30)
        runtime.restore_sinks(previous_sinks)
        settings.enabled = previous_enabled
    if state.internal_errors:
        first = state.internal_errors[0]
        raise AssertionError(
            f"tracked_openai swallowed {len(state.internal_errors)} internal error(s); first: {first!r}"
        ) from first

"""Where records go. A sink is anything with ``export(records)``; ``force_flush()`` and
``shutdown()`` are optional.

``export`` receives a batch (a list) of prepared records on the exporter's thread. It raises to
signal failure (the exporter retries and, past that, spools); it must be idempotent by
``record_id`` because a retried or replayed batch may contain records it has already seen.

"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..records import CallRecord, OperationRecord, Record

__all__ = ["InMemorySink", "JsonlSink", "Sink"]


@runtime_checkable
class Sink(Protocol):
    """The sink interface: ``export`` is required, the other two are optional."""

    def export(self, records: Sequence[Record]) -> None:
        """Persist ``records``; raise on failure. Must be idempotent by ``record_id``."""

    def force_flush(self) -> None:
        """Make everything exported so far durable."""

    def shutdown(self) -> None:
        """Release resources; called once by ``tracked_openai.shutdown()``."""


class InMemorySink:
    """Keeps records in a list (tests, notebooks). Idempotent by ``record_id``."""

    def __init__(self) -> None:
        self._records: list[Record] = []
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def export(self, records: Sequence[Record]) -> None:
        with self._lock:
            for record in records:
                if record.record_id not in self._ids:
                    self._ids.add(record.record_id)
                    self._records.append(record)

    @property
    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    @property
    def calls(self) -> list[CallRecord]:
        return [r for r in self.records if isinstance(r, CallRecord)]

    @property
    def operations(self) -> list[OperationRecord]:
        return [r for r in self.records if isinstance(r, OperationRecord)]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._ids.clear()

    def force_flush(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


class JsonlSink:
    """Appends one JSON object per record to a file (``to_dict()`` form), fsync'd per batch."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def export(self, records: Sequence[Record]) -> None:
        lines = "".join(json.dumps(r.to_dict(), separators=(",", ":")) + "\n" for r in records)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(lines)
                fh.flush()
                os.fsync(fh.fileno())

    def force_flush(self) -> None:
        return None

    def shutdown(self) -> None:
        return None

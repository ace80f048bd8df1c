"""Background exporter: records leave the caller's thread in O(1) and reach sinks in batches.

``submit()`` appends to a bounded deque and, at most, sets an event: it never blocks and never
raises. One daemon worker thread (started lazily, restarted in a forked child) prepares records
(pricing, roll-ups), groups them in batches and hands each batch to every sink.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import logger, report_internal_error
from .records import Record

__all__ = ["Exporter"]


class Exporter:
    """Bounded queue + one worker thread feeding a list of sinks."""

    def __init__(
        self,
        sinks: Sequence[Any],
        *,
        prepare: Callable[[Record], None] | None = None,
        queue_size: int = 10_000,
        batch_size: int = 256,
        flush_interval: float = 1.0,
        exit_timeout: float = 5.0,
    ) -> None:
        self.sinks = list(sinks)
        self._prepare = prepare
        self._queue: deque[Record] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._interval = flush_interval
        self._exit_timeout = exit_timeout
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._closed = False
        self.counters: dict[str, int] = {
            "submitted": 0,
            "exported": 0,
            "failed": 0,
            "dropped": 0,
        }
        atexit.register(self._at_exit)

    # -- caller side -----------------------------------------------------------------------
    def submit(self, record: Record) -> None:
        """Queue ``record``; O(1), never blocks, never raises."""
        try:
            if self._closed:
                self._export_now([record])
                return
            if self._thread is None or self._pid != os.getpid():
                self._ensure_worker()
            if len(self._queue) >= self._queue_size:
                self.counters["dropped"] += 1
                return
            self._queue.append(record)
            self.counters["submitted"] += 1
            if len(self._queue) >= self._batch_size:
                self._wake.set()
        except Exception as exc:  # pragma: no cover - defensive
            report_internal_error(exc, "exporter.submit")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far reached the sinks. ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is None or not self._thread.is_alive():
            # No worker (never started, or interpreter shutting down): export inline.
            self._drain_inline()
            return True
        self._wake.set()
        with self._idle:
            while self._queue or self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._wake.set()
                self._idle.wait(0.05 if remaining is None else min(0.05, remaining))
        for sink in self.sinks:
            flush = getattr(sink, "force_flush", None)
            if flush is not None:
                try:
                    flush()
                except Exception as exc:
                    report_internal_error(exc, "sink.force_flush")
        return True

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush, stop the worker and shut the sinks down. Idempotent."""
        ok = self.flush(timeout)
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout)
        for sink in self.sinks:
            close = getattr(sink, "shutdown", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    report_internal_error(exc, "sink.shutdown")
        try:
            atexit.unregister(self._at_exit)
        except Exception:  # pragma: no cover
            pass
        return ok

    def stats(self) -> dict[str, int]:
        return {**self.counters, "queued": len(self._queue)}

    # -- worker side -----------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        with self._lock:
            pid = os.getpid()
            if self._pid != pid:
                # Forked child: the parent's thread does not exist here and its queue belongs to
                # the parent (which exports it); start clean.
                self._pid = pid
                self._queue.clear()
                self._thread = None
                self._idle = threading.Condition()
                self._in_flight = 0
            if self._thread is not None and self._thread.is_alive():
                return
            thread = threading.Thread(target=self._run, name="tracked-openai-exporter", daemon=True)
            try:
                thread.start()
            except RuntimeError:
                # Interpreter shutting down: records are exported inline by flush().
                return
            self._thread = thread

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._drain_inline()
            if self._closed and not self._queue:
                return

    def _drain_inline(self) -> None:
        while True:
            batch: list[Record] = []
            with self._idle:
                while self._queue and len(batch) < self._batch_size:
                    batch.append(self._queue.popleft())
                self._in_flight += len(batch)
            if not batch:
                with self._idle:
                    self._idle.notify_all()
                return
            try:
                self._export_now(batch)
            finally:
                with self._idle:
                    self._in_flight -= len(batch)
                    self._idle.notify_all()

    def _export_now(self, batch: list[Record]) -> None:
        if self._prepare is not None:
            for record in batch:
                try:
                    self._prepare(record)
                except Exception as exc:
                    report_internal_error(exc, "prepare")
        for sink in self.sinks:
            try:
                sink.export(batch)
            except Exception as exc:
                self.counters["failed"] += len(batch)
                report_internal_error(exc, f"sink {type(sink).__name__}")
        self.counters["exported"] += len(batch)

    def _at_exit(self) -> None:
        try:
            if not self.flush(self._exit_timeout):
                logger.warning("tracked_openai: exit flush timed out with %d records queued", len(self._queue))
        except Exception as exc:  # pragma: no cover
            report_internal_error(exc, "exporter.at_exit")

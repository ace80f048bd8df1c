"""Delivery half of the exporter: sinks, retry, probe, spool, replay and the exit path.

``Exporter`` (``queue.py``) owns the queue and the threads and takes batches off the queue;
this base class gets a prepared batch to its sinks. A failing sink is retried with exponential
backoff and jitter (tenacity); when the retries run out the batch is spooled and the sink is
considered down: later batches go straight to the spool and a single attempt probes the sink
every ``retry_max`` seconds. When a probe succeeds the spool is replayed. The exit path (``exit``)
builds on this class.
Sinks are idempotent by ``record_id``, so a batch exported twice (retry after a partial
success, replay of a batch also in flight at exit) still makes one entry per record.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from tenacity import RetryError, Retrying, stop_after_attempt, wait_exponential_jitter

from .._errors import logger, report_internal_error
from ..records import Record
from .journal import Journal
from .spool import Spool

__all__ = ["Delivery", "sink_key"]

class _AbortError(Exception):
    """Raised from the backoff sleep to stop retrying (shutdown or exit deadline)."""


class _SinkFailedError(Exception):
    """At least one sink failed this attempt (tenacity retries on it)."""


def sink_key(sink: Any) -> str:
    """Which spool entries belong to ``sink``.

    A sink that names its destination with a ``spool_key`` string (``MlflowSink``: the tracking
    URI) gets its spooled records back in any later process. Any other sink gets a key unique to
    this object in this process: an in-memory or test sink must never receive records another
    process spooled for its own copy.
    """
    key = getattr(sink, "spool_key", None)
    if isinstance(key, str) and key:
        return key
    cls = type(sink)
    return f"{cls.__module__}.{cls.__qualname__}@{os.getpid()}:{id(sink):x}"


class Delivery(ABC):
    """Sinks, retry, spool, replay and exit, on the state ``Exporter`` sets up (``__init__``
    and, rebuilt in a forked child, ``_init_state``)."""

    # Set once by Exporter.__init__.
    sinks: list[Any]
    counters: dict[str, int]
    _factory: Callable[[], Sequence[Any]] | None
    _keys: list[str]
    _prepare: Callable[[Any], Record] | None
    _batch_size: int
    _exit_timeout: float
    _spool: Spool | None
    _retry_attempts: int
    _retry_initial: float
    _retry_max: float
    _replay_wanted: bool
    _replay: bool
    _before_exit: Callable[[], None] | None
    _warm_up: Callable[[], None] | None
    _set_up: bool
    _spool_warned: bool
    _exited: bool
    _closed: bool
    # Rebuilt by Exporter._init_state (and in a forked child).
    _queue: deque[Record]
    _overflow: deque[Record]
    _held: deque[tuple[list[Record], list[int]]]
    _wake: threading.Event
    _abort: threading.Event
    _idle: threading.Condition
    _lock: threading.Lock
    _in_flight: int
    _replaying: int
    _current: list[Record] | None
    _surrendered: list[Record] | None
    _preparing: list[Record] | None
    _down_until: float
    _down_logged: bool
    _started_replay: bool
    _ready: threading.Event
    _setup_lock: threading.Lock
    _current_lock: threading.Lock

    _interval: float
    _spool_wake: threading.Event

    @abstractmethod
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted so far is exported or spooled."""

    @abstractmethod
    def _take(self, source: deque[Record]) -> list[Record]:
        """Up to a batch from ``source``, counted in flight."""

    # -- the journal (journal=True; see journal_thread.py) ---------------------------------------
    _journal: Journal | None
    _staged: deque[Record]

    @abstractmethod
    def _adopt_journals(self) -> None:
        """Move journals of dead processes into the spool."""

    def _journal_done(self, batch: list[Record]) -> None:
        """``batch`` reached its sinks or the spool: the journal can forget it."""
        journal = self._journal
        if journal is not None:
            journal.done(batch)

    # -- the overflow, spooled by the spooler thread ---------------------------------------------
    def _run_spooler(self) -> None:
        while True:
            self._spool_wake.wait(self._interval)
            self._spool_wake.clear()
            try:
                self._drain_overflow()
            except Exception as exc:
                self._internal_error(exc, "exporter.spooler")
            if self._closed and not self._overflow:
                return

    def _drain_overflow(self) -> None:
        if self._overflow:
            self._resolve_sinks()  # the spool files name the sinks they are owed to
        while self._overflow:
            batch = self._take(self._overflow)
            try:
                self._prepare_batch(batch)
                self._store(batch, list(range(len(self.sinks))))
            finally:
                self._done(batch)

    def _setup(self) -> None:
        """Worker thread, once, at ``start()`` or after preparing the first batch: build the
        sinks, check the spool folder, warm up; then replay what earlier processes spooled."""
        self._resolve_sinks()
        if self._spool is not None:
            error = self._spool.check_writable()
            if error is not None:
                self._spool_unwritable(error, at_start=True)
        for sink in self.sinks:
            warm = getattr(sink, "warm_up", None)
            if warm is not None and not self._abort.is_set():  # not once the exit has given up
                try:
                    warm()
                except Exception as exc:
                    # A store that can't be reached yet is the sink's failure to report when
                    # it exports (retry, spool); nothing to add here.
                    logger.debug("tracked_openai: warming up %r failed: %s", sink, exc)
        if self._warm_up is not None:
            try:
                self._warm_up()
            except Exception as exc:
                self._internal_error(exc, "exporter.warm_up")
        self._set_up = True
        self._ready.set()
        if self._replay and not self._started_replay:
            self._started_replay = True
            self._adopt_journals()
            self._replay_spool(limit=None)

    def _resolve_sinks(self) -> None:
        """Build the sinks if they were given as a function (once; any thread that needs them
        waits for the one building them)."""
        if self._factory is None:
            return
        with self._setup_lock:
            factory = self._factory
            if factory is None:
                return
            try:
                sinks = list(factory())
            except Exception as exc:
                self._internal_error(exc, "exporter.sinks")
                sinks = []
            self.sinks = sinks
            self._keys = [sink_key(s) for s in sinks]
            self._replay = self._replay_wanted and bool(sinks) and self._spool is not None
            self._factory = None

    def _done(self, batch: list[Record]) -> None:
        with self._idle:
            self._in_flight -= len(batch)
            self._idle.notify_all()

    def _prepare_batch(self, batch: list[Record]) -> None:
        if self._prepare is None:
            return
        for i, item in enumerate(batch):
            try:
                batch[i] = self._prepare(item)
            except Exception as exc:
                self._internal_error(exc, "prepare")

    def _sink_up(self) -> bool:
        return self._down_until == 0.0

    def _sink_probe_due(self) -> bool:
        return time.monotonic() >= self._down_until

    def _deliver(self, batch: list[Record], targets: list[int]) -> bool:
        """Export ``batch`` to the sinks at ``targets``; spool (or hold) what still fails."""
        if not self.sinks:
            self._count("exported", len(batch))
            self._journal_done(batch)
            return True
        if not self._sink_probe_due() or self._abort.is_set():
            self._store(batch, targets)
            return False
        # A sink already known to be down gets one probe attempt, not a full retry cycle.
        attempts = 1 if not self._sink_up() else self._retry_attempts
        pending = self._export_with_retry(batch, targets, attempts)
        if pending:
            self._store(batch, pending)
            return False
        self._count("exported", len(batch))
        self._journal_done(batch)
        return True

    def _export_with_retry(self, batch: list[Record], targets: list[int], attempts: int) -> list[int]:
        pending = list(targets)
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential_jitter(
                multiplier=self._retry_initial, max=self._retry_max, jitter=self._retry_initial
            ),
            sleep=self._backoff_sleep,
        )
        try:
            for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self._count("retried", len(batch))
                    pending = self._export_once(batch, pending)
                    if pending:
                        raise _SinkFailedError()
        except (RetryError, _AbortError):
            pass
        if pending:
            self._mark_down()
        else:
            self._mark_up()
        return pending

    def _export_once(self, batch: list[Record], targets: list[int]) -> list[int]:
        """One attempt per target sink; returns the targets that failed."""
        failed: list[int] = []
        for index in targets:
            sink = self.sinks[index]
            try:
                sink.export(batch)
            except Exception as exc:
                # An unavailable store is an expected condition, not a bug: count it and log
                # once per outage instead of reporting an internal error.
                failed.append(index)
                self._count("sink_failures", 1)
                # A sink refusing a write because the exit path told it to stop (``stop_writes``;
                # the batch is spooled) is no outage to report.
                if not self._down_logged and not getattr(exc, "stopped_for_exit", False):
                    self._down_logged = True
                    logger.warning(
                        "tracked_openai: sink %s failed (%s: %s); retrying, then spooling to %s",
                        type(sink).__name__,
                        type(exc).__name__,
                        str(exc)[:300],
                        "memory"
                        if self._spool is None or self._spool_warned
                        else self._spool.directory,
                    )
        return failed

    def _backoff_sleep(self, seconds: float) -> None:
        if self._abort.wait(seconds):
            raise _AbortError()

    def _mark_down(self) -> None:
        self._down_until = time.monotonic() + self._retry_max

    def _mark_up(self) -> None:
        if self._down_until:
            logger.info("tracked_openai: sinks reachable again; replaying the spool")
        self._down_until = 0.0
        self._down_logged = False

    def _release_current(self, batch: list[Record]) -> None:
        with self._current_lock:
            if self._current is batch:
                self._current = None

    def _store(self, batch: list[Record], targets: list[int]) -> None:
        """Spool ``batch`` for the sinks at ``targets``; keep it in memory if the spool fails.
        A batch the exit path already took from the worker is not stored a second time."""
        with self._current_lock:
            if batch is self._surrendered:
                return
            if batch is self._current:
                self._current = None  # handled: the exit path must not spool it again
            self._spool_or_hold(batch, targets)

    def _spool_or_hold(
        self,
        batch: list[Record],
        targets: list[int],
        keys: list[str] | None = None,
        *,
        in_flight: bool = False,
    ) -> None:
        names = keys if keys is not None else [self._keys[i] for i in targets]
        if self._spool is not None and names:
            try:
                self._spool.append(batch, names, in_flight=in_flight)
            except OSError as exc:
                # Permissions, a full disk, a file where the folder should be: the host's
                # environment, not a bug of ours. Counted, said once, records kept in memory.
                self._count("spool_errors", 1)
                self._spool_unwritable(exc)
            except Exception as exc:
                self._count("spool_errors", 1)
                self._internal_error(exc, f"spool {self._spool.directory}")
            else:
                self._count("spooled", len(batch))
                self._journal_done(batch)
                return
        self._held.append((batch, list(targets)))

    def _spool_unwritable(self, exc: OSError, at_start: bool = False) -> None:
        if self._spool_warned or self._spool is None:
            return
        self._spool_warned = True
        logger.warning(
            "tracked_openai: the spool folder %s is not writable (%s: %s)%s; records the sinks "
            "can't take are kept in memory until the process exits, and lost then. Point "
            "TRACKED_OPENAI_SPOOL_DIR (or configure(spool_dir=...)) at a writable folder.",
            self._spool.directory,
            type(exc).__name__,
            exc.strerror or exc,
            "" if at_start else " (found while spooling)",
        )

    def _replay_spool(self, limit: int | None) -> bool:
        """Replay up to ``limit`` spooled files; ``True`` if any was replayed."""
        if not self._replay or self._spool is None:
            return False
        replayed = False
        count = 0
        while limit is None or count < limit:
            if self._abort.is_set() or not self._sink_probe_due():
                break
            with self._idle:
                self._replaying += 1
            try:
                spooled = self._spool.claim(self._keys)
                if spooled is not None:
                    with self._idle:
                        self._in_flight += len(spooled.records)
            except Exception as exc:
                self._internal_error(exc, "spool replay")
                spooled = None
            finally:
                with self._idle:
                    self._replaying -= 1
                    self._idle.notify_all()
            if spooled is None:
                break
            count += 1
            targets = [i for i, key in enumerate(self._keys) if key in spooled.sinks]
            attempts = 1 if not self._sink_up() else self._retry_attempts
            try:
                pending = self._export_with_retry(spooled.records, targets, attempts)
                if pending:
                    self._spool.release(spooled)
                else:
                    self._spool.done(spooled)
                    self._count("replayed", len(spooled.records))
                    self._count("exported", len(spooled.records))
                    replayed = True
            finally:
                # Only now: flush() must not see "idle" between the export and the bookkeeping.
                self._done(spooled.records)
            if pending:
                break
        return replayed

    def _count(self, name: str, n: int) -> None:
        with self._lock:
            self.counters[name] += n

    def _internal_error(self, exc: BaseException, where: str) -> None:
        self._count("internal_errors", 1)
        report_internal_error(exc, where)


"""Background exporter, queue side: records leave the caller's thread in O(1).

Caller side: ``submit()`` appends to a bounded deque and at most sets an event; it never blocks
and never raises. When the queue is full the record goes to an overflow deque that a second
daemon thread (the *spooler*) writes to the on-disk spool, so a burst larger than the queue costs
disk space, not memory and not records (``overflow="drop"`` instead drops and counts them).

Worker side (one daemon thread): take a batch, *prepare* it (pricing, roll-ups: the spool must
hold final data) and deliver it (``delivery.Delivery``: sinks, retry, spool, replay, exit).

Start-up: nothing heavy happens on the caller's thread. The first ``submit()`` starts the worker,
which builds the sinks (the default MLflow sink imports MLflow: seconds of CPU) on its own
thread when its first batch is due, or at once after ``start()``, the warm-up an application
calls when it starts. The spool folder is checked there too.

Lifecycle: ``flush(timeout)``, ``shutdown(timeout)``; at interpreter exit ``exit_flush`` (see
``exit``). A forked child starts with an empty queue and fresh threads
(``os.register_at_fork`` + a pid check on submit).
"""

from __future__ import annotations

import atexit

# MLflow (which the default sink factory imports on the worker) imports this module, which
# registers a threading exit hook at import and so can't be imported once interpreter shutdown
# has begun. Imported here (~1 ms, at our own import) so that a process whose work ends before
# its sinks were built can still build them during the exit flush.
import concurrent.futures.thread  # noqa: F401
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

from ..records import Record
from .delivery import sink_key
from .journal import Journal
from .journal_thread import JournalThread
from .spool import Spool

__all__ = ["Exporter", "sink_key"]

OverflowPolicy = Literal["spool", "drop"]

class _Counter:
    """A thread-safe counter whose increment is one C call (``next`` on itertools.count), so the
    hot path needs no lock; the value is read back from the iterator's repr (``count(N)``)."""

    __slots__ = ("_it",)

    def __init__(self) -> None:
        self._it = itertools.count()

    def inc(self) -> None:
        next(self._it)

    @property
    def value(self) -> int:
        return int(repr(self._it)[6:-1])


class Exporter(JournalThread):
    """Bounded queue + a worker thread feeding sinks, with retry, spool and replay.

    Args:
        sinks: Objects with ``export(records)`` (and optionally ``force_flush``/``shutdown``,
            and ``warm_up``, called on the worker thread before the first export), or a
            function returning them, called on the worker thread (so that building them, e.g.
            importing MLflow, never runs on the thread of the call that started the exporter).
        prepare: Called once per submitted item on a background thread before it is exported
            or spooled; returns the record to export (the item itself, or the record it stands
            for: a tracked call is submitted as is and made into its record here).
        queue_size: In-memory queue bound; beyond it records go to the spool (or are dropped).
        batch_size: Records per ``export`` call.
        flush_interval: Longest a record waits in the queue before a batch is sent.
        exit_timeout: Deadline for the flush at interpreter exit; the rest is spooled.
        spool_dir: Spool folder (default under the user cache dir); ``False`` disables spooling.
        retry_attempts: Attempts per batch before it is spooled.
        retry_initial: First backoff (seconds), doubled per attempt, plus jitter.
        retry_max: Longest backoff, and the interval between probes of a sink that is down.
        overflow: ``"spool"`` (default: never drop) or ``"drop"`` (drop and count when full).
        replay: Replay spooled records owed to these sinks (including other processes' leftovers).
        before_exit: Called at interpreter exit before the final flush (to submit what is still
            held elsewhere, e.g. operations waiting for open streams).
        warm_up: Called once on the worker thread after the sinks are built (e.g. loading the
            price table), so the first batch doesn't pay for it.
        exit_hook: Register ``exit_flush`` with ``atexit``. An owner that runs its own exit
            path (``export.runtime``) passes ``False``: one flush at exit, not two.
        journal: Have a journal thread take records off the queue as they arrive, prepare them
            and append them to this process's journal (``export.journal``) before delivery, so
            that a SIGKILL loses only what it had not taken yet. Needs the spool folder.
    """

    def __init__(
        self,
        sinks: Sequence[Any] | Callable[[], Sequence[Any]],
        *,
        prepare: Callable[[Any], Record] | None = None,
        queue_size: int = 10_000,
        batch_size: int = 256,
        flush_interval: float = 1.0,
        exit_timeout: float = 5.0,
        spool_dir: str | os.PathLike[str] | Literal[False] | None = None,
        retry_attempts: int = 5,
        retry_initial: float = 0.5,
        retry_max: float = 10.0,
        overflow: OverflowPolicy = "spool",
        replay: bool = True,
        before_exit: Callable[[], None] | None = None,
        warm_up: Callable[[], None] | None = None,
        exit_hook: bool = True,
        journal: bool = False,
    ) -> None:
        self._factory: Callable[[], Sequence[Any]] | None = None
        self.sinks: list[Any] = []
        if callable(sinks):
            self._factory = sinks
        else:
            self.sinks = list(sinks)
        self._keys = [sink_key(s) for s in self.sinks]
        self._prepare = prepare
        self._queue_size = max(1, int(queue_size))
        self._batch_size = max(1, int(batch_size))
        self._interval = flush_interval
        self._exit_timeout = exit_timeout
        self._spool: Spool | None = None if spool_dir is False else Spool(spool_dir)
        self._journal_on = journal and self._spool is not None
        self._journal: Journal | None = None
        self._journal_warned = False
        self._retry_attempts = max(1, int(retry_attempts))
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._overflow_policy: OverflowPolicy = overflow
        self._replay_wanted = replay
        self._replay = replay and bool(self.sinks) and self._spool is not None
        self._before_exit = before_exit
        self._warm_up = warm_up
        self._set_up = False
        self._start_requested = False
        self._spool_warned = False
        self._exited = False

        self._submitted = _Counter()
        self._dropped = _Counter()
        self.counters: dict[str, int] = {
            "exported": 0,
            "retried": 0,
            "spooled": 0,
            "replayed": 0,
            "internal_errors": 0,
            "spool_errors": 0,
            "sink_failures": 0,
            "journal_errors": 0,
            "adopted": 0,
        }
        self._init_state()
        self._closed = False
        self._exit_hook = exit_hook
        if exit_hook:
            atexit.register(self._at_exit)
        ref = weakref.WeakMethod(self._after_fork_in_child)

        def _after_fork() -> None:
            method = ref()
            if method is not None:
                method()

        os.register_at_fork(after_in_child=_after_fork)

    def _init_state(self) -> None:
        """Everything a forked child must rebuild: queues, locks, threads."""
        self._queue: deque[Record] = deque()
        self._overflow: deque[Record] = deque()
        # Prepared batches that neither a sink nor the spool accepted: kept in memory, retried.
        self._held: deque[tuple[list[Record], list[int]]] = deque()
        self._wake = threading.Event()
        self._spool_wake = threading.Event()
        self._abort = threading.Event()
        self._idle = threading.Condition()
        self._lock = threading.Lock()
        self._in_flight = 0
        # Replays between claiming a spool file and counting its records in flight: the claimed
        # file is no longer "pending", so flush() must see the replay some other way.
        self._replaying = 0
        # The batch the worker is delivering, and the one the exit path took from it.
        self._current: list[Record] | None = None
        self._surrendered: list[Record] | None = None
        # The batch the worker is preparing (taken from the queue, not yet deliverable).
        self._preparing: list[Record] | None = None
        self._thread: threading.Thread | None = None
        self._spooler: threading.Thread | None = None
        # Journal on: records the journal thread took, prepared and journaled, for the worker.
        self._staged: deque[Record] = deque()
        self._journal_wake = threading.Event()
        self._journaler: threading.Thread | None = None
        self._next_adopt = 0.0
        self._pid = os.getpid()
        self._down_until = 0.0
        self._down_logged = False
        self._started_replay = False
        # Set once the worker has built the sinks and warmed up (``start(wait=True)`` waits).
        self._ready = threading.Event()
        if self._set_up:
            self._ready.set()
        # Serialises building the sinks (worker, spooler, exit path may all need them).
        self._setup_lock = threading.Lock()
        # Guards the hand-over of the batch in flight between the worker and the exit path, so
        # that a batch is spooled by one of them, never by both.
        self._current_lock = threading.Lock()

    def _after_fork_in_child(self) -> None:
        # The parent's threads don't exist here and its queued records are the parent's to
        # export: start clean, lazily. Its journal files stay the parent's (and locked by it).
        journal, self._journal = self._journal, None
        if journal is not None:
            journal.forget()
        self._init_state()

    # -- caller side -------------------------------------------------------------------------
    def submit(self, record: Record) -> None:
        """Queue ``record``; O(1), never blocks, never raises."""
        try:
            if self._pid != os.getpid() or self._thread is None:
                self._ensure_worker()
            if self._closed:
                self._submit_closed(record)
                return
            queue = self._queue
            if len(queue) >= self._queue_size:
                if self._overflow_policy == "drop" or self._spool is None:
                    self._dropped.inc()
                    return
                self._submitted.inc()
                self._overflow.append(record)
                if self._spooler is None or not self._spooler.is_alive():
                    self._ensure_spooler()
                self._spool_wake.set()
                return
            self._submitted.inc()
            queue.append(record)
            if self._journal_on:
                # The journal thread clears the flag before it takes the queue: a record
                # appended before it saw the flag set is taken by that same pass.
                if not self._journal_wake.is_set():
                    self._journal_wake.set()
            elif len(queue) == self._batch_size:
                self._wake.set()
        except Exception as exc:  # pragma: no cover - defensive
            self._internal_error(exc, "exporter.submit")

    def _submit_closed(self, record: Record) -> None:
        # After shutdown (a rare race with configure()): deliver inline, once, or spool. After
        # the exit flush (a record from a later atexit hook): spool it, the deadline is past.
        self._submitted.inc()
        batch = [record]
        self._prepare_batch(batch)
        if self._exited:
            keys = self._exit_keys()
            with self._current_lock:
                self._spool_or_hold(batch, list(range(len(self.sinks))), keys)
            return
        self._resolve_sinks()
        targets = list(range(len(self.sinks)))
        pending = self._export_once(batch, targets)
        if pending:
            self._store(batch, pending)
        else:
            self._count("exported", 1)

    def start(self, wait: bool = False, timeout: float | None = None) -> bool:
        """Start the worker now and have it build the sinks and warm up at once, instead of when
        the first batch is due. Returns at once (``wait=False``: ``True`` if that was already
        done), or when it is done (``wait=True``; ``False`` if ``timeout`` ran out first)."""
        self._start_requested = True
        self._ensure_worker()
        self._wake.set()
        if wait:
            return self._ready.wait(timeout)
        return self._ready.is_set()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted so far is exported or spooled.

        Returns ``False`` if ``timeout`` ran out, or if records are held in memory because
        neither their sink nor the spool accepted them.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        worker = self._thread
        if worker is None or not worker.is_alive() or self._pid != os.getpid():
            if self._queue or self._overflow or self._held or self._staged:
                self._ensure_worker()
            worker = self._thread
            if worker is None or not worker.is_alive():
                # No thread can run (interpreter shutting down): do the work here.
                self._drain(inline=True)
                return not (self._held or self._queue or self._overflow or self._staged)
        self._wake.set()
        self._spool_wake.set()
        self._journal_wake.set()
        with self._idle:
            while self._busy():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._wake.set()
                self._spool_wake.set()
                self._journal_wake.set()
                self._idle.wait(0.05 if remaining is None else min(0.05, remaining))
        for sink in self.sinks:
            force = getattr(sink, "force_flush", None)
            if force is not None:
                try:
                    force()
                except Exception as exc:
                    self._internal_error(exc, "sink.force_flush")
        return not self._held

    def _busy(self) -> bool:
        if self._queue or self._overflow or self._staged or self._in_flight or self._replaying:
            return True
        if self._down_until > time.monotonic():
            return False  # sink down: what could not be exported is spooled (or held)
        if self._held:
            return True
        return self._replay and self._spool is not None and self._spool.pending(self._keys) > 0

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush, stop the threads, shut the sinks down. Idempotent. ``False`` if time ran out
        (what was left is then spooled)."""
        if self._closed:
            return True
        ok = self.flush(timeout)
        self._closed = True
        if not ok:
            self._spool_leftovers()
        self._abort.set()
        self._wake.set()
        self._spool_wake.set()
        self._journal_wake.set()
        for thread in (self._thread, self._spooler, self._journaler):
            if thread is not None and thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout if timeout is not None else 30.0)
        for sink in self.sinks:
            close = getattr(sink, "shutdown", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    self._internal_error(exc, "sink.shutdown")
        self._close_journal()
        try:
            atexit.unregister(self._at_exit)
        except Exception:  # pragma: no cover
            pass
        return ok

    def stats(self) -> dict[str, int]:
        """Counters: submitted, exported, retried, spooled, replayed, dropped, internal_errors,
        plus queued/held gauges."""
        with self._lock:
            counters = dict(self.counters)
        held = sum(len(batch) for batch, _ in list(self._held))
        return {
            "submitted": self._submitted.value,
            **counters,
            "dropped": self._dropped.value,
            "queued": len(self._queue) + len(self._overflow) + len(self._staged),
            "held": held,
        }

    # -- threads -------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._init_state_locked_fork()
            if self._journal_on and (self._journaler is None or not self._journaler.is_alive()):
                journaler = threading.Thread(
                    target=self._run_journal, name="tracked-openai-journal", daemon=True
                )
                try:
                    journaler.start()
                except RuntimeError:
                    pass  # interpreter shutting down: flush() journals inline
                else:
                    self._journaler = journaler
            if self._thread is not None and self._thread.is_alive():
                return
            thread = threading.Thread(target=self._run, name="tracked-openai-exporter", daemon=True)
            try:
                thread.start()
            except RuntimeError:
                # Interpreter shutting down: flush() does the work inline.
                return
            self._thread = thread

    def _init_state_locked_fork(self) -> None:
        # Fork without register_at_fork having run (e.g. os.fork from C): same as the hook.
        lock = self._lock
        self._init_state()
        self._lock = lock

    def _ensure_spooler(self) -> None:
        with self._lock:
            if self._spooler is not None and self._spooler.is_alive():
                return
            thread = threading.Thread(target=self._run_spooler, name="tracked-openai-spooler", daemon=True)
            try:
                thread.start()
            except RuntimeError:
                return
            self._spooler = thread

    def _run(self) -> None:
        while True:
            # The first wait also delays the start-up work (building the sinks) until a batch
            # is due, a flush asks, or start() was called: the call whose record started this
            # thread returns before that work competes with it for the GIL.
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                if self._start_requested and not self._set_up:
                    self._setup()
                self._drain()
            except Exception as exc:  # the worker must survive anything
                self._internal_error(exc, "exporter.worker")
            if self._closed and (not (self._queue or self._staged) or self._abort.is_set()):
                return

    def _take(self, source: deque[Record]) -> list[Record]:
        batch: list[Record] = []
        with self._idle:
            while source and len(batch) < self._batch_size:
                batch.append(source.popleft())
            self._in_flight += len(batch)
        return batch

    def _drain(self, inline: bool = False) -> None:
        """Export queued batches; when the queue is empty, retry held batches and replay."""
        if inline:
            if self._exited and not self._set_up:
                return  # no sinks yet and no thread to build them: exit_flush spools the queue
            self._drain_overflow()
            if self._journal_on:
                self._journal_drain()
        source = self._staged if self._journal_on else self._queue
        while True:
            # Once the exit path spools what is left, the queue is its own.
            batch = self._take(source) if not self._abort.is_set() else []
            if batch:
                try:
                    with self._idle:
                        self._preparing = batch
                    self._prepare_batch(batch)
                    with self._idle:
                        self._current = batch
                        self._preparing = None
                        self._idle.notify_all()
                    if not self._set_up:
                        # Only now, with the first batch prepared: should the exit deadline
                        # pass while the sinks are built (MLflow importing), that batch is
                        # ready to spool, and the exit path doesn't have to prepare it.
                        self._setup()
                    try:
                        self._deliver(batch, list(range(len(self.sinks))))
                    except Exception as exc:  # a bug of ours must not lose the batch
                        self._internal_error(exc, "exporter.deliver")
                        self._store(batch, list(range(len(self.sinks))))
                finally:
                    self._preparing = None
                    self._release_current(batch)
                    self._done(batch)
                # Keep the spool moving under sustained load too: one spooled batch per fresh one.
                if self._sink_up():
                    self._replay_spool(limit=1)
                continue
            if not self._set_up or self._abort.is_set() or not self._sink_probe_due():
                break  # (not set up: nothing was ever queued, nothing to retry or replay)
            if self._adopt_due():
                self._adopt_journals()  # a process that died while this one runs
            if self._held:
                with self._idle:  # pop and count together: flush() must never see neither
                    held, targets = self._held.popleft()
                    self._in_flight += len(held)
                    self._current = held
                try:
                    self._deliver(held, targets)
                finally:
                    self._release_current(held)
                    self._done(held)
                continue
            if not self._replay_spool(limit=1):
                break
        with self._idle:
            self._idle.notify_all()

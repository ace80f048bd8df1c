"""Background exporter: records leave the caller's thread in O(1) and reach sinks without loss.

Caller side: ``submit()`` appends to a bounded deque and at most sets an event; it never blocks
and never raises. When the queue is full the record goes to an overflow deque that a second
daemon thread (the *spooler*) writes to the on-disk spool, so a burst larger than the queue costs
disk space, not memory and not records (``overflow="drop"`` instead drops and counts them).

Worker side (one daemon thread): take a batch, *prepare* it (pricing, roll-ups: the spool must
hold final data), hand it to every sink. A failing sink is retried with exponential backoff and
jitter (tenacity); when the retries run out the batch is spooled and the sink is considered down:
later batches go straight to the spool and a single attempt probes the sink every ``retry_max``
seconds. When a probe succeeds the spool is replayed (also at the start of the next process).
Sinks are idempotent by ``record_id``, so a batch exported twice (retry after a partial success,
replay of a batch that was also in flight at exit) still makes one entry per record.

Start-up: nothing heavy happens on the caller's thread. The first ``submit()`` starts the worker,
which builds the sinks (the default MLflow sink imports MLflow: seconds of CPU) on its own
thread when its first batch is due, or at once after ``start()``, the warm-up an application
calls when it starts. The spool folder is checked there too.

Lifecycle: ``flush(timeout)``, ``shutdown(timeout)``; at interpreter exit one flush with a
deadline runs (``exit_flush``, once) and whatever is left (queued, in flight, held) is spooled.
A forked child starts with an empty queue and fresh threads (``os.register_at_fork`` + a pid
check on submit).
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
from pathlib import Path
from typing import Any, Literal

from tenacity import RetryError, Retrying, stop_after_attempt, wait_exponential_jitter

from ._errors import logger, report_internal_error
from ._spool import Spool
from .records import Record

__all__ = ["Exporter", "sink_key"]

OverflowPolicy = Literal["spool", "drop"]

# Longest the exit waits for a sink to finish work that must not be cut off half-way.
_EXIT_BARRIER_TIMEOUT = 60.0


class _AbortError(Exception):
    """Raised from the backoff sleep to stop retrying (shutdown or exit deadline)."""


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


class Exporter:
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
            path (``tracked_openai._runtime``) passes ``False``: one flush at exit, not two.
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
        # export: start clean, lazily.
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
            if len(queue) == self._batch_size:
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
            if self._queue or self._overflow or self._held:
                self._ensure_worker()
            worker = self._thread
            if worker is None or not worker.is_alive():
                # No thread can run (interpreter shutting down): do the work here.
                self._drain(inline=True)
                return not (self._held or self._queue or self._overflow)
        self._wake.set()
        self._spool_wake.set()
        with self._idle:
            while self._busy():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._wake.set()
                self._spool_wake.set()
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
        if self._queue or self._overflow or self._in_flight or self._replaying:
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
        for thread in (self._thread, self._spooler):
            if thread is not None and thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout if timeout is not None else 30.0)
        for sink in self.sinks:
            close = getattr(sink, "shutdown", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    self._internal_error(exc, "sink.shutdown")
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
            "queued": len(self._queue) + len(self._overflow),
            "held": held,
        }

    # -- threads -------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._init_state_locked_fork()
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
            if self._closed and (not self._queue or self._abort.is_set()):
                return

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

    def _take(self, source: deque[Record]) -> list[Record]:
        batch: list[Record] = []
        with self._idle:
            while source and len(batch) < self._batch_size:
                batch.append(source.popleft())
            self._in_flight += len(batch)
        return batch

    def _done(self, batch: list[Record]) -> None:
        with self._idle:
            self._in_flight -= len(batch)
            self._idle.notify_all()

    def _drain(self, inline: bool = False) -> None:
        """Export queued batches; when the queue is empty, retry held batches and replay."""
        if inline:
            if self._exited and not self._set_up:
                return  # no sinks yet and no thread to build them: exit_flush spools the queue
            self._drain_overflow()
        while True:
            # Once the exit path spools what is left, the queue is its own.
            batch = self._take(self._queue) if not self._abort.is_set() else []
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

    # -- delivery ------------------------------------------------------------------------------
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
                if not self._down_logged:
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

    def _spool_or_hold(self, batch: list[Record], targets: list[int], keys: list[str] | None = None) -> None:
        names = keys if keys is not None else [self._keys[i] for i in targets]
        if self._spool is not None and names:
            try:
                self._spool.append(batch, names)
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

    # -- exit ------------------------------------------------------------------------------------
    def _exit_keys(self) -> list[str] | None:
        """The spool keys to file leftovers under at exit: ``None`` once the sinks are built
        (theirs). Before, the sink factory's own prediction (``spool_keys()``): the worker may be
        importing MLflow right now, and the exit deadline doesn't wait for that."""
        factory = self._factory
        if factory is None:
            return None
        predict = getattr(factory, "spool_keys", None)
        if predict is not None:
            try:
                return [str(key) for key in predict()]
            except Exception as exc:
                self._internal_error(exc, "exporter.spool_keys")
        if self._setup_lock.acquire(timeout=0.5):  # no prediction: the build may be about done
            self._setup_lock.release()
        return None if self._factory is None else []

    def _spool_leftovers(self) -> None:
        """Spool whatever is still in memory (queue, overflow, the batch in flight, held)."""
        self._abort.set()
        keys = self._exit_keys()
        leftovers: list[Record] = []
        for source in (self._queue, self._overflow):
            while source:
                try:
                    leftovers.append(source.popleft())
                except IndexError:
                    break
        self._prepare_batch(leftovers)
        all_targets = list(range(len(self.sinks)))
        self._surrender_current(keys)
        for start in range(0, len(leftovers), self._batch_size):
            with self._current_lock:
                self._spool_or_hold(leftovers[start : start + self._batch_size], all_targets, keys)
        with self._current_lock:  # the exit path owns these now, the surrendered batch included
            held = list(self._held)
            self._held.clear()
            for batch, targets in held:
                self._spool_or_hold(batch, targets)

    def _surrender_current(self, keys: list[str] | None) -> None:
        """Take the batch in flight from the worker and spool it (exit path). The worker may
        still export it right now (the sink's idempotency absorbs that) but never spools it."""
        with self._current_lock:
            current, self._current = self._current, None
            if current is not None:
                self._surrendered = current
                self._spool_or_hold(current, list(range(len(self.sinks))), keys)

    def _at_exit(self) -> None:
        if self._exited or self._closed:
            return
        if self._before_exit is not None:
            try:
                self._before_exit()
            except Exception as exc:
                self._internal_error(exc, "exporter.before_exit")
        self.exit_flush()

    def exit_flush(self) -> None:
        """At interpreter exit, once: flush with the exit deadline, spool whatever is left, and
        close (a record submitted later, from another exit hook, goes straight to the spool).
        Never raises."""
        if self._closed or self._exited:
            return
        self._exited = True
        # A little of the deadline is kept for a batch the worker was still preparing (pricing)
        # when the flush gave up: neither queued nor deliverable then, it is spooled once ready.
        grace = min(1.0, self._exit_timeout / 4)
        try:
            # exit_timeout 0: spool at once, without waking the worker to take a batch first.
            budget = self._exit_timeout - grace
            if budget <= 0 or not self.flush(budget):
                self._spool_leftovers()
                if self._preparing is not None:
                    with self._idle:
                        self._idle.wait_for(lambda: self._preparing is None, timeout=grace)
                    self._surrender_current(self._exit_keys())
                preparing = self._preparing
                left = sum(len(b) for b, _ in self._held) + (len(preparing) if preparing else 0)
                if left:
                    logger.warning("tracked_openai: exit with %d records neither exported nor spooled", left)
        except Exception as exc:  # pragma: no cover
            self._internal_error(exc, "exporter.at_exit")
        finally:
            self._closed = True
            self._abort.set()
            self._wake.set()
            # A sink in the middle of something that must not be cut off (the MLflow sink
            # creating a local store) is waited for; no sink starts such work from now on.
            for sink in list(self.sinks):
                barrier = getattr(sink, "prepare_exit", None)
                if barrier is not None:
                    try:
                        barrier(_EXIT_BARRIER_TIMEOUT)
                    except Exception as exc:
                        self._internal_error(exc, "sink.prepare_exit")

    # -- bookkeeping -----------------------------------------------------------------------------
    def _count(self, name: str, n: int) -> None:
        with self._lock:
            self.counters[name] += n

    def _internal_error(self, exc: BaseException, where: str) -> None:
        self._count("internal_errors", 1)
        report_internal_error(exc, where)

    @property
    def spool_dir(self) -> Path | None:
        return self._spool.directory if self._spool is not None else None


class _SinkFailedError(Exception):
    """At least one sink failed this attempt (tenacity retries on it)."""

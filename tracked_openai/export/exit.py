"""The exporter's exit path: one flush with the exit deadline, then what is left is spooled.

At interpreter exit (``exit_flush``, once) whatever is still queued, in flight or held when the
deadline passes is spooled, and the next process replays it. The batch the worker may still be
delivering is taken from it (``_surrender_current``) and spooled once, marked ``in_flight``.

Two writers of one record at once would write it twice: the runs sink's idempotency is a search
before writing (MLflow has no idempotent ``create_run``), and both would find nothing. So the
worker's sinks start no new write once the batch is surrendered (``stop_writes``), and no other
process replays an ``in_flight`` file while this process lives (``Spool.claim``); the replay
after it is gone finds, by record id, the runs it did write (a run left unfinished is completed).
"""

from __future__ import annotations

from .._errors import logger
from ..records import Record
from .delivery import Delivery

__all__ = ["ExitPath"]

# Longest the exit waits for a sink to finish work that must not be cut off half-way.
_EXIT_BARRIER_TIMEOUT = 60.0


class ExitPath(Delivery):
    """``exit_flush`` and what it needs, on the state ``Exporter`` sets up."""

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

    def _close_journal(self) -> None:
        """Delete this process's journal if every record in it is done, else close it."""

    def _spool_leftovers(self) -> None:
        """Spool whatever is still in memory (queue, overflow, the batch in flight, held)."""
        self._abort.set()
        keys = self._exit_keys()
        leftovers: list[Record] = []
        for source in (self._staged, self._queue, self._overflow):
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
        """Take the batch in flight from the worker and spool it (exit path). The worker may be
        exporting it right now; it never spools it, and at exit its sinks start no new write."""
        with self._current_lock:
            current, self._current = self._current, None
            if current is not None:
                self._surrendered = current
                if self._exited:
                    self._stop_writes()
                self._spool_or_hold(current, list(range(len(self.sinks))), keys, in_flight=True)

    def _stop_writes(self) -> None:
        """Have the sinks refuse writes not yet started (``stop_writes``, where a sink has it):
        the batch they belong to is in the spool now, for the next process."""
        for sink in list(self.sinks):
            stop = getattr(sink, "stop_writes", None)
            if stop is not None:
                try:
                    stop()
                except Exception as exc:
                    self._internal_error(exc, "sink.stop_writes")

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
            self._close_journal()
            # A sink in the middle of something that must not be cut off (the MLflow sink
            # creating a local store) is waited for; no sink starts such work from now on.
            for sink in list(self.sinks):
                barrier = getattr(sink, "prepare_exit", None)
                if barrier is not None:
                    try:
                        barrier(_EXIT_BARRIER_TIMEOUT)
                    except Exception as exc:
                        self._internal_error(exc, "sink.prepare_exit")

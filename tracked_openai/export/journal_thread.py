"""The exporter's journal thread (``journal=True``; the file side is ``export.journal``).

``submit`` wakes this thread when it finds it idle; the thread pauses ``_JOURNAL_DELAY`` so a
burst shares one pass, takes everything queued, prepares it (so the journal holds final records,
ids included), appends it to the journal and *stages* it for the worker, which delivers staged
batches as it would queued ones. A batch leaves the journal (``Delivery._journal_done``) once
it reached its sinks or the spool.
"""

from __future__ import annotations

import threading
import time

from .._errors import logger
from ..records import Record
from .exit import ExitPath
from .journal import Journal, adopt_journals

__all__ = ["JournalThread"]

# How long the journal thread lets records gather before it journals them: the window a SIGKILL
# can still lose, traded against one wake-up and one write per call (see docs/exporter.md).
_JOURNAL_DELAY = 0.01
# How often a running exporter looks for the journals of processes that died meanwhile.
_ADOPT_EVERY = 60.0


class JournalThread(ExitPath):
    """The journal thread's loop and the journal's place in the exporter's life."""

    _journal_on: bool
    _journal_warned: bool
    _journal_wake: threading.Event
    _next_adopt: float

    def _run_journal(self) -> None:
        while True:
            # Woken by the first record submitted after a pass (the timeout is a safety net),
            # then a short pause before taking the queue: records arriving meanwhile share one
            # pass and one write, and caller threads are not interrupted once per call.
            if self._journal_wake.wait(self._interval) and not self._closed:
                time.sleep(_JOURNAL_DELAY)
            self._journal_wake.clear()
            try:
                self._journal_drain()
            except Exception as exc:
                self._internal_error(exc, "exporter.journal")
            if self._closed and (not self._queue or self._abort.is_set()):
                return

    def _journal_drain(self) -> None:
        """Take what is queued, prepare it, journal it and stage it for the worker."""
        while self._queue and not self._abort.is_set():
            batch = self._take(self._queue)
            try:
                self._prepare_batch(batch)
                self._journal_write(batch)
            finally:
                with self._idle:  # staged and no longer in flight together: flush() sees one
                    self._staged.extend(batch)
                    self._in_flight -= len(batch)
                    self._idle.notify_all()
            if len(self._staged) >= self._batch_size:
                self._wake.set()

    def _journal_write(self, batch: list[Record]) -> None:
        journal = self._journal
        if journal is None:
            if self._spool is None:
                return
            journal = self._journal = Journal(self._spool.directory, self._journal_keys)
        try:
            journal.write(batch)
        except OSError as exc:
            # The records go on to their sinks as they would without a journal; said once.
            self._count("journal_errors", 1)
            if not self._journal_warned:
                self._journal_warned = True
                logger.warning(
                    "tracked_openai: the journal in %s can't be written (%s: %s); records are "
                    "delivered without it (a SIGKILL loses what is queued)",
                    journal.directory, type(exc).__name__, exc.strerror or exc,
                )
        except Exception as exc:
            self._count("journal_errors", 1)
            self._internal_error(exc, "journal")

    def _journal_keys(self) -> list[str]:
        """The spool keys a journal names: the sinks' once built, else the factory's prediction."""
        keys = self._exit_keys()
        return list(self._keys) if keys is None else keys

    def _adopt_journals(self) -> None:
        """Move journals of dead processes into the spool (replayed from there)."""
        self._next_adopt = time.monotonic() + _ADOPT_EVERY
        if self._spool is None or not self._replay:
            return
        with self._idle:  # flush() waits for it, as for a replay
            self._replaying += 1
        try:
            moved = adopt_journals(self._spool, self._journal, self._batch_size)
        except Exception as exc:
            self._internal_error(exc, "journal adopt")
            return
        finally:
            with self._idle:
                self._replaying -= 1
                self._idle.notify_all()
        if moved:
            self._count("adopted", moved)
            logger.info("tracked_openai: %d records from stopped processes' journals go to the spool", moved)

    def _adopt_due(self) -> bool:
        return time.monotonic() >= self._next_adopt

    def _close_journal(self) -> None:
        journal = self._journal
        if journal is not None:
            try:
                journal.close()
            except Exception as exc:  # pragma: no cover - defensive
                self._internal_error(exc, "journal close")

"""The library's own failure boundary.

Everything tracked-openai does on the caller's path runs inside :func:`internal_errors`. A fault
there (a bug, an unexpected response shape, a sink raising) is logged once per distinct place on
the ``tracked_openai`` logger, counted, and swallowed: the caller's result and exceptions are never
touched. Tests install a hook with :func:`set_internal_error_hook` so a swallowed error still fails
the test that caused it.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from types import TracebackType

__all__ = ["internal_errors", "logger", "set_internal_error_hook", "internal_error_count"]

logger = logging.getLogger("tracked_openai")

_hook: Callable[[BaseException], None] | None = None
_seen: set[tuple[str, str, int]] = set()
_seen_lock = threading.Lock()
_count = 0


def set_internal_error_hook(hook: Callable[[BaseException], None] | None) -> None:
    """Call ``hook(exc)`` for every swallowed internal error (tests use it to fail loudly)."""
    global _hook
    _hook = hook


def internal_error_count() -> int:
    """How many internal errors were swallowed in this process."""
    return _count


def report_internal_error(exc: BaseException, where: str = "") -> None:
    """Log (once per place), count and hand ``exc`` to the test hook. Never raises."""
    global _count
    _count += 1
    try:
        tb = traceback.extract_tb(exc.__traceback__)
        frame = tb[-1] if tb else None
        key = (type(exc).__name__, frame.filename if frame else where, frame.lineno or 0 if frame else 0)
        with _seen_lock:
            first = key not in _seen
            if first:
                _seen.add(key)
        if first:
            # Logged once per place: an error on every call would flood the host's logs.
            logger.warning(
                "tracked_openai internal error%s (your code still ran fine, with less telemetry): %s: %s",
                f" in {where}" if where else "",
                type(exc).__name__,
                exc,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        hook = _hook
        if hook is not None:
            hook(exc)
    except Exception:  # pragma: no cover - the boundary itself must never fail
        pass


class _InternalErrors:
    """Context manager (and decorator factory) that swallows and reports ``Exception``."""

    __slots__ = ("where",)

    def __init__(self, where: str = "") -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            # KeyboardInterrupt / SystemExit / cancellation belong to the host: let them through.
            return False
        report_internal_error(exc, self.where)
        return True


_DEFAULT = _InternalErrors()


def internal_errors(where: str = "") -> _InternalErrors:
    """``with internal_errors("what"):`` swallows, logs once and counts any ``Exception``."""
    return _InternalErrors(where) if where else _DEFAULT

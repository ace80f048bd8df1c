"""Which feature and operation a call belongs to: ``track()`` and the scope stack behind it.

The current scope lives in one ``ContextVar``, so it is isolated per thread and per asyncio task
and nests: an inner ``track`` wins while it runs and the outer scope is restored with
``ContextVar.reset`` when it ends, even on error.

A call belongs to its innermost operation and that operation's feature. An operation's record
rolls up every call made inside it, nested operations' calls included whatever their feature;
when some belong to another feature, the share of its own feature is kept apart
(``feature_call_count``/``feature_cost_usd``), which is what reports per feature count for it.

An operation's record rolls up its calls, so it is submitted only once every call begun inside
it has finished: a stream returned from a decorated function (a web handler returning a
streaming response) is read after the function returned, and the operation waits for it. The
wait is bounded (``OPERATION_WAIT_S``, and interpreter exit); a call that finishes after its
operation was submitted anyway is marked ``LATE_TAG`` so reports count its cost by itself.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import time
import traceback as _traceback
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeVar, overload

from ._config import settings
from ._errors import internal_errors
from .export import runtime
from .mlflow.names import numeric_metrics
from .records import LATE_TAG, OperationRecord, new_record_id, tag_value

__all__ = [
    "Operation",
    "track",
    "current_scope",
    "call_opened",
    "call_closed",
    "release_waiting",
    "LATE_TAG",
    "OPERATION_WAIT_S",
]

F = TypeVar("F", bound=Callable[..., Any])

_MAX_TRACEBACK = 8_000
_MAX_MESSAGE = 2_000

MetricsFn = Callable[[Any], Mapping[str, float]]

# Longest an ended operation waits for calls still open inside it (streams not yet read).
OPERATION_WAIT_S = 600.0

# Guards the open-call counts and the waiting set; held for a few attribute updates only.
_lock = threading.Lock()
# Ended operations held back for open calls -> monotonic deadline.
_waiting: dict[Operation, float] = {}
_next_deadline = float("inf")


class Operation:
    """One running ``track`` block: the scope calls inside it are attributed to.

    Returned by ``with track(...) as op``; ``op.log_metrics(...)``, ``op.log_params(...)`` and
    ``op.set_tags(...)`` add to the operation's record.
    """

    __slots__ = ("_finished", "_metrics_fn", "_open", "_submitted", "_t0", "_token", "parent", "record")

    def __init__(
        self, record: OperationRecord, metrics_fn: MetricsFn | None, parent: Operation | None = None
    ) -> None:
        self.record = record
        self.parent = parent
        self._t0 = 0.0
        self._token: Token[Operation | None] | None = None
        self._metrics_fn = metrics_fn
        self._finished = False
        self._open = 0  # calls begun inside (directly or in nested blocks) and not yet finished
        self._submitted = False

    @property
    def feature(self) -> str:
        return self.record.feature

    @property
    def operation(self) -> str | None:
        return self.record.operation

    @property
    def record_id(self) -> str:
        return self.record.record_id

    @property
    def tags(self) -> dict[str, str]:
        return self.record.tags

    def log_metrics(self, metrics: Mapping[str, float] | None = None, **kw: float) -> None:
        """Add numeric metrics to this operation's record (non-numbers are ignored)."""
        with internal_errors("log_metrics"):
            self.record.metrics.update(numeric_metrics({**(metrics or {}), **kw}))

    def log_params(self, params: Mapping[str, Any] | None = None, **kw: Any) -> None:
        with internal_errors("log_params"):
            self.record.params.update({**(params or {}), **kw})

    def set_tags(self, tags: Mapping[str, Any] | None = None, **kw: Any) -> None:
        with internal_errors("set_tags"):
            self.record.tags.update({k: tag_value(v) for k, v in {**(tags or {}), **kw}.items()})

    # -- lifecycle -------------------------------------------------------------------------
    def _start(self) -> None:
        self._t0 = time.perf_counter()
        self.record.started_at = time.time()
        self._token = _current.set(self)

    def _finish(self, exc: BaseException | None, result: Any = None, has_result: bool = False) -> None:
        if self._token is not None:
            try:
                _current.reset(self._token)
            except ValueError:
                # Exited in another context (e.g. a generator finished elsewhere): nothing to restore.
                pass
            self._token = None
        if self._finished:
            return
        self._finished = True
        with internal_errors("track.finish"):
            rec = self.record
            rec.duration_s = time.perf_counter() - self._t0
            if exc is not None:
                rec.status = "error"
                rec.error_type = type(exc).__name__
                rec.error_message = str(exc)[:_MAX_MESSAGE]
                rec.traceback = "".join(
                    _traceback.format_exception(type(exc), exc, exc.__traceback__)
                )[-_MAX_TRACEBACK:]
            elif has_result and self._metrics_fn is not None:
                self.log_metrics(self._metrics_fn(result))
            global _next_deadline
            with _lock:
                if self._open > 0:
                    deadline = time.monotonic() + OPERATION_WAIT_S
                    _waiting[self] = deadline
                    _next_deadline = min(_next_deadline, deadline)
                    return
                self._submitted = True
            runtime.submit(rec)
            if _waiting:
                release_waiting()


def call_opened(op: Operation) -> None:
    """A call began inside ``op``: it and every enclosing operation wait for it."""
    with _lock:
        scope: Operation | None = op
        while scope is not None:
            scope._open += 1
            scope = scope.parent


def call_closed(op: Operation, call: Any) -> list[OperationRecord]:
    """A tracked call (``capture.call.Call``) begun inside ``op`` finished: it joins the roll-up
    of every enclosing operation still open; returns the operation records that were waiting
    only for it (to submit after the call itself)."""
    ready: list[OperationRecord] = []
    with _lock:
        scope: Operation | None = op
        late = False
        while scope is not None:
            if scope._submitted:
                late = True
            else:
                scope.record.children.append(call)
            scope._open -= 1
            if scope._open <= 0 and _waiting.pop(scope, None) is not None:
                scope._submitted = True
                ready.append(scope.record)
            scope = scope.parent
        if late:
            call.record.tags[LATE_TAG] = "true"
    return ready


def release_waiting(force: bool = False) -> None:
    """Submit the waiting operations whose deadline passed (all of them with ``force``, e.g. at
    exit), with the calls they have; calls still open then count as late."""
    global _next_deadline
    now = time.monotonic()
    if not force and now < _next_deadline:
        return
    due: list[OperationRecord] = []
    with _lock:
        for scope, deadline in list(_waiting.items()):
            if force or deadline <= now:
                del _waiting[scope]
                scope._submitted = True
                due.append(scope.record)
        _next_deadline = min(_waiting.values(), default=float("inf"))
    for rec in due:
        runtime.submit(rec)


# At exit and on shutdown(), operations still waiting for calls are submitted with what they
# have (after open streams were recorded: those complete operations too).
runtime.add_release_hook("operations", lambda at_exit: release_waiting(force=True), order=1)


_current: ContextVar[Operation | None] = ContextVar("tracked_openai_operation", default=None)


def current_scope() -> Operation | None:
    """The innermost running operation in this thread/task, or ``None``."""
    return _current.get()


class track:  # noqa: N801 - used like a function: `with track(...)` / `@track(...)`
    """Attribute the OpenAI calls inside a block or function to a feature and operation.

    Works as a sync or async context manager and as a decorator of sync or async functions. Each
    block or decorated call produces one operation record that rolls up its calls.

    Args:
        feature: Product feature key (``"pid_verification"``). ``None`` inherits the enclosing
            block's feature (or the configured default).
        operation: Operation name; for decorators, defaults to the function's name.
        **tags: Extra string tags for every record inside (merged with enclosing tags).
    """

    __slots__ = ("_feature", "_function", "_metrics_fn", "_op", "_operation", "_tags")

    def __init__(
        self,
        feature: str | None = None,
        operation: str | None = None,
        *,
        _metrics_fn: MetricsFn | None = None,
        _function: str | None = None,
        **tags: Any,
    ) -> None:
        self._feature = feature
        self._operation = operation
        self._tags = {k: tag_value(v) for k, v in tags.items()}
        self._metrics_fn = _metrics_fn
        self._function = _function
        self._op: Operation | None = None

    def _new_operation(self, function: str | None) -> Operation | None:
        if not settings.enabled:
            return None
        parent = _current.get()
        feature = self._feature
        if feature is None:
            feature = parent.feature if parent is not None else settings.default_feature
        tags = {**parent.tags, **self._tags} if parent is not None else dict(self._tags)
        record = OperationRecord(
            record_id=new_record_id(),
            parent_id=parent.record_id if parent is not None else None,
            feature=feature,
            operation=self._operation if self._operation is not None else function,
            function=function or self._function,
            tags=tags,
            parent_feature=parent.feature if parent is not None else None,
        )
        return Operation(record, self._metrics_fn, parent)

    # -- context manager ---------------------------------------------------------------------
    def __enter__(self) -> Operation | None:
        return self._enter(2)

    def _enter(self, depth: int) -> Operation | None:
        op = None
        with internal_errors("track.enter"):
            op = self._new_operation(self._function or _caller_name(depth))
            if op is not None:
                op._start()
        self._op = op
        return op

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        op, self._op = self._op, None
        if op is not None:
            op._finish(exc)

    async def __aenter__(self) -> Operation | None:
        return self._enter(2)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- decorator ---------------------------------------------------------------------------
    @overload
    def __call__(self, func: F) -> F: ...
    @overload
    def __call__(self, func: Any) -> Any: ...
    def __call__(self, func: Any) -> Any:
        if not settings.enabled:
            # Disabled at decoration time: hand back the function itself, zero overhead.
            return func
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
        make = self._new_operation

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                op = None
                with internal_errors("track.enter"):
                    op = make(name)
                    if op is not None:
                        op._start()
                if op is None:
                    return await func(*args, **kwargs)
                try:
                    result = await func(*args, **kwargs)
                except BaseException as exc:
                    op._finish(exc)
                    raise
                op._finish(None, result, True)
                return result

            async_wrapper.__tracked_openai__ = self  # type: ignore[attr-defined]  # for the Django middleware
            return async_wrapper

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            op = None
            with internal_errors("track.enter"):
                op = make(name)
                if op is not None:
                    op._start()
            if op is None:
                return func(*args, **kwargs)
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                op._finish(exc)
                raise
            op._finish(None, result, True)
            return result

        wrapper.__tracked_openai__ = self  # type: ignore[attr-defined]
        return wrapper


def _caller_name(depth: int) -> str | None:
    # The function containing the `with track(...)` statement, `depth` frames above _enter.
    frame = sys._getframe(depth + 1)
    name = frame.f_code.co_qualname
    return None if name == "<module>" else name

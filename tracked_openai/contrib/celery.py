"""Celery integration (extra ``tracked-openai[celery]``): a task keeps the feature of the code
that queued it.

Call :func:`install` once where your Celery app is defined (``celery.py``), in the processes that
queue tasks and in the workers::

    from tracked_openai.contrib.celery import install
    install()

- A task queued inside a ``track`` block carries its feature, operation and tags in the message
  headers (``before_task_publish``).
- In the worker, each run of the task is an operation of that feature (``task_prerun`` /
  ``task_postrun``), a child of the operation that queued it (``parent_record_id``), named after
  the task and tagged with its id, attempt, retries and final state; the OpenAI calls made in the
  task roll up into it. Each attempt of a retried task is an operation of its own, with the
  same parent and ``celery_previous_attempt`` naming the attempt before it.
- Tasks queued outside any ``track`` block are not recorded as operations unless
  ``install(track_all=True)`` (then in the default feature); their calls are recorded either way.
- Worker processes start the exporter when they start (``worker_process_init``) and flush it
  before they exit (``worker_process_shutdown``; prefork children may exit without running
  ``atexit``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from .._config import settings
from .._errors import internal_errors
from ..export import runtime
from ..scope import Operation, current_scope, track

__all__ = [
    "HEADER_FEATURE",
    "HEADER_OPERATION",
    "HEADER_PARENT",
    "HEADER_PREVIOUS",
    "HEADER_TAGS",
    "install",
    "uninstall",
]

HEADER_FEATURE = "tracked_openai_feature"
HEADER_OPERATION = "tracked_openai_operation"
HEADER_PARENT = "tracked_openai_parent"
HEADER_TAGS = "tracked_openai_tags"
HEADER_PREVIOUS = "tracked_openai_previous"
_HEADERS = (HEADER_FEATURE, HEADER_OPERATION, HEADER_PARENT, HEADER_TAGS, HEADER_PREVIOUS)
# Tags the worker sets itself: an enqueuing scope's tags of the same name don't carry over.
_OWN_TAGS = ("celery_task", "celery_task_id", "celery_retries", "celery_attempt", "celery_state")


@dataclass
class _Running:
    track: track
    op: Operation
    error: BaseException | None = None


_running: dict[str, _Running] = {}
_lock = threading.Lock()
_installed = False
_track_all = False


def _request_value(request: Any, name: str) -> Any:
    """A custom message header as the worker sees it (an attribute of ``task.request`` with
    protocol 2; inside ``request.headers`` in some versions and with protocol 1)."""
    value = getattr(request, name, None)
    if value is None:
        headers = getattr(request, "headers", None)
        if isinstance(headers, dict):
            value = headers.get(name)
    return value


def _before_publish(sender: Any = None, headers: dict[str, Any] | None = None, **kw: Any) -> None:
    if headers is None or not settings.enabled:
        return
    with internal_errors("celery.before_task_publish"):
        from celery import current_task

        task = current_task
        request = getattr(task, "request", None) if task is not None else None
        if request is not None and getattr(request, "id", None) and request.id == headers.get("id"):
            # A retry (the running task queues itself again): same parent, linked to this attempt.
            for name in (HEADER_FEATURE, HEADER_OPERATION, HEADER_PARENT, HEADER_TAGS):
                value = _request_value(request, name)
                if value is not None:
                    headers[name] = value
            with _lock:
                running = _running.get(request.id)
            if running is not None:
                headers[HEADER_PREVIOUS] = running.op.record_id
                headers.setdefault(HEADER_FEATURE, running.op.feature)
            return
        op = current_scope()
        if op is None:
            return
        tags = {k: v for k, v in op.tags.items() if k not in _OWN_TAGS}
        headers[HEADER_FEATURE] = op.feature
        headers[HEADER_PARENT] = op.record_id
        if op.operation:
            headers[HEADER_OPERATION] = op.operation
        if tags:
            headers[HEADER_TAGS] = json.dumps(tags)


def _prerun(task_id: str | None = None, task: Any = None, **kw: Any) -> None:
    if task is None or task_id is None or not settings.enabled:
        return
    with internal_errors("celery.task_prerun"):
        request = task.request
        feature = _request_value(request, HEADER_FEATURE)
        if feature is None and not _track_all:
            return
        raw_tags = _request_value(request, HEADER_TAGS)
        tags = json.loads(raw_tags) if isinstance(raw_tags, str) else {}
        retries = int(getattr(request, "retries", 0) or 0)
        parent_operation = _request_value(request, HEADER_OPERATION)
        if parent_operation:
            tags["celery_parent_operation"] = parent_operation
        previous = _request_value(request, HEADER_PREVIOUS)
        if previous:
            tags["celery_previous_attempt"] = previous
        t = track(
            feature,
            task.name,
            _function=f"{type(task).__module__}.{task.name}",
            **{
                **tags,
                "celery_task": task.name,
                "celery_task_id": task_id,
                "celery_retries": retries,
                "celery_attempt": retries + 1,
            },
        )
        op = t.__enter__()
        if op is None:
            return
        parent = _request_value(request, HEADER_PARENT)
        if parent:
            # A child of the operation that queued it, in another process: linked by record id
            # (and nested under it in MLflow when both are in the same feature).
            op.record.parent_id = str(parent)
            op.record.parent_feature = op.feature if feature is not None else None
        with _lock:
            _running[task_id] = _Running(t, op)


def _error(task_id: str | None, error: BaseException | None) -> None:
    if task_id is None or error is None:
        return
    with _lock:
        running = _running.get(task_id)
        if running is not None and running.error is None:
            running.error = error


def _on_failure(task_id: str | None = None, exception: BaseException | None = None, **kw: Any) -> None:
    _error(task_id, exception)


def _on_retry(request: Any = None, reason: Any = None, einfo: Any = None, **kw: Any) -> None:
    with internal_errors("celery.task_retry"):
        # `reason` is the Retry raised by task.retry(); the error that caused it is its `exc`.
        error = getattr(reason, "exc", None) or (reason if isinstance(reason, BaseException) else None)
        error = error or getattr(einfo, "exception", None)
        if error is None:
            from celery.exceptions import Retry

            error = Retry(str(reason) if reason is not None else None)
        _error(getattr(request, "id", None), error)


def _postrun(task_id: str | None = None, state: str | None = None, **kw: Any) -> None:
    if task_id is None:
        return
    with _lock:
        running = _running.pop(task_id, None)
    if running is None:
        return
    error = running.error
    with internal_errors("celery.task_postrun"):
        running.op.set_tags(celery_state=state or "")
        if error is None and state not in (None, "SUCCESS"):
            from celery.exceptions import Retry

            error = Retry(f"task ended in state {state}")
    running.track.__exit__(type(error) if error is not None else None, error, None)


def _process_init(**kw: Any) -> None:
    # The exporter (MLflow import, store, price table) starts now, not on the first task.
    runtime.start(wait=False)


def _process_shutdown(**kw: Any) -> None:
    runtime.shutdown(timeout=settings.exit_timeout)


def _signals() -> list[tuple[Any, Any, str]]:
    from celery import signals

    return [
        (signals.before_task_publish, _before_publish, "before_task_publish"),
        (signals.task_prerun, _prerun, "task_prerun"),
        (signals.task_postrun, _postrun, "task_postrun"),
        (signals.task_failure, _on_failure, "task_failure"),
        (signals.task_retry, _on_retry, "task_retry"),
        (signals.worker_process_init, _process_init, "worker_process_init"),
        (signals.worker_process_shutdown, _process_shutdown, "worker_process_shutdown"),
        # Solo and thread pools run tasks in the main worker process (its exporter starts with
        # the first record there: starting it before prefork forks would only be thrown away).
        (signals.worker_shutdown, _process_shutdown, "worker_shutdown"),
    ]


def install(*, track_all: bool = False) -> None:
    """Connect the Celery signal handlers (idempotent).

    Args:
        track_all: Also record an operation for tasks queued outside any ``track`` block (in
            the default feature).
    """
    global _installed, _track_all
    _track_all = track_all
    if _installed:
        return
    for signal, receiver, name in _signals():
        signal.connect(receiver, weak=False, dispatch_uid=f"tracked_openai.{name}")
    _installed = True


def uninstall() -> None:
    """Disconnect what :func:`install` connected."""
    global _installed
    for signal, receiver, name in _signals():
        signal.disconnect(receiver, dispatch_uid=f"tracked_openai.{name}")
    _installed = False

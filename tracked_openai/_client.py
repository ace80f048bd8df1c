"""Drop-in clients: the SDK's own classes with one choke point, ``request()``, observed.

Every REST call of every resource (``create``, ``parse``, ``.stream()`` helpers, raw and streaming
response wrappers, ``beta.responses``) ends in ``request()``; ``_send_request()`` runs once per HTTP
attempt, so retries are counted there. ``copy()``/``with_options()`` rebuild the client through
``self.__class__``, so copies stay tracked. Other clients in the process are untouched.

An SDK whose internals moved (see :mod:`._compat`) gets the SDK's own classes' behaviour instead:
the overrides are removed at import and one warning is logged, so calls pass through untracked.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

import openai

from . import budgets as _budgets
from ._compat import SUPPORTED, sdk_problem, sdk_version
from ._config import settings
from ._errors import internal_errors, logger, report_internal_error

__all__ = ["SDK_PROBLEM", "TRACKING", "AsyncAzureOpenAI", "AsyncOpenAI", "AzureOpenAI", "OpenAI"]

# Checked once, here: what the installed SDK lacks of the internals our hooks use (None: all there).
SDK_PROBLEM: str | None = sdk_problem()
if SDK_PROBLEM is None:
    try:
        from .batches.hook import Watch, watch
        from .capture.call import Call, active
        from .capture.observe import observe
        from .capture.request import begin
    except Exception as exc:  # an internal the checks did not foresee
        SDK_PROBLEM = f"{type(exc).__name__}: {exc}"
TRACKING: bool = SDK_PROBLEM is None


# The hot path uses plain try/except (free in CPython 3.11+ when nothing is raised) where
# ``internal_errors`` would build and enter a context manager on every call. An HTTP attempt
# costs the caller one ``append``: its response headers (None for an attempt that raised), from
# which the exporter thread counts attempts and reads request ids.


def _send_sync(send: Any, request: Any, stream: bool, kwargs: dict[str, Any]) -> Any:
    """One HTTP attempt; noted (with its headers) when a tracked call is active."""
    call = active.get()
    if call is None:
        return send(request, stream=stream, **kwargs)
    try:
        response = send(request, stream=stream, **kwargs)
    except BaseException:
        call.attempt_headers.append(None)
        raise
    call.attempt_headers.append(getattr(response, "headers", None))
    return response


async def _send_async(send: Any, request: Any, stream: bool, kwargs: dict[str, Any]) -> Any:
    call = active.get()
    if call is None:
        return await send(request, stream=stream, **kwargs)
    try:
        response = await send(request, stream=stream, **kwargs)
    except BaseException:
        call.attempt_headers.append(None)
        raise
    call.attempt_headers.append(getattr(response, "headers", None))
    return response


def _batch_watch(client: Any, options: Any) -> Watch | None:
    # Unpaid requests: the Batch API's (create, list/retrieve, file downloads) are watched.
    try:
        return watch(client, options)
    except Exception as exc:
        report_internal_error(exc, "batches")
        return None


def _watched_sync(
    client: Any, request: Any, cast_to: Any, options: Any, stream: bool, stream_cls: Any
) -> Any:
    w = _batch_watch(client, options)
    if w is None:
        return request(cast_to, options, stream=stream, stream_cls=stream_cls)
    try:
        result = request(cast_to, options, stream=stream, stream_cls=stream_cls)
    except BaseException as exc:
        with internal_errors("batches"):
            w.failed(exc)
        raise
    with internal_errors("batches"):
        w.done(result, False)
    return result


async def _watched_async(
    client: Any, request: Any, cast_to: Any, options: Any, stream: bool, stream_cls: Any
) -> Any:
    w = _batch_watch(client, options)
    if w is None:
        return await request(cast_to, options, stream=stream, stream_cls=stream_cls)
    try:
        result = await request(cast_to, options, stream=stream, stream_cls=stream_cls)
    except BaseException as exc:
        with internal_errors("batches"):
            w.failed(exc)
        raise
    with internal_errors("batches"):
        w.done(result, True)
    return result


def _tracked_sync(
    client: Any, request: Any, cast_to: Any, options: Any, stream: bool, stream_cls: Any
) -> Any:
    call: Call | None = None
    try:
        call, options = begin(client, options, stream)
    except Exception as exc:
        report_internal_error(exc, "begin")
    if call is None:
        return _watched_sync(client, request, cast_to, options, stream, stream_cls)
    if _budgets.ACTIVE:
        _budgets.guard(call)  # BudgetExceeded here: not sent, recorded as blocked
    token: Token[Call | None] = active.set(call)
    try:
        result = request(cast_to, options, stream=stream, stream_cls=stream_cls)
    except BaseException as exc:
        active.reset(token)
        with internal_errors("record error"):
            call.fail(exc)
        raise
    active.reset(token)
    try:
        observe(call, result, False)
    except Exception as exc:
        report_internal_error(exc, "observe")
    return result


async def _tracked_async(
    client: Any, request: Any, cast_to: Any, options: Any, stream: bool, stream_cls: Any
) -> Any:
    call: Call | None = None
    try:
        call, options = begin(client, options, stream)
    except Exception as exc:
        report_internal_error(exc, "begin")
    if call is None:
        return await _watched_async(client, request, cast_to, options, stream, stream_cls)
    if _budgets.ACTIVE:
        await _budgets.guard_async(call)  # BudgetExceeded here: not sent, recorded as blocked
    token: Token[Call | None] = active.set(call)
    try:
        result = await request(cast_to, options, stream=stream, stream_cls=stream_cls)
    except BaseException as exc:
        active.reset(token)
        with internal_errors("record error"):
            call.fail(exc)
        raise
    active.reset(token)
    try:
        observe(call, result, True)
    except Exception as exc:
        report_internal_error(exc, "observe")
    return result


class OpenAI(openai.OpenAI):
    """``openai.OpenAI`` with every paid call recorded. Same arguments, results and errors."""

    def request(self, cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None) -> Any:
        if not settings.enabled:
            return super().request(cast_to, options, stream=stream, stream_cls=stream_cls)
        return _tracked_sync(self, super().request, cast_to, options, stream, stream_cls)

    def _send_request(self, request: Any, *, stream: bool, **kwargs: Any) -> Any:
        return _send_sync(super()._send_request, request, stream, kwargs)


class AsyncOpenAI(openai.AsyncOpenAI):
    """``openai.AsyncOpenAI`` with every paid call recorded. Same arguments, results and errors."""

    async def request(  # type: ignore[override]
        self, cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
    ) -> Any:
        if not settings.enabled:
            return await super().request(cast_to, options, stream=stream, stream_cls=stream_cls)
        return await _tracked_async(self, super().request, cast_to, options, stream, stream_cls)

    async def _send_request(self, request: Any, *, stream: bool, **kwargs: Any) -> Any:
        return await _send_async(super()._send_request, request, stream, kwargs)


class AzureOpenAI(openai.AzureOpenAI):
    """``openai.AzureOpenAI``, tracked; records keep the deployment name and the served model."""

    def request(self, cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None) -> Any:
        if not settings.enabled:
            return super().request(cast_to, options, stream=stream, stream_cls=stream_cls)
        return _tracked_sync(self, super().request, cast_to, options, stream, stream_cls)

    def _send_request(self, request: Any, *, stream: bool, **kwargs: Any) -> Any:
        return _send_sync(super()._send_request, request, stream, kwargs)


class AsyncAzureOpenAI(openai.AsyncAzureOpenAI):
    """``openai.AsyncAzureOpenAI``, tracked."""

    async def request(  # type: ignore[override]
        self, cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
    ) -> Any:
        if not settings.enabled:
            return await super().request(cast_to, options, stream=stream, stream_cls=stream_cls)
        return await _tracked_async(self, super().request, cast_to, options, stream, stream_cls)

    async def _send_request(self, request: Any, *, stream: bool, **kwargs: Any) -> Any:
        return await _send_async(super()._send_request, request, stream, kwargs)


TrackedOpenAI = OpenAI
AsyncTrackedOpenAI = AsyncOpenAI


def _pass_through(*classes: type[Any]) -> None:
    # Without our overrides each class is exactly the SDK's: same calls, nothing recorded.
    for cls in classes:
        for name in ("request", "_send_request"):
            if name in cls.__dict__:
                delattr(cls, name)


if not TRACKING:
    _pass_through(OpenAI, AsyncOpenAI, AzureOpenAI, AsyncAzureOpenAI)
    logger.warning(
        "tracked_openai: openai %s is not supported (%s; tested: openai %s): clients pass through "
        "untracked, track() blocks still record operations. Install a supported openai to record calls.",
        sdk_version(),
        SDK_PROBLEM,
        SUPPORTED,
    )

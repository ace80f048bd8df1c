"""``TrackedOpenAIMiddleware``: one operation per request for the views that declare a feature.

A view declares its feature with ``@track(feature, ...)`` on the view function (its own
operation then runs as a step inside the request's), with ``tracked_feature`` /
``tracked_operation`` attributes on a class-based view (or a function), or through
``TRACKED_OPENAI["views"]``, a mapping of URL name patterns (``fnmatch``, namespaced names
like ``"reports:*"``) to a feature or ``{"feature": ..., "operation": ...}``. Other requests pass
through untouched.

The operation is tagged with the URL name, HTTP method, status, the request id (header
``TRACKED_OPENAI["request_id_header"]``) and, when ``TRACKED_OPENAI["user"]`` is ``"id"`` or
``"hashed"``, the user's primary key or a keyed hash of it (never a name or email).

A streaming response's content runs inside the request's operation (so calls started while it is
read belong to it) and the operation ends when the response is closed.
"""

from __future__ import annotations

import asyncio
import contextvars
import fnmatch
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.urls import Resolver404, ResolverMatch, resolve

from ... import scope as _scope
from ..._config import settings as _settings
from ..._errors import internal_errors
from ...scope import Operation, track
from . import conf

__all__ = ["TrackedOpenAIMiddleware", "view_scope"]

_MAX_TAG = 200


def _track_of(func: Any) -> Any:
    """The ``track`` a view function was decorated with (through other decorators too)."""
    seen = 0
    while func is not None and seen < 10:
        marker = getattr(func, "__tracked_openai__", None)
        if marker is not None:
            return marker
        func = getattr(func, "__wrapped__", None)
        seen += 1
    return None


def view_scope(match: ResolverMatch) -> tuple[str | None, str | None] | None:
    """``(feature, operation)`` the resolved view declares, or ``None`` when it declares none
    (``feature`` ``None`` means the configured default feature)."""
    func = match.func
    # Django's as_view() sets view_class; Django REST framework's viewsets set cls.
    for holder in (getattr(func, "view_class", None), getattr(func, "cls", None), func):
        feature = getattr(holder, "tracked_feature", None)
        if isinstance(feature, str) and feature:
            operation = getattr(holder, "tracked_operation", None)
            return feature, operation if isinstance(operation, str) else None
    marker = _track_of(func)
    if marker is not None:
        # The decorator's own operation (a step inside the request's) keeps its name.
        return marker._feature, match.view_name or marker._operation
    views = conf.option("views")
    name = match.view_name
    if views and name:
        for pattern, target in views.items():
            if fnmatch.fnmatchcase(name, pattern):
                if isinstance(target, str):
                    return target, None
                return target["feature"], target.get("operation")
    return None


def _user_tag(user: Any) -> str | None:
    mode = conf.option("user")
    if mode is None or user is None or not getattr(user, "is_authenticated", False):
        return None
    pk = str(user.pk)
    if mode == "hashed":
        from django.conf import settings

        key = str(getattr(settings, "SECRET_KEY", "")).encode()
        return hmac.new(key, f"tracked_openai.user:{pk}".encode(), hashlib.sha256).hexdigest()[:16]
    return pk


class _RequestOperation:
    """The operation of one request, from the view's start to the response's end."""

    def __init__(
        self, request: HttpRequest, match: ResolverMatch, scope: tuple[str | None, str | None]
    ) -> None:
        feature, operation = scope
        tags = {
            "django_view": match.view_name or match.func.__qualname__,
            "http_method": request.method or "",
        }
        header = conf.option("request_id_header")
        request_id = request.headers.get(header)
        if request_id:
            tags["request_id"] = request_id[:_MAX_TAG]
        self._track = track(
            feature,
            operation or match.view_name or None,
            _function=f"{match.func.__module__}.{match.func.__qualname__}",
            **tags,
        )
        self.op: Operation | None = None

    def enter(self) -> None:
        self.op = self._track.__enter__()

    def response(self, response: HttpResponseBase, user: Any) -> None:
        op = self.op
        if op is None:
            return
        with internal_errors("django.middleware.response"):
            status = response.status_code
            tags = {"http_status": str(status)}
            user_tag = _user_tag(user)
            if user_tag is not None:
                tags["user_id"] = user_tag
            op.set_tags(tags)
            if status >= 500:
                op.record.status = "error"
                op.record.error_type = "HTTPError"
                op.record.error_message = f"HTTP {status}"

    def exit(self, exc: BaseException | None = None) -> None:
        self._track.__exit__(type(exc) if exc is not None else None, exc, None)

    def detach(self) -> contextvars.Context:
        """Keep the operation running but no longer current here; returns a context in which it
        is current, for the response's content."""
        ctx = contextvars.copy_context()
        op = self.op
        if op is not None:
            token, op._token = op._token, None
            if token is not None:
                _scope._current.reset(token)
        return ctx

    def stream(self, response: StreamingHttpResponse) -> None:
        ctx = self.detach()
        content: Any = response.streaming_content
        wrapper = _AsyncContent if response.is_async else _SyncContent
        response.streaming_content = wrapper(self, ctx, content)


class _Content:
    """A streaming response's content read inside the request's operation, which ends when the
    content ends, fails or is closed (Django closes the response even when it was never read)."""

    def __init__(self, handle: _RequestOperation, ctx: contextvars.Context, content: Any) -> None:
        self._handle = handle
        self._ctx = ctx
        self._content = content
        self._done = False

    def _end(self, exc: BaseException | None) -> None:
        if not self._done:
            self._done = True
            self._ctx.run(self._handle.exit, exc)

    def close(self) -> None:
        self._end(None)


class _SyncContent(_Content):
    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            chunk: bytes = self._ctx.run(next, self._content)
        except StopIteration:
            self._end(None)
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        return chunk


class _AsyncContent(_Content):
    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        # A task created in the saved context runs in a copy of it: the operation is current.
        step = self._ctx.run(asyncio.ensure_future, anext(self._content))
        try:
            chunk: bytes = await step
        except StopAsyncIteration:
            self._end(None)
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        return chunk


def _declared(request: HttpRequest) -> tuple[ResolverMatch, tuple[str | None, str | None]] | None:
    with internal_errors("django.middleware.resolve"):
        try:
            match = resolve(request.path_info, getattr(request, "urlconf", None))
        except Resolver404:
            return None
        scope = view_scope(match)
        if scope is not None:
            return match, scope
    return None


class TrackedOpenAIMiddleware:
    """Add ``"tracked_openai.contrib.django.middleware.TrackedOpenAIMiddleware"`` to
    ``MIDDLEWARE`` (after ``AuthenticationMiddleware`` to tag users)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        declared = _declared(request) if _settings.enabled else None
        if declared is None:
            return self.get_response(request)
        handle = _RequestOperation(request, *declared)
        handle.enter()
        try:
            response = self.get_response(request)
        except BaseException as exc:
            handle.exit(exc)
            raise
        user = getattr(request, "user", None) if conf.option("user") else None
        return self._finish(handle, response, user)

    async def __acall__(self, request: HttpRequest) -> Any:
        declared = _declared(request) if _settings.enabled else None
        if declared is None:
            return await self.get_response(request)
        handle = _RequestOperation(request, *declared)
        handle.enter()
        try:
            response = await self.get_response(request)
        except BaseException as exc:
            handle.exit(exc)
            raise
        user = None
        if conf.option("user") and hasattr(request, "auser"):
            with internal_errors("django.middleware.user"):
                user = await request.auser()
        return self._finish(handle, response, user)

    @staticmethod
    def _finish(handle: _RequestOperation, response: Any, user: Any) -> Any:
        handle.response(response, user)
        if isinstance(response, StreamingHttpResponse) and handle.op is not None:
            try:
                handle.stream(response)
                return response
            except Exception:  # never lose the response: end the operation now instead
                pass
        handle.exit()
        return response

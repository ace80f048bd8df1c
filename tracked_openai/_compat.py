"""Which OpenAI SDK we run on, and whether its internals are the ones our hooks rely on.

The clients observe calls through a few private SDK internals: ``request()`` and
``_send_request()`` with their current signatures, ``Stream._iterator``, the HTTP response's
``stream`` attribute and byte-stream classes, and the request options' fields. A future SDK may
move any of them. Rather than fail at import or break a call, :func:`sdk_problem` checks them
once, at import (``hasattr``-style checks of names, signatures and the attribute names a method's
code uses; about 0.3 ms in all, importing nothing the SDK does not import itself), and the clients
then fall back to the SDK's own behaviour: a plain pass-through client, announced by one warning
on the ``tracked_openai`` logger.

A logged warning rather than :func:`warnings.warn`: an application run with ``-W error`` (as
test suites often are) would otherwise turn the warning into an import error, which is exactly
what this module exists to prevent.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["SUPPORTED", "http_modules", "sdk_http_module", "sdk_problem", "sdk_version"]

# The releases the test matrix covers (tox.ini); outside them the checks below still decide.
SUPPORTED = "2.31 to 3.63"


def sdk_version() -> str:
    try:
        import openai

        return str(getattr(openai, "__version__", "unknown"))
    except Exception:  # pragma: no cover - openai is a dependency
        return "unknown"


def sdk_http_module() -> Any:
    """The HTTP library of the SDK's own clients: ``httpx2`` (openai 3.x) or ``httpx`` (2.x)."""
    from openai import _base_client

    return getattr(_base_client, "httpx2", None) or getattr(_base_client, "httpx")  # noqa: B009


def http_modules() -> tuple[Any, Any]:
    """``(httpx2, httpx)`` as far as installed: ``httpx2`` if it is (else ``httpx``, as on an
    openai 2.x install), and ``httpx`` (None if absent). A response may come from either: openai
    3.x takes a legacy ``httpx`` client as ``http_client``, late 2.x releases an ``httpx2`` one."""
    primary: Any
    legacy: Any
    try:
        import httpx2

        primary = httpx2
    except ImportError:  # openai 2.x depends on httpx only
        import httpx

        primary = httpx
    try:
        import httpx

        legacy = httpx
    except ImportError:
        legacy = None
    return primary, legacy


def _params(func: Any) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None


def _positional(params: dict[str, inspect.Parameter]) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [name for name, p in params.items() if p.kind in kinds]


def _keyword(params: dict[str, inspect.Parameter], name: str) -> bool:
    p = params.get(name)
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return p is not None and p.kind in kinds


def _check_request(cls: type[Any]) -> str | None:
    # Our override is ``request(self, cast_to, options, *, stream=False, stream_cls=None)`` and
    # calls ``super().request`` the same way.
    params = _params(getattr(cls, "request", None))
    if params is None:
        return f"{cls.__name__}.request is missing"
    if _positional(params)[:3] != ["self", "cast_to", "options"] or not (
        _keyword(params, "stream") and _keyword(params, "stream_cls")
    ):
        return f"{cls.__name__}.request{inspect.signature(cls.request)} has changed"
    # ``_send_request(self, request, *, stream, **kwargs)``: called once per HTTP attempt.
    params = _params(getattr(cls, "_send_request", None))
    if params is None:
        return f"{cls.__name__}._send_request is missing"
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if _positional(params)[:2] != ["self", "request"] or not _keyword(params, "stream") or not has_var_kw:
        return f"{cls.__name__}._send_request{inspect.signature(cls._send_request)} has changed"
    return None


def _sets_and_reads(cls: type[Any], attribute: str, setter: str, readers: tuple[str, ...]) -> bool:
    """Whether ``cls.<setter>`` assigns and each reader reads ``attribute``, from their code."""
    for name in (setter, *readers):
        code = getattr(getattr(cls, name, None), "__code__", None)
        if code is None or attribute not in code.co_names:
            return False
    return True


def _option_fields(options_cls: type[Any]) -> set[str]:
    fields = getattr(options_cls, "model_fields", None) or getattr(options_cls, "__fields__", None) or {}
    return set(fields)


def sdk_problem() -> str | None:
    """None when the installed SDK has every internal the clients hook; else what is missing."""
    try:
        import openai
        from openai import AsyncStream, Stream
        from openai._legacy_response import HttpxBinaryResponseContent, LegacyAPIResponse  # noqa: F401
        from openai._models import FinalRequestOptions
        from openai._response import BaseAPIResponse  # noqa: F401
        from openai.lib.azure import AsyncAzureOpenAI, AzureOpenAI  # noqa: F401
    except Exception as exc:
        return f"cannot import {exc}"
    for cls in (openai.OpenAI, openai.AsyncOpenAI):
        problem = _check_request(cls)
        if problem is not None:
            return problem
    # Streams: the usage chunk we asked for is hidden by replacing ``_iterator``, which the
    # stream's constructor sets and its iteration reads; the byte tee needs ``.response``.
    if not _sets_and_reads(Stream, "_iterator", "__init__", ("__next__", "__iter__")):
        return "Stream._iterator has moved"
    if not _sets_and_reads(AsyncStream, "_iterator", "__init__", ("__anext__", "__aiter__")):
        return "AsyncStream._iterator has moved"
    if not _sets_and_reads(Stream, "response", "__init__", ()):
        return "Stream.response has moved"
    missing = {"method", "url", "json_data", "extra_json", "headers", "files"} - _option_fields(
        FinalRequestOptions
    )
    if missing:
        return f"FinalRequestOptions has no {', '.join(sorted(missing))}"
    try:
        http = sdk_http_module()
        http_modules()
    except Exception as exc:
        return f"the SDK's HTTP library is not found ({exc})"
    for name in ("Response", "SyncByteStream", "AsyncByteStream", "TransportError"):
        if not hasattr(http, name):
            return f"{http.__name__}.{name} is missing"
    if not _sets_and_reads(http.Response, "stream", "__init__", ()):
        return f"{http.__name__}.Response.stream has moved"
    return None

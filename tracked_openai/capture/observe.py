"""Observing what the SDK returned: typed results are read in place, bodies through the tee.

Anything that carries an HTTP body the caller reads later (streams, raw and streaming
responses) is observed at the byte level; parsing the kept bytes happens on the exporter thread,
so the caller's thread only slices bytes.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

from openai import AsyncStream, Stream
from openai._legacy_response import HttpxBinaryResponseContent, LegacyAPIResponse
from openai._response import BaseAPIResponse

from ..export.runtime import add_release_hook
from .call import AUDIO_IN, Call
from .decode import IDENTITY, encoding_of, httpx, httpx2, kind_of, watch_decoder
from .sse import BodyParser
from .tee import BodyObserver, close_open_streams, make_tee, open_observers

__all__ = ["observe"]


def observe(call: Call, result: Any, is_async: bool) -> None:
    try:
        _observe_result(call, result, is_async)
    except Exception:
        # A fault of ours while observing must not lose the record or hold its operation back.
        call.finish()
        raise


def _observe_result(call: Call, result: Any, is_async: bool) -> None:
    if isinstance(result, (Stream, AsyncStream)):
        filtered = False
        try:
            filtered = _observe_http(call, result.response, is_async, drop_usage_chunk=call.injected)
        finally:
            # Even when observing failed: the caller must never see the chunk we asked for.
            if call.injected and not filtered:
                _hide_usage_chunk(result)
    elif isinstance(result, (LegacyAPIResponse, BaseAPIResponse)):
        _observe_http(call, result.http_response, is_async)
    elif isinstance(result, HttpxBinaryResponseContent):
        _observe_http(call, result.response, is_async)
    else:
        if result is not None and (call.endpoint in AUDIO_IN or not isinstance(result, (str, bytes))):
            call.result = result
        call.finish()



def _is_usage_only(chunk: Any) -> bool:
    return getattr(chunk, "choices", None) == [] and getattr(chunk, "usage", None) is not None


def _hide_usage_chunk(stream: Any) -> None:
    """Drop the usage-only chunk we asked for, so the caller sees exactly its own chunks."""
    inner = stream._iterator
    if isinstance(stream, AsyncStream):

        async def afilter() -> AsyncIterator[Any]:
            async for chunk in inner:
                if not _is_usage_only(chunk):
                    yield chunk

        stream._iterator = afilter()
    else:

        def sfilter() -> Iterator[Any]:
            for chunk in inner:
                if not _is_usage_only(chunk):
                    yield chunk

        stream._iterator = sfilter()


def _observe_http(call: Call, response: Any, is_async: bool, drop_usage_chunk: bool = False) -> bool:
    """Observe ``response``'s body; returns True when the injected usage chunk is dropped from
    the bytes themselves (the SDK then never parses it, which is cheaper than hiding the object).
    Headers are read here only to decide that; the parser reads them on the exporter thread."""
    call.http_status = response.status_code
    headers = response.headers
    module: Any = httpx2 if isinstance(response, httpx2.Response) or httpx is None else httpx
    state = getattr(response, "__dict__", None)
    # ``hasattr`` on the absent attribute (every stream) would raise and catch AttributeError.
    if "_content" in state if state is not None else hasattr(response, "_content"):
        # Body already read (with_raw_response on a non-stream call, binary speech).
        kind = kind_of(headers)
        if kind != "other":
            call.body = BodyParser(call.endpoint, kind, None, [response.content])
        call.finish("complete" if call.stream else None)
        return False
    observer = BodyObserver(call, headers, module)
    identity = encoding_of(headers) in IDENTITY
    if not identity:
        watch_decoder(response, observer, module)
    # Compressed bodies cannot be cut at event boundaries; those keep the object-level filter.
    # The SDK reads a Stream's body as SSE whatever its content type, so the filter can too.
    filtering = drop_usage_chunk and identity
    observer.filtering = filtering
    inner = response.stream
    base: type[Any] = module.AsyncByteStream if is_async else module.SyncByteStream
    response.stream = make_tee(base, inner, observer, is_async)
    # Backstop for a stream the caller drops without closing. The weak reference lives on the
    # observer, which ``open_observers`` keeps alive until it closes, so its callback fires when
    # the response is collected (what ``weakref.finalize`` does, for a tenth of its cost); the
    # observer holds no strong reference to the response, so this does not keep it alive.
    observer.response_ref = weakref.ref(response, observer.collected)
    open_observers.add(observer)
    return filtering



def _close_open_streams(at_exit: bool) -> None:
    # ``shutdown()`` leaves streams alone: they may still be read afterwards.
    if at_exit:
        close_open_streams()


# At exit, streams still open are recorded first (``stream_end="abandoned"``), which also
# completes the operations waiting for them.
add_release_hook("streams", _close_open_streams, order=0)

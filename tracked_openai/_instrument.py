"""Around one ``request()``: capture the call, observe the result, finish the record once.

The caller gets exactly what the SDK returns. Typed results are read in place; anything that
carries an HTTP body the caller will read later (streams, raw and streaming responses) is observed
at the byte level: the response's byte stream is swapped for a pass-through tee that keeps the
bytes and finishes the record when the stream closes, with a weak-reference backstop for
streams that are dropped unclosed. Parsing the kept bytes (usage, served model, errors) happens
on the exporter thread (``_BodyParser``), so the caller's thread only slices bytes; a stream long
enough to hold more than ``_INLINE_PARSE_BYTES`` is parsed as it goes, to keep memory bounded.
Every step here is behind the internal-error boundary (``internal_errors``, or on the hot path a
plain try/except that reports the same way).
"""

from __future__ import annotations

import json
import re
import sys
import time
import weakref
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from openai import AsyncStream, Stream
from openai._legacy_response import HttpxBinaryResponseContent, LegacyAPIResponse
from openai._response import BaseAPIResponse
from openai.lib.azure import AsyncAzureOpenAI, AzureOpenAI

from . import _runtime
from ._audio import capture_upload
from ._compat import http_modules
from ._context import _current as _current_op
from ._context import call_closed, call_opened
from ._errors import internal_errors, logger, report_internal_error
from ._usage import ENDPOINTS, _get, apply_body, embeddings_request, params_of, usage_from_body
from .records import EXTRAPOLATED_TAG, USAGE_KEYS, CallRecord, Usage

__all__ = ["Call", "active_call", "begin", "close_open_streams", "observe_async", "observe_sync"]

_RAW_HEADER = "X-Stainless-Raw-Response"
_MAX_MESSAGE = 2_000
_MAX_JSON_BODY = 64 * 1024 * 1024
# One SSE line (so one event) longer than this is skipped, not parsed, like a longer JSON body.
_MAX_EVENT_BYTES = _MAX_JSON_BODY
# Event data kept, from a stream's start, to estimate its usage from if it reports none; past
# it the estimate is extrapolated (see ``_estimate``).
_MAX_KEPT_EVENTS_BYTES = 8 * 1024 * 1024
# Bytes a stream's observer keeps for the exporter thread before it parses them inline instead.
_INLINE_PARSE_BYTES = 1024 * 1024
_ESTIMABLE = frozenset({"chat.completions", "completions", "responses"})
_AUDIO_IN = frozenset({"audio.transcriptions", "audio.translations"})
_USAGE_NULL = re.compile(rb'"usage"\s*:\s*null\s*')
_SSE_EVENT = re.compile(rb".*?(?:\r\n\r\n|\n\n)", re.S)
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_STREAM_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# A response comes from ``httpx2`` (openai 3.x's own, late 2.x releases accept it too) or ``httpx``
# (openai 2.x's own; openai 3.x takes a legacy client): ``httpx2`` is httpx2 if installed, else
# httpx; ``httpx`` is httpx, None if absent. Bound once, at import: the hot path reads globals.
httpx2, httpx = http_modules()

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx2.TransportError,) + (
    (httpx.TransportError,) if httpx is not None else ()
)


class Call:
    """In-flight state of one tracked call; ``finish`` runs exactly once.

    The call's :class:`CallRecord` is built from this state on the exporter thread
    (``to_record``), not when the call begins: a record has thirty-odd fields, and filling them
    on the caller's path is time the caller would wait for nothing. The few rare steps that
    write to the record early (a failure, a transport error, a long stream parsed as it
    arrives, a call finishing after its operation) build it where they run (``record``).
    """

    __slots__ = (
        "__weakref__",
        "_once",
        "_record",
        "attempt_headers",
        "body",
        "budget",
        "duration",
        "endpoint",
        "feature",
        "http_status",
        "injected",
        "model",
        "op",
        "provider",
        "request",
        "result",
        "started_at",
        "stream",
        "stream_end",
        "t0",
        "tags",
        "upload",
    )

    def __init__(
        self,
        endpoint: str,
        op: Any,
        request: dict[str, Any],
        feature: str,
        provider: str,
        model: str | None,
        stream: bool,
    ) -> None:
        self.started_at = time.time()
        self.t0 = time.perf_counter()
        self.endpoint = endpoint
        self.op = op
        self.request = request
        self.feature = feature
        self.provider = provider
        self.model = model
        self.stream = stream
        # The operation's tags when the call began (it may add more later).
        self.tags: dict[str, str] | None = dict(op.record.tags) if op is not None else None
        self._record: CallRecord | None = None
        self.result: Any = None
        # Each HTTP attempt's response headers (None if it raised): attempts are counted and
        # request ids read off them on the exporter thread (a header lookup walks every header).
        self.attempt_headers: list[Any] = []
        self.injected = False
        self.http_status: int | None = None
        self.duration: float | None = None
        self.stream_end: str | None = None
        # Popped by the one ``finish`` that runs: ``list.pop`` is atomic (the GIL, or the list's
        # own lock on free-threaded builds), and far cheaper on a cold path than a Lock.
        self._once: list[None] = [None]
        # The observed HTTP body, parsed on the exporter thread (see _BodyParser).
        self.body: _BodyParser | _BodyObserver | None = None
        # Audio endpoints: the uploaded file (bytes or a path), measured only if the response
        # reports no duration (see _audio).
        self.upload: bytes | str | None = None
        # The budget reservation (budgets.guard), settled when the record is priced.
        self.budget: Any = None

    @property
    def record(self) -> CallRecord:
        """The call's record (built on first use)."""
        rec = self._record
        if rec is None:
            op = self.op
            scope = op.record if op is not None else None
            rec = self._record = CallRecord(
                # Given its id when prepared (``_runtime.prepare``): formatting one costs
                # microseconds, and nothing reads it before then.
                record_id="",
                parent_id=scope.record_id if scope is not None else None,
                started_at=self.started_at,
                feature=self.feature,
                operation=scope.operation if scope is not None else None,
                function=scope.function if scope is not None else None,
                tags=self.tags if self.tags is not None else {},
                endpoint=self.endpoint,
                provider=self.provider,
                model=self.model,
                stream=self.stream,
            )
        return rec

    def fail(self, exc: BaseException) -> None:
        rec = self.record
        rec.status = "error"
        rec.error_type = type(exc).__name__
        rec.error_message = str(exc)[:_MAX_MESSAGE]
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            self.http_status = status
        completion = getattr(exc, "completion", None)
        if completion is not None:
            # LengthFinishReasonError & co come after a billed 200: keep its usage.
            apply_body(rec, self.endpoint, completion)
        self.finish()

    def finish(self, stream_end: str | None = None) -> None:
        """Hand the call to the exporter. Only timing happens here: its record, usage, params
        and estimates are made on the exporter thread (``to_record``)."""
        try:
            self._once.pop()
        except IndexError:
            return
        self.duration = time.perf_counter() - self.t0
        if stream_end is not None:
            self.stream_end = stream_end
        # Every enclosing operation rolls up this call, so an operation's totals include its
        # nested operations' calls and summing top-level runs never counts a call twice.
        op = self.op
        if op is None:
            _runtime.submit(self)
            return
        ready = call_closed(op, self)
        _runtime.submit(self)
        for op_record in ready:
            _runtime.submit(op_record)

    def to_record(self) -> CallRecord:
        """Exporter thread: the finished call's record, complete but for its id and cost (request
        ids, params, the observed body or the usage of a typed result, an estimate if the
        response had none). Releases what the call held."""
        rec = self.record
        rec.duration_s = self.duration
        if self.stream_end is not None:
            rec.stream_end = self.stream_end
        if self.http_status is not None:
            rec.http_status = self.http_status
        request, result, body, upload = self.request, self.result, self.body, self.upload
        self.request, self.result, self.body, self.upload = {}, None, None, None
        with internal_errors("usage estimate"):
            _resolve(self.endpoint, request, result, body, upload, self.attempt_headers, rec)
        return rec


def _resolve(
    endpoint: str,
    request: dict[str, Any],
    result: Any,
    body: _BodyParser | _BodyObserver | None,
    upload: bytes | str | None,
    attempt_headers: list[Any],
    rec: CallRecord,
) -> None:
    """Exporter-thread half of a call: request ids, params, the observed body or the usage of a
    typed result, an estimate if the response had none."""
    rec.attempts = len(attempt_headers)
    for headers in attempt_headers:
        if headers is None:
            continue
        request_id = headers.get("x-request-id")
        if request_id:
            rec.request_ids.append(request_id)
    rec.params = params_of(request)
    sample = body.finish(rec) if body is not None else _NO_SAMPLE
    if isinstance(result, (str, bytes)):
        text, result = result, None  # a text/srt/vtt transcription: no usage in it
    else:
        text = None
    if result is not None:
        apply_body(rec, endpoint, result)
        if rec.content is not None:
            rec.content["response"] = _output_of(result)
    if rec.usage_source == "none" and not rec.usage.is_empty():
        rec.usage_source = "response"
    if rec.usage_source == "none" and endpoint in _AUDIO_IN and rec.status == "success":
        _measure_audio(rec, upload, text)
    if rec.usage_source == "none" and rec.stream and endpoint in _ESTIMABLE and rec.status == "success":
        from ._estimate import estimate_stream_usage

        model = rec.response_model or rec.model
        events, seen, cut = sample
        estimate = estimate_stream_usage(endpoint, request, model, events, seen, cut)
        rec.usage.input_tokens = estimate.input_tokens
        rec.usage.output_tokens = estimate.output_tokens
        rec.usage_source = "estimated"
        if estimate.extrapolated:
            rec.tags[EXTRAPOLATED_TAG] = "true"


def _measure_audio(rec: CallRecord, upload: bytes | str | None, text: str | bytes | None) -> None:
    from ._audio import measure_seconds, subtitle_seconds

    seconds = measure_seconds(upload) if upload is not None else None
    if seconds is None and text is not None:
        seconds = subtitle_seconds(text)
    if seconds is not None:
        rec.usage.seconds = seconds
        rec.usage_source = "estimated"


_active: ContextVar[Call | None] = ContextVar("tracked_openai_call", default=None)


def active_call() -> Call | None:
    return _active.get()


# -- begin -------------------------------------------------------------------------------------


# Client classes whose ``base_url`` is not their ``_base_url``: the SDK's module clients read
# ``openai.base_url``, which may change after the client was built (``_module_client`` adds them).
LIVE_BASE_URL: set[type[Any]] = set()


def _is_openai_host(client: Any) -> bool:
    # ``base_url`` is a property that imports on every read; the URL object it returns only
    # changes when the client's base URL is set, so the answer is kept per client and URL.
    url = getattr(client, "_base_url", None)
    if url is None or type(client) in LIVE_BASE_URL:
        url = client.base_url
    cached = client.__dict__.get("_tracked_openai_host")
    if cached is not None and cached[0] is url:
        return bool(cached[1])
    host = str(url.host)
    answer = isinstance(client, (AzureOpenAI, AsyncAzureOpenAI)) or (
        host == "api.openai.com"
        or host.endswith((".openai.com", ".openai.azure.com", ".cognitiveservices.azure.com"))
    )
    client.__dict__["_tracked_openai_host"] = (url, answer)
    return answer


def begin(client: Any, options: Any, stream: bool) -> tuple[Call | None, Any]:
    """Start a record for a paid call; ``(None, options)`` for anything we do not track."""
    if options.method.lower() != "post":
        return None, options
    url: str = options.url
    query = url.find("?")
    if query >= 0:
        url = url[:query]
    endpoint = ENDPOINTS.get(url)
    if endpoint is None:
        return None, options
    request = options.json_data if isinstance(options.json_data, dict) else {}
    headers = options.headers
    raw = headers.get(_RAW_HEADER) if isinstance(headers, dict) else None
    op = _current_op.get()
    settings = _runtime.settings
    model = request.get("model")
    call = Call(
        endpoint,
        op,
        request,
        op.record.feature if op is not None else settings.default_feature,
        "azure" if isinstance(client, (AzureOpenAI, AsyncAzureOpenAI)) else "openai",
        model if isinstance(model, str) else None,
        bool(stream or request.get("stream")),
    )
    if endpoint == "audio.speech" and isinstance(request.get("input"), str):
        call.record.usage = Usage(characters=len(request["input"]))
    if settings.capture_content:
        call.record.content = {
            "request": {
                k: request[k]
                for k in ("messages", "input", "prompt", "instructions")
                if k in request
            }
        }
    if endpoint in _AUDIO_IN:
        call.upload = capture_upload(getattr(options, "files", None))
    elif endpoint == "embeddings":
        # Recorded params are what the caller passed, not the SDK's default encoding.
        call.request = embeddings_request(request, options)
    if (
        call.stream
        and endpoint in ("chat.completions", "completions")
        and settings.inject_stream_usage
        and raw is None
    ):
        options = _maybe_inject_usage(client, options, request, call)
    if op is not None:
        # Last: from here on the call is sure to finish (and release its operation).
        call_opened(op)
    return call, options


def _maybe_inject_usage(client: Any, options: Any, request: dict[str, Any], call: Call) -> Any:
    stream_options = request.get("stream_options")
    if stream_options is not None or options.extra_json is not None:
        if isinstance(stream_options, dict) and "include_usage" in stream_options:
            return options
        extra = options.extra_json
        if isinstance(extra, dict) and "stream_options" in extra:
            return options
    if not _is_openai_host(client):
        # Other OpenAI-compatible servers may reject the field; estimate instead.
        return options
    merged = dict(stream_options) if isinstance(stream_options, dict) else {}
    merged["include_usage"] = True
    # ``options`` is the SDK's own per-call object (built by the resource method, copied again
    # by ``request()`` before each attempt); replacing its body spares a pydantic copy. The
    # caller's ``stream_options`` dict is never mutated.
    body = {**request, "stream_options": merged}
    fields = getattr(options, "__dict__", None)
    if fields is not None and fields.get("json_data") is request:
        # The field is set already: this is what pydantic's ``__setattr__`` does then, minus
        # its dispatch (microseconds on a cold path).
        fields["json_data"] = body
    else:
        options.json_data = body
    call.injected = True
    return options


# -- observing results -------------------------------------------------------------------------


def observe_sync(call: Call, result: Any) -> None:
    _observe(call, result, is_async=False)


def observe_async(call: Call, result: Any) -> None:
    _observe(call, result, is_async=True)


def _observe(call: Call, result: Any, is_async: bool) -> None:
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
        if result is not None and (call.endpoint in _AUDIO_IN or not isinstance(result, (str, bytes))):
            call.result = result
        call.finish()


def _output_of(result: Any) -> Any:
    text = _get(result, "output_text")
    if isinstance(text, str):
        return text
    choices = _get(result, "choices")
    if isinstance(choices, list):
        return [_get(_get(c, "message"), "content") or _get(c, "text") for c in choices]
    return None


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
        kind = _kind_of(headers)
        if kind != "other":
            call.body = _BodyParser(call.endpoint, kind, None, [response.content])
        call.finish("complete" if call.stream else None)
        return False
    observer = _BodyObserver(call, headers, module)
    identity = _encoding_of(headers) in _IDENTITY
    if not identity:
        _watch_decoder(response, observer, module)
    # Compressed bodies cannot be cut at event boundaries; those keep the object-level filter.
    # The SDK reads a Stream's body as SSE whatever its content type, so the filter can too.
    filtering = drop_usage_chunk and identity
    observer.filtering = filtering
    inner = response.stream
    base: type[Any] = module.AsyncByteStream if is_async else module.SyncByteStream
    response.stream = _make_tee(base, inner, observer, is_async)
    # Backstop for a stream the caller drops without closing. The weak reference lives on the
    # observer, which ``_open_observers`` keeps alive until it closes, so its callback fires when
    # the response is collected (what ``weakref.finalize`` does, for a tenth of its cost); the
    # observer holds no strong reference to the response, so this does not keep it alive.
    observer.response_ref = weakref.ref(response, observer.collected)
    _open_observers.add(observer)
    return filtering


_IDENTITY = ("", "identity")


def _kind_of(headers: Any) -> str:
    content_type: str = headers.get("content-type", "")
    return "sse" if "event-stream" in content_type else "json" if "json" in content_type else "other"


def _encoding_of(headers: Any) -> str:
    items = getattr(headers, "_list", None)
    if not isinstance(items, list):
        encoding: str = headers.get("content-encoding", "")
        return encoding.strip().lower()
    # httpx2 and httpx keep (raw key, lower-case key, value) triples. Reading them spares what
    # ``get`` costs for a header that is absent (the usual case): checking every header's
    # encoding, then raising and catching KeyError, about 2 µs on the caller's thread.
    values = None
    for item in items:  # a loop, not a comprehension: no frame of its own for the usual miss
        if item[1] == b"content-encoding":
            if values is None:
                values = []
            values.append(item[2])
    return b", ".join(values).decode("latin-1").strip().lower() if values else ""


# Bodies being observed, so that a process exiting with streams still open records them.
_open_observers: set[_BodyObserver] = set()


def close_open_streams() -> None:
    """At exit: finish the record of every stream still open (``stream_end="abandoned"``)."""
    for observer in list(_open_observers):
        observer.close("abandoned")


def _decoder_for(headers: Any, module: Any) -> Any:
    """A decoder for the body's content-encoding; None if it has none, False if unsupported."""
    encoding = _encoding_of(headers)
    if encoding in _IDENTITY:
        return None
    codings = [c.strip() for c in encoding.split(",") if c.strip() and c.strip() != "identity"]
    try:
        supported = module._decoders.SUPPORTED_DECODERS  # type: ignore[attr-defined]
        decoders = [supported[c]() for c in reversed(codings)]
    except Exception:
        decoders = []
        for coding in reversed(codings):
            if coding == "gzip":
                decoders.append(_ZlibDecoder(zlib.MAX_WBITS | 16))
            elif coding == "deflate":
                decoders.append(_ZlibDecoder(zlib.MAX_WBITS))
            else:
                logger.warning("tracked_openai: cannot read %r-encoded bodies; usage not recorded", coding)
                return False
    return _Chain(decoders)


class _ZlibDecoder:
    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)

    def decode(self, data: bytes) -> bytes:
        return self._d.decompress(data)

    def flush(self) -> bytes:
        return self._d.flush()


class _Chain:
    def __init__(self, decoders: list[Any]) -> None:
        self.decoders = decoders

    def decode(self, data: bytes) -> bytes:
        for d in self.decoders:
            data = _as_bytes(d.decode(data))
        return data

    def flush(self) -> bytes:
        data = b""
        for d in self.decoders:
            data = _as_bytes(d.decode(data)) + _as_bytes(d.flush()) if data else _as_bytes(d.flush())
        return data


def _watch_decoder(response: Any, observer: _BodyObserver, module: Any) -> None:
    """Put a watch on the response's own content decoder. It decodes above the tee, which sees
    only the raw bytes: a body that fails to decode (the caller gets ``DecodingError``) would
    otherwise look like one read to its end."""
    try:
        inner = response._get_content_decoder()  # made now rather than on the first read
    except Exception:
        return  # the caller gets this error when reading (as an unsupported encoding, say)
    try:
        cls = _WatchedDecoder if module is httpx2 else _WatchedLegacyDecoder
        response._decoder = cls(inner, observer)
    except Exception as exc:
        report_internal_error(exc, "decoder watch")


class _WatchedDecoder:
    """An httpx2 content decoder (``decode``/``flush`` return iterators of bytes), passed through;
    its failure is told to the observer before it reaches the caller, unchanged."""

    __slots__ = ("inner", "observer")

    def __init__(self, inner: Any, observer: _BodyObserver) -> None:
        self.inner = inner
        self.observer = observer

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            yield from self.inner.decode(data)
        except Exception as exc:
            self.observer.decoding_error(exc)
            raise

    def flush(self) -> Iterator[bytes]:
        try:
            yield from self.inner.flush()
        except Exception as exc:
            self.observer.decoding_error(exc)
            raise


class _WatchedLegacyDecoder(_WatchedDecoder):
    """The same for a legacy ``httpx`` decoder (``decode``/``flush`` return bytes)."""

    __slots__ = ()

    def decode(self, data: bytes) -> bytes:  # type: ignore[override]
        try:
            out: bytes = self.inner.decode(data)
        except Exception as exc:
            self.observer.decoding_error(exc)
            raise
        return out

    def flush(self) -> bytes:  # type: ignore[override]
        try:
            out: bytes = self.inner.flush()
        except Exception as exc:
            self.observer.decoding_error(exc)
            raise
        return out


def _as_bytes(out: Any) -> bytes:
    # httpx decoders return bytes; httpx2's return an iterator of bytes.
    return out if isinstance(out, bytes) else b"".join(out)


def _make_tee(base: type[Any], inner: Any, observer: _BodyObserver, is_async: bool) -> Any:
    cls = _TEE_CLASSES.get(base)
    if cls is None:
        # One class per byte-stream base (httpx2 or httpx, sync or async), built once: a class
        # per call would cost tens of microseconds and feed the cyclic garbage collector.
        cls = type("AsyncTee" if is_async else "SyncTee", (_AsyncTee if is_async else _SyncTee, base), {})
        _TEE_CLASSES[base] = cls
    return cls(inner, observer)


class _SyncTee:
    """Pass-through byte stream: the caller's bytes (minus a withheld injected usage event) go
    through ``observer``, which finishes the record when the body ends or is closed."""

    def __init__(self, inner: Any, observer: _BodyObserver) -> None:
        self.inner = inner
        self.observer = observer

    def __iter__(self) -> Iterator[bytes]:
        return _tee(self.inner, self.observer)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.observer.close("closed")


class _AsyncTee:
    def __init__(self, inner: Any, observer: _BodyObserver) -> None:
        self.inner = inner
        self.observer = observer
        self.observed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self.observed:
            # AsyncStream drains the body after [DONE] by iterating it again; an in-memory
            # stream then replays it, which must not be observed (counted) twice.
            return _replay(self.inner)
        self.observed = True
        return _atee(self.inner, self.observer)

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            self.observer.close("closed")


# The tee's loops, one per flavour: each chunk is handled in the loop itself (locals, no call per
# chunk in the usual case), because this is the only code of ours that runs once per chunk. When
# filtering, the usual read is one event ending (as OpenAI writes every chunk) with the injected
# member, checked from the end and by one memchr-speed search for the first blank line; anything
# else (the usage-only event, several events in one read, a partial event, other spacing or member
# order) takes the observer's general path. Bytes count towards ``_INLINE_PARSE_BYTES`` here and,
# for the general path, in the observer, so a stream holds at most twice that before it is parsed.


def _tee(inner: Iterable[bytes], observer: _BodyObserver) -> Iterator[bytes]:
    """The body as the caller would have received it (see ``_BodyObserver``), kept for the parser."""
    chunks = observer.chunks
    filtering = observer.filtering
    kept = 0
    try:
        for chunk in inner:
            if observer.call is None:  # closed (at exit) while still being read
                yield chunk
            elif not filtering or (
                chunk.endswith(_USAGE_NULL_END)
                and chunk.find(b"\n\n") == len(chunk) - 2
                and not observer.pending
            ):
                chunks.append(chunk)
                kept += len(chunk)
                if kept > _INLINE_PARSE_BYTES:
                    kept = 0
                    observer.parse_inline()
                yield chunk[:_USAGE_NULL_CUT] + b"}\n\n" if filtering else chunk
            else:
                out = observer.filter(chunk)
                if out:
                    yield out
        observer.ended = True
        rest = observer.remainder()
        if rest:
            yield rest
    except _TRANSPORT_ERRORS as exc:
        rest = observer.remainder()
        if rest:
            # An unfinished event withheld by the filter: the caller gets it before the error,
            # as it would have without the filter (and the SDK's own error on it, if any).
            yield rest
        observer.transport_error(exc)
        raise


async def _atee(inner: AsyncIterable[bytes], observer: _BodyObserver) -> AsyncIterator[bytes]:
    chunks = observer.chunks
    filtering = observer.filtering
    kept = 0
    try:
        async for chunk in inner:
            if observer.call is None:
                yield chunk
            elif not filtering or (
                chunk.endswith(_USAGE_NULL_END)
                and chunk.find(b"\n\n") == len(chunk) - 2
                and not observer.pending
            ):
                chunks.append(chunk)
                kept += len(chunk)
                if kept > _INLINE_PARSE_BYTES:
                    kept = 0
                    observer.parse_inline()
                yield chunk[:_USAGE_NULL_CUT] + b"}\n\n" if filtering else chunk
            else:
                out = observer.filter(chunk)
                if out:
                    yield out
        observer.ended = True
        rest = observer.remainder()
        if rest:
            yield rest
    except _TRANSPORT_ERRORS as exc:
        rest = observer.remainder()
        if rest:
            # An unfinished event withheld by the filter: the caller gets it before the error,
            # as it would have without the filter (and the SDK's own error on it, if any).
            yield rest
        observer.transport_error(exc)
        raise


async def _replay(inner: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for chunk in inner:
        yield chunk


_TEE_CLASSES: dict[type[Any], type[Any]] = {}  # keyed by base: each is sync or async

# What a stream's parser hands to the usage estimate: the first events' data (the last one
# perhaps cut short), the bytes of data of all its events, and whether one was cut.
Sample = tuple[list[bytes], int, bool]
_NO_SAMPLE: Sample = ([], 0, False)
# Stands in the data of an event for a line that was skipped.
_SKIPPED = b"\x00skipped"


class _BodyObserver:
    """The caller's side of an observed body: keeps its bytes for the exporter thread, cheaply.

    When filtering (an injected ``include_usage``), bytes are released one complete SSE event at
    a time, without the usage-only event and without the ``"usage": null`` member the injection
    adds to every chunk, so the caller's chunks are exactly those it would have received.
    Once closed, the observer is the call's ``body``: ``finish`` parses the kept bytes on the
    exporter thread.
    """

    __slots__ = (
        "call",
        "chunks",
        "ended",
        "endpoint",
        "filtering",
        "headers",
        "kept",
        "module",
        "parser",
        "pending",
        "response_ref",
        "unreadable",
    )

    def __init__(self, call: Call, headers: Any, module: Any) -> None:
        self.call: Call | None = call
        self.endpoint = call.endpoint
        self.headers = headers  # the response's; read by the parser
        self.module = module  # httpx2 or httpx, whichever the response came from
        self.chunks: list[bytes] = []  # raw bytes not yet parsed
        self.kept = 0  # their length
        self.parser: _BodyParser | None = None  # built when the first bytes are parsed
        self.filtering = False
        # Filtering: the reads of an unfinished event, not yet handed to the caller; joined once,
        # when the event ends, so a long event costs time in proportion to its length.
        self.pending: list[bytes] = []
        self.response_ref: Any = None
        self.unreadable = False  # the body failed to decode: nothing of it is parsed
        # The body was read to its end: a stream with no [DONE] or terminal event of its own
        # (images, transcriptions) was then read whole, not closed early.
        self.ended = False

    def filter(self, chunk: bytes) -> bytes:
        """Keep ``chunk``; return the complete events it ends, as the caller would have received
        them (the reads the tee's loop does not handle itself). A fault of ours releases the
        bytes unfiltered."""
        if self.call is None:
            return chunk
        if not self.pending and chunk.find(b"\n\n") == len(chunk) - 2 and _USAGE_ONLY in chunk:
            # The usage-only event we asked for, alone in its read, as OpenAI writes it.
            self.chunks.append(chunk)
            self.kept += len(chunk)
            if self.kept > _INLINE_PARSE_BYTES:
                self.parse_inline()
            return b""
        return self._filter(chunk)

    def _filter(self, chunk: bytes) -> bytes:
        pending = self.pending
        if pending:
            # The last bytes before this read (three pieces: they may be one byte each).
            before = b"".join([piece[-3:] for piece in pending[-3:]])
            pending.append(chunk)
            if not _ends_event(before, chunk):
                return b""  # only this read was searched: the event goes on
            chunk = b"".join(pending)
            pending.clear()
        if chunk[-2:] != b"\n\n":  # not at an event boundary (or CRLF framing)
            end = _events_end(chunk)
            if end != len(chunk):
                chunk, rest = chunk[:end], chunk[end:]
                pending.append(rest)
                if not chunk:
                    return b""
        self.chunks.append(chunk)
        self.kept += len(chunk)
        if self.kept > _INLINE_PARSE_BYTES:
            self.parse_inline()
        try:
            return _filter_events(chunk)
        except Exception as exc:
            report_internal_error(exc, "stream filter")
            return chunk

    def remainder(self) -> bytes:
        """Bytes still withheld when the body ends (an unterminated last event)."""
        pending = self.pending
        if not pending:
            return b""
        rest = b"".join(pending)
        pending.clear()
        if self.call is not None:
            self.chunks.append(rest)
        return rest

    def parse_inline(self) -> None:
        # A long stream: parse what we have now rather than hold it all until it ends.
        self.kept = 0
        try:
            self._parse_kept()
        except Exception as exc:
            report_internal_error(exc, "stream parser")
            if self.parser is not None:
                self.parser.broken = True

    def _parser(self) -> _BodyParser:
        """The parser, holding every kept byte not parsed yet."""
        # Emptied in place: the tee's loop holds the list.
        chunks = self.chunks[:]
        self.chunks.clear()
        parser = self.parser
        if parser is None:
            if self.unreadable:
                kind, decoder = "other", None
            else:
                kind, decoder = _kind_of(self.headers), _decoder_for(self.headers, self.module)
            if decoder is False:
                kind, decoder = "other", None
            parser = self.parser = _BodyParser(self.endpoint, kind, decoder, chunks)
        else:
            parser.chunks.extend(chunks)
        return parser

    def _parse_kept(self) -> None:
        call = self.call
        if call is not None:
            self._parser().parse_kept(call.record)

    def finish(self, record: CallRecord) -> Sample:
        """Exporter thread: parse the rest of the body into ``record``; returns the events to
        estimate from."""
        return self._parser().finish(record)

    def transport_error(self, exc: BaseException) -> None:
        with internal_errors("stream observer"):
            call = self.call
            if call is not None:
                call.record.status = "error"
                call.record.error_type = type(exc).__name__
                call.record.error_message = str(exc)[:_MAX_MESSAGE]
                self.close("error")

    def decoding_error(self, exc: BaseException) -> None:
        """The response's own decoder failed (a corrupt gzip body): the caller gets this error
        (from ``iter_bytes``/``read``; a ``Stream`` raises ``APIConnectionError`` from it), so the
        record says so, and the kept bytes are never decoded again for it."""
        with internal_errors("stream observer"):
            call = self.call
            if call is not None:
                self.unreadable = True
                self.chunks.clear()
                if self.parser is not None:
                    self.parser.broken = True
                call.record.status = "error"
                call.record.error_type = type(exc).__name__
                call.record.error_message = str(exc)[:_MAX_MESSAGE]
                self.close("error")

    def collected(self, _ref: Any) -> None:
        """The response was garbage-collected with its stream still open."""
        self.close("abandoned")

    def close(self, how: str) -> None:
        try:
            call, self.call = self.call, None
            if call is None:
                return
            _open_observers.discard(self)
            self.response_ref = None
            call.body = self
            if how == "closed":
                raised = _raised_by_stream(sys.exception())
                if raised is not None:
                    # The SDK's stream failed on these bytes (not UTF-8, not JSON) and is
                    # closing the body on its way to the caller: the record says so.
                    call.record.status = "error"
                    call.record.error_type = type(raised).__name__
                    call.record.error_message = str(raised)[:_MAX_MESSAGE]
                    how = "error"
                elif self.ended:
                    how = "complete"
            call.finish(how if call.stream else None)
        except Exception as exc:
            report_internal_error(exc, "stream observer close")


# The SDK's stream generators: an exception whose traceback starts in one of them while the body
# is being closed is the one the stream is raising to its caller (not the caller's own, in flight
# through a ``with`` block that closes the stream).
_STREAM_CODES = frozenset(
    code
    for cls in (Stream, AsyncStream)
    if (code := getattr(getattr(cls, "__stream__", None), "__code__", None)) is not None
)


def _raised_by_stream(exc: BaseException | None) -> BaseException | None:
    if not isinstance(exc, Exception) or exc.__traceback__ is None:
        return None  # nothing in flight, or GeneratorExit (the caller broke off)
    return exc if exc.__traceback__.tb_frame.f_code in _STREAM_CODES else None


def _ends_event(before: bytes, chunk: bytes) -> bool:
    """Whether an SSE event ends in ``chunk``, the read after ``before`` (a blank line may begin
    in the last bytes of ``before``). Only ``chunk`` is searched, not all the event held so far."""
    if b"\n" not in chunk:
        return False  # every event ends with a newline: one memchr pass for most reads
    if b"\n\n" in chunk or b"\r\n\r\n" in chunk:
        return True
    seam = before[-3:] + chunk[:3]
    return b"\n\n" in seam or b"\r\n\r\n" in seam


def _events_end(data: bytes) -> int:
    """Length of the complete SSE events at the start of ``data`` (0 if none is complete)."""
    if data[-2:] == b"\n\n":
        return len(data)
    lf = data.rfind(b"\n\n")
    end = lf + 2 if lf >= 0 else 0
    if b"\r" in data:
        crlf = data.rfind(b"\r\n\r\n")
        if crlf >= 0:
            end = max(end, crlf + 4)
    return end


_USAGE_NULL_END = b',"usage":null}\n\n'
_USAGE_NULL_CUT = -len(_USAGE_NULL_END)
_USAGE_ONLY = b'"choices":[],"usage":{'


def _filter_events(ready: bytes) -> bytes:
    """``ready`` (complete SSE events) as the caller would have received it: without the
    usage-only event and without the ``"usage": null`` members the injection added."""
    if b'"usage"' not in ready:
        return ready  # [DONE], or a server that ignored include_usage
    if _NO_CHOICES.search(ready) is not None:
        ready = _without_usage_only_events(ready)
        if not ready:
            return ready
    # OpenAI's compact JSON first (one C-level pass), any other spacing after.
    stripped = ready.replace(b',"usage":null', b"")
    if stripped is ready and b'"usage"' in ready:
        stripped = _strip_usage_null(ready)
    return stripped


def _without_usage_only_events(ready: bytes) -> bytes:
    """``ready`` (complete SSE events, some with empty choices) without the usage-only chunk the
    injection asked for."""
    if ready.find(b"\n\n") == len(ready) - 2:  # one event, as a server flushing each sends it
        return b"" if _has_usage_object(ready) else ready
    out: list[bytes] = []
    for match in _SSE_EVENT.finditer(ready):
        block = match.group(0)
        # Top-level "choices": [] with a usage object: only the usage-only chunk is both (Azure's
        # prompt-filter chunk has no choices either, but "usage": null).
        if _NO_CHOICES.search(block) is None or not _has_usage_object(block):
            out.append(block)
    return b"".join(out)


class _BodyParser:
    """Reads an observed body (SSE events or a JSON document) into its record.

    Runs on the exporter thread when the call is prepared (``finish``), or inline on the caller's
    thread for the part of a long stream past ``_INLINE_PARSE_BYTES`` (``parse_kept``); never both
    at once, since the record is handed over only after the stream closed.
    """

    __slots__ = (
        "body",
        "body_size",
        "broken",
        "chunks",
        "data",
        "decoder",
        "done",
        "endpoint",
        "event",
        "events",
        "events_cut",
        "events_kept",
        "events_seen",
        "kind",
        "line",
        "line_size",
        "record",
        "saw_usage",
        "seen_first",
        "skipped",
        "skipped_head",
        "skipping",
    )

    def __init__(self, endpoint: str, kind: str, decoder: Any, chunks: list[bytes]) -> None:
        # The record parsed into, given with the bytes to parse (``parse_kept``, ``finish``).
        self.record: CallRecord
        self.endpoint = endpoint
        self.kind = kind
        self.decoder = decoder
        self.chunks = chunks  # raw bytes not yet parsed
        self.broken = False
        # The unfinished line: its pieces, joined once when its newline arrives (so a long line
        # costs time in proportion to its length), and their length.
        self.line: list[bytes] = []
        self.line_size = 0
        # A line longer than ``_MAX_EVENT_BYTES`` is skipped (its event is not parsed): the
        # bytes skipped so far, and whether the rest of that line is still to come.
        self.skipped = 0
        self.skipped_head = b""  # its first bytes, for an estimate
        self.skipping = False
        self.data: list[bytes] = []
        self.event = b""
        self.body: list[bytes] = []
        self.body_size = 0
        self.seen_first = False
        self.done = False  # [DONE] or a terminal event arrived
        self.saw_usage = False
        # The first events' data (at most ``_MAX_KEPT_EVENTS_BYTES``, the last one perhaps cut
        # short), kept to estimate usage from if the stream never reports it; the bytes of data
        # of every event, to extrapolate from the kept ones to all.
        self.events: list[bytes] | None = [] if endpoint in _ESTIMABLE else None
        self.events_kept = 0
        self.events_seen = 0
        self.events_cut = False

    def parse_kept(self, record: CallRecord) -> None:
        self.record = record
        chunks, self.chunks = self.chunks, []
        if self.broken:
            return
        for chunk in chunks:
            self.feed(chunk)

    def finish(self, record: CallRecord) -> Sample:
        """Parse the rest of the body into ``record``; returns the events to estimate from."""
        self.parse_kept(record)
        if not self.broken:
            if self.decoder is not None:
                try:
                    rest = self.decoder.flush()
                except Exception as exc:
                    rest = b""
                    self._unreadable(exc)
                self.feed(rest, decoded=True)
            if self.kind == "json" and self.body:
                raw = b"".join(self.body)
                self.body = []
                if self.body_size <= _MAX_JSON_BODY:
                    body = _loads(raw)
                    if isinstance(body, dict):
                        apply_body(record, self.endpoint, body)
            elif self.kind == "sse" and (self.line or self.skipping):
                # A body that ended without a trailing blank line still dispatches its last event.
                self.feed(b"\n\n", decoded=True)
        if record.stream_end == "closed":
            early = self.kind == "sse" and not self.done and record.status == "success"
            record.stream_end = "closed_early" if early else "complete"
        events = self.events
        self.events = None
        if events is None or self.saw_usage:
            return _NO_SAMPLE
        return events, self.events_seen, self.events_cut

    def _unreadable(self, exc: BaseException) -> None:
        # Bytes the response's decoder would reject too (a corrupt gzip body read raw, or our
        # inline parse reaching the bad bytes before the SDK does): a bad response, not a fault.
        logger.debug("tracked_openai: response body could not be decoded (%s); usage not read", exc)
        self.kind = "other"
        self.broken = True
        self.line, self.data, self.body = [], [], []

    def feed(self, chunk: bytes, decoded: bool = False) -> None:
        if self.kind == "other" or not chunk:
            return
        if self.decoder is not None and not decoded:
            try:
                chunk = self.decoder.decode(chunk)
            except Exception as exc:
                self._unreadable(exc)
                return
        if self.kind == "json":
            self.body_size += len(chunk)
            if self.body_size <= _MAX_JSON_BODY:
                self.body.append(chunk)
            elif self.body:
                self.body = []  # too long to parse: let go of what was held
            return
        if b"\n" not in chunk:
            self._hold(chunk)  # inside a line: only this read was searched
            return
        if self.skipping:
            # The end of a line too long to parse: drop it, and the event it belongs to.
            end = chunk.find(b"\n")
            self.skipped += end
            self.skipping = False
            self.data.append(_SKIPPED)
            chunk = chunk[end + 1 :]
        elif self.line:
            self.line.append(chunk)
            chunk = b"".join(self.line)
            self.line = []
            self.line_size = 0
        lines = chunk.split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                data = self.data
                if data:
                    self.data = []
                    if _SKIPPED in data:
                        self._skipped_event()
                    else:
                        self._event(data[0] if len(data) == 1 else b"\n".join(data))
                self.event = b""
            elif line[:5] == b"data:":
                self.data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line[:6] == b"event:":
                self.event = line[6:].strip()
        if rest:
            self._hold(rest)

    def _hold(self, piece: bytes) -> None:
        """Keep ``piece`` of the unfinished line, unless the line is longer than any event we
        parse: then it is skipped, and only its length is kept."""
        if self.skipping:
            self.skipped += len(piece)
            return
        self.line.append(piece)
        self.line_size += len(piece)
        if self.line_size > _MAX_EVENT_BYTES:
            if self.events is not None:
                room = _MAX_KEPT_EVENTS_BYTES - self.events_kept + 6  # and "data: "
                head, size = [], 0
                for part in self.line:
                    if size >= room:
                        break
                    head.append(part)
                    size += len(part)
                self.skipped_head = b"".join(head)[:room]
            self.skipped += self.line_size
            self.line = []
            self.line_size = 0
            self.skipping = True

    def _skipped_event(self) -> None:
        logger.debug("tracked_openai: skipped an SSE event longer than %d bytes", _MAX_EVENT_BYTES)
        head, self.skipped_head = self.skipped_head, b""
        events = self.events
        if events is not None and not self.saw_usage:
            # Estimated from its first bytes, kept as an event cut short (the last one kept).
            self.events_seen += self.skipped
            if head[:5] == b"data:" and self.events_kept < _MAX_KEPT_EVENTS_BYTES:
                events.append(head[6:] if head[5:6] == b" " else head[5:])
                self.events_kept = _MAX_KEPT_EVENTS_BYTES
                self.events_cut = True
        self.skipped = 0

    def _event(self, data: bytes) -> None:
        if data.startswith(b"[DONE]"):
            self.done = True
            return
        record = self.record
        parsed: Any = None
        if not self.seen_first:
            parsed = _loads(data)
            self._identity(parsed)
            # Azure streams open with a prompt-filter chunk whose model is "": identity comes next.
            self.seen_first = not (isinstance(parsed, dict) and parsed.get("model") == "")
        if _has_usage_object(data):
            self._usage_event(parsed if parsed is not None else _loads(data))
        elif b'"error"' in data:
            parsed = parsed if parsed is not None else _loads(data)
            if isinstance(parsed, dict) and (parsed.get("error") or parsed.get("type") == "error"):
                err: dict[str, Any] = parsed["error"] if isinstance(parsed.get("error"), dict) else parsed
                record.status = "error"
                record.error_type = str(err.get("type") or err.get("code") or "APIError")
                record.error_message = str(err.get("message") or "")[:_MAX_MESSAGE]
        events = self.events
        if events is not None and not self.saw_usage:
            self.events_seen += len(data)
            room = _MAX_KEPT_EVENTS_BYTES - self.events_kept
            if room > 0:
                if len(data) > room:
                    # Checked before keeping: one long event is kept only in part.
                    data = data[:room]
                    self.events_cut = True
                events.append(data)
                self.events_kept += len(data)

    def _identity(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        record = self.record
        body: dict[str, Any] = event["response"] if isinstance(event.get("response"), dict) else event
        model = body.get("model")
        if isinstance(model, str) and model:
            record.response_model = model
        tier = body.get("service_tier")
        if isinstance(tier, str) and tier:
            record.service_tier = tier

    def _usage_event(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        record = self.record
        endpoint = self.endpoint
        kind = event.get("type")
        if kind in _STREAM_TERMINAL and isinstance(event.get("response"), dict):
            body = event["response"]
            apply_body(record, endpoint, body)
            self.done = True
            if kind == "response.failed":
                error = body.get("error") or {}
                record.status = "error"
                record.error_type = str(error.get("code") or "response.failed")
                record.error_message = str(error.get("message") or "")[:_MAX_MESSAGE]
        else:
            usage = usage_from_body(endpoint, event)
            if usage is None:
                return
            if record.usage.characters is not None:
                usage.characters = record.usage.characters
            if endpoint.startswith("images.") and str(event.get("type", "")).endswith(".completed"):
                # A streamed generation sends one `*.completed` event (with its usage) per image.
                previous = record.usage if record.usage_source == "response" else Usage(images=0)
                usage = _add_usage(previous, usage)
                usage.images = (previous.images or 0) + 1
            record.usage = usage
            record.usage_source = "response"
            tier = event.get("service_tier")
            if isinstance(tier, str) and tier:
                record.service_tier = tier
        if record.usage_source == "response":
            self.saw_usage = True
            self.events = None


def _add_usage(a: Usage, b: Usage) -> Usage:
    total = Usage()
    for key in USAGE_KEYS:
        x, y = getattr(a, key), getattr(b, key)
        setattr(total, key, y if x is None else x if y is None else x + y)
    return total


def _strip_usage_null(block: bytes) -> bytes:
    """``block`` without its ``"usage": null`` members (each with its comma)."""
    i = block.find(b'"usage"')
    while i >= 0:
        m = _USAGE_NULL.match(block, i)
        if m is not None:
            j = m.end()
            k = i - 1
            while k >= 0 and block[k] in b" \t":
                k -= 1
            before, after = block[k : k + 1], block[j : j + 1]
            if before == b"," and after in (b"}", b","):
                block = block[:k] + block[j:]
                i = block.find(b'"usage"', k)
                continue
            if before == b"{" and after == b",":
                block = block[: k + 1] + block[j + 1 :].lstrip(b" \t")
                i = block.find(b'"usage"', k + 1)
                continue
        i = block.find(b'"usage"', i + 7)
    return block


def _has_usage_object(data: bytes) -> bool:
    """True when some ``"usage":`` key in the event holds an object (not ``null``)."""
    start = 0
    while True:
        i = data.find(b'"usage":', start)
        if i < 0:
            return False
        j = i + 8
        while j < len(data) and data[j] in b" \t\r\n":
            j += 1
        if data[j : j + 1] == b"{":
            return True
        start = j


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None

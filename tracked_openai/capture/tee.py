"""The byte tee: a stream's body passes through to the caller and is kept for the parser.

A response's byte stream is swapped for a pass-through tee that keeps the bytes and finishes the
record when the stream closes (``BodyObserver.close``), with a weak-reference backstop for
streams dropped unclosed. When we injected ``include_usage``, the observer releases complete
SSE events without what the injection added, so the caller's chunks are exactly its own.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

from openai import AsyncStream, Stream

from .._errors import internal_errors, report_internal_error
from ..records import CallRecord
from .call import Call
from .decode import decoder_for, httpx, httpx2, kind_of
from .sse import (
    MAX_MESSAGE,
    USAGE_NULL_CUT,
    USAGE_NULL_END,
    USAGE_ONLY,
    BodyParser,
    Sample,
    ends_event,
    events_end,
    filter_events,
)

__all__ = ["BodyObserver", "close_open_streams", "make_tee", "open_observers"]

# Bytes a stream's observer keeps for the exporter thread before it parses them inline instead.
_INLINE_PARSE_BYTES = 1024 * 1024

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx2.TransportError,) + (
    (httpx.TransportError,) if httpx is not None else ()
)

# Bodies being observed, so that a process exiting with streams still open records them.
open_observers: set[BodyObserver] = set()


def close_open_streams() -> None:
    """At exit: finish the record of every stream still open (``stream_end="abandoned"``)."""
    for observer in list(open_observers):
        observer.close("abandoned")


def make_tee(base: type[Any], inner: Any, observer: BodyObserver, is_async: bool) -> Any:
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

    def __init__(self, inner: Any, observer: BodyObserver) -> None:
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
    def __init__(self, inner: Any, observer: BodyObserver) -> None:
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


def _tee(inner: Iterable[bytes], observer: BodyObserver) -> Iterator[bytes]:
    """The body as the caller would have received it (see ``BodyObserver``), kept for the parser."""
    chunks = observer.chunks
    filtering = observer.filtering
    kept = 0
    try:
        for chunk in inner:
            if observer.call is None:  # closed (at exit) while still being read
                yield chunk
            elif not filtering or (
                chunk.endswith(USAGE_NULL_END)
                and chunk.find(b"\n\n") == len(chunk) - 2
                and not observer.pending
            ):
                chunks.append(chunk)
                kept += len(chunk)
                if kept > _INLINE_PARSE_BYTES:
                    kept = 0
                    observer.parse_inline()
                yield chunk[:USAGE_NULL_CUT] + b"}\n\n" if filtering else chunk
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


async def _atee(inner: AsyncIterable[bytes], observer: BodyObserver) -> AsyncIterator[bytes]:
    chunks = observer.chunks
    filtering = observer.filtering
    kept = 0
    try:
        async for chunk in inner:
            if observer.call is None:
                yield chunk
            elif not filtering or (
                chunk.endswith(USAGE_NULL_END)
                and chunk.find(b"\n\n") == len(chunk) - 2
                and not observer.pending
            ):
                chunks.append(chunk)
                kept += len(chunk)
                if kept > _INLINE_PARSE_BYTES:
                    kept = 0
                    observer.parse_inline()
                yield chunk[:USAGE_NULL_CUT] + b"}\n\n" if filtering else chunk
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


class BodyObserver:
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
        self.parser: BodyParser | None = None  # built when the first bytes are parsed
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
        if not self.pending and chunk.find(b"\n\n") == len(chunk) - 2 and USAGE_ONLY in chunk:
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
            if not ends_event(before, chunk):
                return b""  # only this read was searched: the event goes on
            chunk = b"".join(pending)
            pending.clear()
        if chunk[-2:] != b"\n\n":  # not at an event boundary (or CRLF framing)
            end = events_end(chunk)
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
            return filter_events(chunk)
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

    def _parser(self) -> BodyParser:
        """The parser, holding every kept byte not parsed yet."""
        # Emptied in place: the tee's loop holds the list.
        chunks = self.chunks[:]
        self.chunks.clear()
        parser = self.parser
        if parser is None:
            if self.unreadable:
                kind, decoder = "other", None
            else:
                kind, decoder = kind_of(self.headers), decoder_for(self.headers, self.module)
            if decoder is False:
                kind, decoder = "other", None
            parser = self.parser = BodyParser(self.endpoint, kind, decoder, chunks)
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
                call.record.error_message = str(exc)[:MAX_MESSAGE]
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
                call.record.error_message = str(exc)[:MAX_MESSAGE]
                self.close("error")

    def collected(self, _ref: Any) -> None:
        """The response was garbage-collected with its stream still open."""
        self.close("abandoned")

    def close(self, how: str) -> None:
        try:
            call, self.call = self.call, None
            if call is None:
                return
            open_observers.discard(self)
            self.response_ref = None
            call.body = self
            if how == "closed":
                raised = _raised_by_stream(sys.exception())
                if raised is not None:
                    # The SDK's stream failed on these bytes (not UTF-8, not JSON) and is
                    # closing the body on its way to the caller: the record says so.
                    call.record.status = "error"
                    call.record.error_type = type(raised).__name__
                    call.record.error_message = str(raised)[:MAX_MESSAGE]
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


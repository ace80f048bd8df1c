"""Content decoding of observed bodies: the parser's own decoder, and a watch on the response's.

Which HTTP library a response comes from is settled here once: ``httpx2`` (openai 3.x's own, late
2.x releases accept it too) or ``httpx`` (openai 2.x's own; openai 3.x takes a legacy client).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any, Protocol

from .._compat import http_modules
from .._errors import logger, report_internal_error

__all__ = ["IDENTITY", "decoder_for", "encoding_of", "httpx", "httpx2", "kind_of", "watch_decoder"]

# ``httpx2`` is httpx2 if installed, else httpx; ``httpx`` is httpx, None if absent. Bound once,
# at import: the hot path reads globals.
httpx2, httpx = http_modules()


class _Watcher(Protocol):
    def decoding_error(self, exc: BaseException) -> None: ...


IDENTITY = ("", "identity")


def kind_of(headers: Any) -> str:
    content_type: str = headers.get("content-type", "")
    return "sse" if "event-stream" in content_type else "json" if "json" in content_type else "other"


def encoding_of(headers: Any) -> str:
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



def decoder_for(headers: Any, module: Any) -> Any:
    """A decoder for the body's content-encoding; None if it has none, False if unsupported."""
    encoding = encoding_of(headers)
    if encoding in IDENTITY:
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


def watch_decoder(response: Any, observer: _Watcher, module: Any) -> None:
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

    def __init__(self, inner: Any, observer: _Watcher) -> None:
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


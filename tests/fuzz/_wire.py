"""What the fuzz tests share: the recorded bodies, the call that reads each one, a transport that
serves a body in given pieces, and what a caller saw of it (public entry points only: the tracked
clients next to the plain SDK's, and the ``records`` fixture).
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import re
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
from openai import _base_client

import tracked_openai

API_KEY = "sk-test-fuzz"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# The SDK's own HTTP library: httpx2 on openai 3.x, httpx on 2.x (which rejects httpx2 clients).
http = getattr(_base_client, "httpx2", None) or _base_client.httpx

WAV = ("a.wav", b"RIFF\x24\x00\x00\x00WAVEfmt fake-audio-bytes", "audio/wav")
PNG = ("a.png", b"\x89PNG\r\n\x1a\nfake-image-bytes", "image/png")


def load_cases(kind: str) -> dict[str, dict[str, Any]]:
    """Every fixture (tests/fixtures and tests/fixtures/recorded) with a ``kind`` body
    (``response_sse`` or ``response_body``), by file stem."""
    cases = {}
    for path in sorted([*FIXTURES.glob("*.json"), *FIXTURES.glob("recorded/*.json")]):
        case = json.loads(path.read_text())
        if kind in case:
            cases[path.stem] = case
    return cases


# -- the call that reads each endpoint's body ---------------------------------------------------


def _text(request: dict[str, Any], key: str, default: str) -> Any:
    value = (request or {}).get(key)
    return value if value is not None else default


def call_for(case: dict[str, Any]) -> Callable[[Any, dict[str, Any]], Any]:
    """``call(client_or_wrapper, extra_kwargs)`` making the fixture's request through a client (or
    its ``with_raw_response`` / ``with_streaming_response``)."""
    endpoint = case["endpoint"]
    req = case.get("request") or {}
    fields = req.get("_multipart_fields", {}) if isinstance(req, dict) else {}
    stream = bool(req.get("stream") or fields.get("stream") == "true")
    st = {"stream": True} if stream else {}
    if endpoint.endswith("/chat/completions"):
        messages = req.get("messages") or [{"role": "user", "content": "Say this is a test"}]
        return lambda c, kw: c.chat.completions.create(model=req["model"], messages=messages, **st, **kw)
    if endpoint == "/v1/completions":
        prompt = _text(req, "prompt", "Say this is a test")
        return lambda c, kw: c.completions.create(model=req["model"], prompt=prompt, **st, **kw)
    if endpoint == "/v1/responses":
        extra = {k: req[k] for k in ("max_output_tokens",) if k in req}
        return lambda c, kw: c.responses.create(
            model=req.get("model", "gpt-4o"), input=_text(req, "input", "Hello!"), **st, **extra, **kw
        )
    if endpoint == "/v1/embeddings":
        extra = {k: req[k] for k in ("dimensions", "encoding_format") if k in req}
        return lambda c, kw: c.embeddings.create(
            model=req.get("model", "text-embedding-3-small"),
            input=_text(req, "input", "hello"),
            **extra,
            **kw,
        )
    if endpoint == "/v1/images/generations":
        extra = {k: req[k] for k in ("n", "partial_images", "quality", "size") if k in req}
        prompt = _text(req, "prompt", "a red square")
        return lambda c, kw: c.images.generate(model=req["model"], prompt=prompt, **st, **extra, **kw)
    if endpoint == "/v1/images/edits":
        extra = {"partial_images": int(fields["partial_images"])} if "partial_images" in fields else {}
        return lambda c, kw: c.images.edit(
            model=fields.get("model", "gpt-image-1"), image=PNG, prompt=fields["prompt"], **st, **extra, **kw
        )
    fmt = {"response_format": fields["response_format"]} if "response_format" in fields else {}
    if endpoint == "/v1/audio/transcriptions":
        model = fields.get("model", "whisper-1")
        return lambda c, kw: c.audio.transcriptions.create(model=model, file=WAV, **st, **fmt, **kw)
    if endpoint == "/v1/audio/translations":
        model = fields.get("model", "whisper-1")
        return lambda c, kw: c.audio.translations.create(model=model, file=WAV, **fmt, **kw)
    if endpoint == "/v1/audio/speech":
        extra = {"stream_format": req["stream_format"]} if "stream_format" in req else {}
        return lambda c, kw: c.audio.speech.create(
            model=req["model"], voice=req["voice"], input=req["input"], **extra, **kw
        )
    raise LookupError(f"no call for {endpoint}")


def is_azure(case: dict[str, Any]) -> bool:
    return case["endpoint"].startswith("/openai/deployments/")


def injectable(case: dict[str, Any]) -> bool:
    """Chat and legacy-completion streams: where the tracked client may add include_usage."""
    endpoint = case["endpoint"]
    return endpoint.endswith("/chat/completions") or endpoint == "/v1/completions"


# -- the body a server sends ---------------------------------------------------------------------

_USAGE_NULL = re.compile(rb',\s*"usage":\s*null')


def without_usage(sse: bytes) -> bytes:
    """A chat/completions stream as the API sends it when the request did not ask for
    ``include_usage``: no usage-only chunk, no ``"usage": null`` members (framing kept)."""
    out = []
    for block in re.split(rb"(?<=\n\n)", sse):
        data = block.strip()[len(b"data:") :].strip() if block.startswith(b"data:") else b""
        if data and data != b"[DONE]":
            chunk = json.loads(data)
            if chunk.get("choices") == [] and chunk.get("usage"):
                continue
        out.append(_USAGE_NULL.sub(b"", block))
    return b"".join(out)


def asks_usage(request: Any) -> bool:
    try:
        body = json.loads(request.content)
    except (ValueError, UnicodeDecodeError):
        return False
    return bool(isinstance(body, dict) and (body.get("stream_options") or {}).get("include_usage"))


@dataclass(frozen=True)
class Delivery:
    """How a body reaches the client: ``cuts`` are offsets into the (encoded) body where one read
    ends and the next begins (``None``: one byte per read); ``reset`` raises a connection reset
    after the last byte instead of ending cleanly."""

    cuts: tuple[int, ...] | None = ()
    crlf: bool = False
    gzip: bool = False
    reset: bool = False

    def frame(self, body: bytes) -> bytes:
        return body.replace(b"\n", b"\r\n") if self.crlf else body

    def pieces(self, data: bytes) -> list[bytes]:
        if self.cuts is None:
            return [data[i : i + 1] for i in range(len(data))]
        bounds = sorted({c for c in self.cuts if 0 < c < len(data)})
        edges = [0, *bounds, len(data)]
        return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


class _Pieces(http.SyncByteStream, http.AsyncByteStream):  # type: ignore[misc,name-defined]
    def __init__(self, pieces: list[bytes], reset: bool) -> None:
        self._pieces, self._reset = pieces, reset

    def __iter__(self) -> Iterator[bytes]:
        yield from self._pieces
        if self._reset:
            raise http.ReadError("connection reset by peer")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            yield piece
        if self._reset:
            raise http.ReadError("connection reset by peer")


class Server:
    """Answers every request with ``body(request)``, delivered as ``delivery`` says."""

    def __init__(
        self,
        body: Callable[[Any], bytes],
        content_type: str,
        delivery: Delivery,
        headers: dict[str, str] | None = None,
        status: int = 200,
    ) -> None:
        self.body, self.content_type, self.delivery = body, content_type, delivery
        self.headers = headers or {}
        self.status = status
        self.sent: list[bytes] = []  # the decoded bytes each answer carried
        self.asked: list[bool] = []  # whether each request asked for include_usage

    def handler(self, request: Any) -> Any:
        self.asked.append(asks_usage(request))
        data = self.delivery.frame(self.body(request))
        self.sent.append(data)
        headers = {"content-type": self.content_type, **self.headers}
        if self.delivery.gzip:
            data = gzip.compress(data, mtime=0)
            headers["content-encoding"] = "gzip"
        stream = _Pieces(self.delivery.pieces(data), self.delivery.reset)
        return http.Response(self.status, headers=headers, stream=stream, request=request)


def request_headers(case: dict[str, Any]) -> dict[str, str]:
    # A header recorded with several values (a list) is sent once, joined as HTTP joins them.
    headers = {
        k.lower(): ", ".join(map(str, v)) if isinstance(v, list) else v
        for k, v in (case.get("response_headers_subset") or {}).items()
    }
    for hop in ("content-length", "content-encoding", "transfer-encoding", "content-type"):
        headers.pop(hop, None)
    return headers


def make_client(tracked: bool, is_async: bool, azure: bool, server: Server) -> Any:
    transport = http.MockTransport(server.handler)
    http_client = http.AsyncClient(transport=transport) if is_async else http.Client(transport=transport)
    module: Any = tracked_openai if tracked else openai
    kw: dict[str, Any] = {"api_key": API_KEY, "http_client": http_client, "max_retries": 0}
    if azure:
        cls = module.AsyncAzureOpenAI if is_async else module.AzureOpenAI
        kw.update(api_version="2024-10-21", azure_endpoint="https://example-resource.openai.azure.com")
    else:
        cls = module.AsyncOpenAI if is_async else module.OpenAI
    return cls(**kw)


# -- what the caller saw --------------------------------------------------------------------------


def seen(value: Any, strict: bool = True) -> Any:
    """A comparable view of what the caller got: ``to_dict()`` lists the fields a model was given
    (so a ``"usage": null`` left in a chunk shows); ``strict=False`` compares ``model_dump()``."""
    if hasattr(value, "model_dump"):
        # warnings=False: a damaged body gives fields of the wrong type, which pydantic warns
        # about when serialising (an error under this suite's filterwarnings).
        dump = value.to_dict(warnings=False) if strict else value.model_dump(warnings=False)
        return (type(value).__name__, dump)
    if hasattr(value, "content") and hasattr(value, "response"):  # binary response content
        return ("binary", value.content)
    if isinstance(value, (str, bytes, int, float, type(None), list, dict)):
        return value
    return ("object", type(value).__name__, repr(value))


@dataclass
class Outcome:
    """What a caller got: the items it read, and the exception that ended the reading (if any)."""

    items: list[Any]
    error: BaseException | None

    def key(self) -> tuple[Any, ...]:
        err = self.error
        return (self.items, None if err is None else (type(err), str(err)))


MODES = ("typed", "raw", "bytes")


def _is_stream(value: Any) -> bool:
    return isinstance(value, (openai.Stream, openai.AsyncStream))


def read_sync(
    client: Any, call: Callable[[Any, dict[str, Any]], Any], mode: str, kw: dict[str, Any], strict: bool
) -> Outcome:
    items: list[Any] = []
    try:
        if mode == "bytes":
            with call(client.with_streaming_response, kw) as response:
                for part in response.iter_bytes():
                    items.append(part)
            items = [b"".join(items)]
        else:
            out = call(client.with_raw_response, kw).parse() if mode == "raw" else call(client, kw)
            if _is_stream(out):
                for chunk in out:
                    items.append(seen(chunk, strict))
            else:
                items.append(seen(out, strict))
    except Exception as exc:
        return Outcome(items, exc)
    return Outcome(items, None)


async def read_async(
    client: Any, call: Callable[[Any, dict[str, Any]], Any], mode: str, kw: dict[str, Any], strict: bool
) -> Outcome:
    items: list[Any] = []
    try:
        if mode == "bytes":
            async with call(client.with_streaming_response, kw) as response:
                async for part in response.iter_bytes():
                    items.append(part)
            items = [b"".join(items)]
        else:
            if mode == "raw":
                out = (await call(client.with_raw_response, kw)).parse()
            else:
                out = await call(client, kw)
            if _is_stream(out):
                async for chunk in out:
                    items.append(seen(chunk, strict))
            else:
                items.append(seen(out, strict))
    except Exception as exc:
        return Outcome(items, exc)
    return Outcome(items, None)


def read(
    tracked: bool,
    is_async: bool,
    case: dict[str, Any],
    server: Server,
    mode: str,
    kw: dict[str, Any],
    strict: bool = True,
) -> Outcome:
    """Make the fixture's call through a fresh tracked or plain client and read it to the end."""
    call = call_for(case)
    client = make_client(tracked, is_async, is_azure(case), server)
    with warnings.catch_warnings():
        # `audio.translations.create` is marked deprecated in recent SDKs (the call still works).
        warnings.filterwarnings("ignore", message="deprecated$", category=DeprecationWarning)
        if not is_async:
            try:
                return read_sync(client, call, mode, kw, strict)
            finally:
                client.close()

        async def run() -> Outcome:
            try:
                return await read_async(client, call, mode, kw, strict)
            finally:
                await client.close()

        return asyncio.run(run())

"""The fake OpenAI's route table: real ``openai`` clients talk to it in process, through
``httpx2.MockTransport`` (the tests), or over HTTP (``_fake_server.FakeOpenAIServer``: the demo,
the examples, the benchmarks). Bodies are handed over in small chunks, as a socket would, because
a body delivered whole hides streaming bugs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._compat import sdk_http_module

__all__ = ["FakeOpenAI", "FakeResponse", "Responder", "httpx2"]

# The SDK's own HTTP library: httpx2 on openai 3.x, httpx (same API) on 2.x, which rejects an
# httpx2 client even where httpx2 is installed.
httpx2: Any = sdk_http_module()


@dataclass
class FakeResponse:
    """One answer: a JSON body, an SSE body, text or bytes, with headers, handed over in
    ``chunk_size`` pieces; ``error`` raises that transport error instead of answering, or after
    ``fail_after`` body bytes."""

    status: int = 200
    json_body: Any = None
    sse: str | None = None
    text: str | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunk_size: int = 17
    error: type[Exception] | None = None
    fail_after: int | None = None

    @classmethod
    def from_case(cls, case: dict[str, Any], **kw: Any) -> FakeResponse:
        """The answer of a recorded case (``status``, ``response_body``/``response_sse``/
        ``response_text``, ``response_headers_subset``)."""
        # A header recorded with several values (a list in some cassette formats) is sent once,
        # its values joined as HTTP joins repeated headers.
        headers = {
            k.lower(): ", ".join(map(str, v)) if isinstance(v, list) else v
            for k, v in (case.get("response_headers_subset") or {}).items()
        }
        for name in ("content-length", "content-encoding", "transfer-encoding"):
            headers.pop(name, None)
        if "response_sse" in case:
            return cls(status=case["status"], sse=case["response_sse"], headers=headers, **kw)
        if "response_body" in case:
            return cls(status=case["status"], json_body=case["response_body"], headers=headers, **kw)
        return cls(status=case["status"], text=case["response_text"], headers=headers, **kw)

    def body(self) -> tuple[bytes, str]:
        if self.sse is not None:
            return self.sse.encode(), "text/event-stream; charset=utf-8"
        if self.json_body is not None:
            return json.dumps(self.json_body).encode(), "application/json"
        if self.text is not None:
            return self.text.encode(), "text/plain; charset=utf-8"
        return self.content or b"", "application/octet-stream"


class _Chunks(httpx2.SyncByteStream, httpx2.AsyncByteStream):  # type: ignore[misc]
    def __init__(self, data: bytes, size: int, fail_after: int | None, error: type[Exception] | None):
        self.data, self.size, self.fail_after, self.error = data, size, fail_after, error

    def _parts(self) -> Iterator[bytes]:
        for i in range(0, len(self.data), self.size):
            if self.fail_after is not None and i >= self.fail_after:
                raise (self.error or httpx2.ReadError)("connection reset by peer")
            yield self.data[i : i + self.size]

    def __iter__(self) -> Iterator[bytes]:
        yield from self._parts()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self._parts():
            yield part


Responder = FakeResponse | list[FakeResponse] | Callable[[Any], FakeResponse]


class FakeOpenAI:
    """Route table: ``fake.add("POST", "/chat/completions", FakeResponse(...))``.

    A route answers with a response, a list of them (served in order, the last one repeats: for
    retry tests) or a function of the request. Paths match after stripping ``/v1`` and Azure's
    ``/openai/deployments/<name>`` prefix. ``requests`` and ``bodies`` keep what was asked (unless
    ``keep=False``: a long-running server); ``posts`` counts the POST requests.
    """

    def __init__(self, keep: bool = True) -> None:
        self.routes: dict[tuple[str, str], Responder] = {}
        self.requests: list[Any] = []
        self.bodies: list[Any] = []
        self.keep = keep
        self.posts = 0

    def add(self, method: str, path: str, response: Responder) -> FakeOpenAI:
        self.routes[(method.upper(), path)] = response
        return self

    @staticmethod
    def route_path(path: str) -> str:
        if path.startswith("/v1/"):
            path = path[3:]
        if path.startswith("/openai/deployments/"):
            path = "/" + path.split("/", 4)[4]
        elif path.startswith("/openai/"):
            path = path[7:]
        return path

    def handler(self, request: Any) -> Any:
        """An ``httpx2.Request`` answered (what ``httpx2.MockTransport`` calls)."""
        if request.method == "POST":
            self.posts += 1
        if self.keep:
            self.requests.append(request)
            try:
                self.bodies.append(json.loads(request.content) if request.content else None)
            except (ValueError, UnicodeDecodeError, httpx2.RequestNotRead):
                self.bodies.append(None)
        key = (request.method, self.route_path(request.url.path))
        responder = self.routes.get(key)
        if responder is None:
            error = {"message": f"no fake route {key}", "type": "invalid_request_error", "code": "not_found"}
            return httpx2.Response(404, json={"error": error})
        if isinstance(responder, list):
            spec = responder.pop(0) if len(responder) > 1 else responder[0]
        elif callable(responder):
            spec = responder(request)
        else:
            spec = responder
        if spec.error is not None and spec.fail_after is None:
            raise spec.error("fake transport error", request=request)  # type: ignore[call-arg]
        data, content_type = spec.body()
        headers = {"content-type": content_type, **spec.headers}
        return httpx2.Response(
            spec.status,
            headers=headers,
            stream=_Chunks(data, spec.chunk_size, spec.fail_after, spec.error),
            request=request,
        )

    def sync_client(self) -> Any:
        return httpx2.Client(transport=httpx2.MockTransport(self.handler))

    def async_client(self) -> Any:
        return httpx2.AsyncClient(transport=httpx2.MockTransport(self.handler))


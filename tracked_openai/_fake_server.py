"""The one fake OpenAI, over HTTP: made-up answers, and a loopback server for any route table.

``FakeOpenAI`` (``_fake_transport``) answers requests from its routes; the tests hand it to the
SDK as a transport with recorded responses. ``synthetic_openai()`` here fills one with
OpenAI-shaped answers made up from the request (usage included), and ``FakeOpenAIServer`` serves
any ``FakeOpenAI`` on a loopback port for the offline demo, the examples and the benchmarks:

- ``POST /v1/chat/completions``: text and vision (image parts add image tokens), SSE streams
  with the ``include_usage`` chunk when asked; model ``*-unavailable`` or an unknown
  ``does-not-exist`` model answers OpenAI's 404 ``model_not_found`` error.
- ``POST /v1/responses`` (non-streaming), ``POST /v1/embeddings``, ``POST /v1/images/generations``.
- Azure paths (``/openai/deployments/<name>/...``) map onto the same routes.

Synthetic token counts are word counts (deterministic, not tiktoken-exact): they exist to
exercise the tracking pipeline, not to imitate a model. A per-model delay makes latency
comparisons between models visible in reports.

Run it on its own with ``python -m tracked_openai._fake_server`` (prints its base URL).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._fake_transport import FakeOpenAI, FakeResponse, httpx2

__all__ = ["FakeOpenAIServer", "serve_fake_openai", "synthetic_openai"]


# Seconds of simulated model time per call: bigger models answer a little slower.
MODEL_DELAY = {
    "gpt-4o": 0.045,
    "gpt-4.1": 0.05,
    "gpt-4o-mini": 0.015,
    "gpt-4.1-mini": 0.02,
    "gpt-image-1": 0.06,
    "dall-e-3": 0.06,
}
_DEFAULT_DELAY = 0.02
_IMAGE_TOKENS = 85  # what a low-detail image costs on OpenAI's vision models
# A 1x1 transparent PNG, so image responses decode as real images.
_PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082"
    )
).decode()


def _words(value: Any) -> int:
    """Rough token count of a prompt: words in every string it contains."""
    if isinstance(value, str):
        return max(1, len(value.split()))
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        if value.get("type") in ("image_url", "input_image"):
            return _IMAGE_TOKENS
        return sum(_words(v) for k, v in value.items() if k not in ("role", "type", "name"))
    return 0


def _reply(prompt_tokens: int, model: str, seed: str) -> str:
    digest = hashlib.sha256(f"{model}:{seed}".encode()).hexdigest()
    confidence = 0.80 + int(digest[:2], 16) / 255 * 0.19
    return (
        f"Reviewed {prompt_tokens} tokens of input with {model}. "
        f"Findings: 2 issues, 1 recommendation. confidence={confidence:.2f}"
    )



# -- synthetic answers -------------------------------------------------------------------------



def _error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> FakeResponse:
    return FakeResponse(
        status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, chunk_size=1 << 16
    )


def _json(body: Any) -> FakeResponse:
    return FakeResponse(200, body, chunk_size=1 << 16)


class _Synthetic:
    """The made-up answers of ``synthetic_openai()``: every POST route reads the model, waits its
    simulated delay and answers from the request."""

    def __init__(self, latency_scale: float) -> None:
        self.latency_scale = latency_scale
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def models(self, request: Any) -> FakeResponse:
        models = [{"id": m, "object": "model", "owned_by": "fake"} for m in MODEL_DELAY]
        return _json({"object": "list", "data": models})

    def route(self, answer: Callable[[dict[str, Any], str], FakeResponse]) -> Callable[[Any], FakeResponse]:
        def respond(request: Any) -> FakeResponse:
            try:
                body = json.loads(request.content) if request.content else {}
            except ValueError:
                return _error(400, "We could not parse the JSON body of your request.", "invalid_json")
            path = request.url.path
            deployment = path.split("/")[3] if path.startswith("/openai/deployments/") else None
            model = str(body.get("model") or deployment or "gpt-4o")
            if "unavailable" in model or model == "does-not-exist":
                return _error(
                    404,
                    f"The model `{model}` does not exist or you do not have access to it.",
                    "model_not_found",
                )
            time.sleep(MODEL_DELAY.get(model, _DEFAULT_DELAY) * self.latency_scale)
            return answer(body, model)

        return respond

    def chat(self, body: dict[str, Any], model: str) -> FakeResponse:
        messages = body.get("messages") or []
        prompt_tokens = _words(messages)
        text = _reply(prompt_tokens, model, json.dumps(messages, sort_keys=True))
        completion_tokens = len(text.split())
        cached = (prompt_tokens // 1024) * 1024 if prompt_tokens >= 1024 else 0
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        ident = f"chatcmpl-fake{self.next_id()}"
        created = int(time.time())
        served = model if "-20" in model else {"gpt-4o": "gpt-4o-2024-08-06"}.get(model, model)
        if body.get("stream"):
            return self._chat_stream(ident, created, served, text, usage, body)
        return _json(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": served,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
            }
        )

    def _chat_stream(
        self, ident: str, created: int, model: str, text: str, usage: dict[str, Any], body: dict[str, Any]
    ) -> FakeResponse:
        events: list[str] = []

        def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": choices,
                **(extra or {}),
            }
            events.append(f"data: {json.dumps(chunk)}\n\n")

        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for word in text.split(" "):
            event([{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}])
        event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            event([], {"usage": usage})
        events.append("data: [DONE]\n\n")
        return FakeResponse(200, sse="".join(events), chunk_size=1 << 16)

    def responses(self, body: dict[str, Any], model: str) -> FakeResponse:
        prompt_tokens = _words(body.get("input")) + _words(body.get("instructions"))
        text = _reply(prompt_tokens, model, json.dumps(body.get("input"), sort_keys=True)[-200:])
        out = len(text.split())
        n = self.next_id()
        return _json(
            {
                "id": f"resp_fake{n}",
                "object": "response",
                "created_at": int(time.time()),
                "status": "completed",
                "model": model,
                "output": [
                    {
                        "type": "message",
                        "id": f"msg_fake{n}",
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    }
                ],
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "usage": {
                    "input_tokens": prompt_tokens,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": out,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": prompt_tokens + out,
                },
            }
        )

    def embeddings(self, body: dict[str, Any], model: str) -> FakeResponse:
        inputs = body.get("input")
        token_ids = isinstance(inputs, list) and all(isinstance(i, int) for i in inputs)
        items = inputs if isinstance(inputs, list) and not token_ids else [inputs]
        dims = int(body.get("dimensions") or 8)
        data = []
        for i, item in enumerate(items):
            digest = hashlib.sha256(json.dumps(item).encode()).digest()
            vector = [(digest[j % len(digest)] - 128) / 128 for j in range(dims)]
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = _words(items)
        return _json(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def images(self, body: dict[str, Any], model: str) -> FakeResponse:
        n = int(body.get("n") or 1)
        result: dict[str, Any] = {
            "created": int(time.time()),
            "data": [{"b64_json": _PNG, "revised_prompt": body.get("prompt")} for _ in range(n)],
        }
        if model.startswith("gpt-image"):
            # gpt-image models bill tokens and report them; dall-e models bill per image.
            prompt = _words(body.get("prompt"))
            image_tokens = 272 * n
            result.update(
                background="opaque",
                output_format="png",
                quality=body.get("quality") or "low",
                size=body.get("size") or "1024x1024",
                usage={
                    "input_tokens": prompt,
                    "input_tokens_details": {"text_tokens": prompt, "image_tokens": 0},
                    "output_tokens": image_tokens,
                    "output_tokens_details": {"image_tokens": image_tokens, "text_tokens": 0},
                    "total_tokens": prompt + image_tokens,
                },
            )
        return _json(result)


def synthetic_openai(latency_scale: float = 1.0) -> FakeOpenAI:
    """A ``FakeOpenAI`` answering the paid routes the demo uses with made-up, OpenAI-shaped
    bodies (``latency_scale`` multiplies the simulated per-model delay; ``0`` answers at once)."""
    answers = _Synthetic(latency_scale)
    fake = FakeOpenAI(keep=False)
    fake.add("GET", "/models", answers.models)
    for path, answer in (
        ("/chat/completions", answers.chat),
        ("/responses", answers.responses),
        ("/embeddings", answers.embeddings),
        ("/images/generations", answers.images),
    ):
        fake.add("POST", path, answers.route(answer))
    return fake


# -- over HTTP -------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Hands each HTTP request to the server's ``FakeOpenAI`` and writes its answer back."""

    server: _Server
    protocol_version = "HTTP/1.1"
    # Answers are written in a few small writes: with Nagle's algorithm on, a reused connection
    # waits for the client's delayed ACK (~40 ms) before the last one goes out.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: the demo prints its own output.
        return None

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        request = httpx2.Request(
            self.command,
            f"http://{self.headers.get('host') or 'localhost'}{self.path}",
            headers=list(self.headers.items()),
            content=raw,
        )
        try:
            response = self.server.fake.handler(request)
        except Exception:
            self.close_connection = True  # a transport error: drop the connection unanswered
            return
        streaming = "event-stream" in response.headers.get("content-type", "")
        self.send_response(response.status_code)
        for key, value in response.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        if "x-request-id" not in response.headers:
            self.send_header("x-request-id", f"req_fake_{self.server.next_id()}")
        if streaming:
            # No content-length: the stream ends when the connection closes, as OpenAI's does.
            self.send_header("connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for chunk in response.stream:
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except Exception:
                return
            return
        try:
            data = b"".join(response.stream)
        except Exception:
            self.close_connection = True
            return
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Bursts of hundreds of concurrent clients (budget tests): socketserver's default backlog of
    # 5 would leave connections waiting on SYN retries.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], fake: FakeOpenAI) -> None:
        super().__init__(address, _Handler)
        self.fake = fake
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)


class FakeOpenAIServer:
    """A running fake endpoint: ``with FakeOpenAIServer() as server: OpenAI(base_url=server.base_url)``.

    Args:
        host: Loopback interface to bind.
        port: ``0`` picks a free port.
        latency_scale: Multiplies the simulated per-model delay (``0`` answers at once).
        fake: The routes to serve (default: ``synthetic_openai(latency_scale)``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_scale: float = 1.0,
        fake: FakeOpenAI | None = None,
    ) -> None:
        self.fake = fake if fake is not None else synthetic_openai(latency_scale)
        self._server = _Server((host, port), self.fake)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What to pass as ``base_url`` (or ``OPENAI_BASE_URL``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def azure_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        """POST requests answered so far."""
        return self.fake.posts

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="tracked-openai-fake-server", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def serve_fake_openai(latency_scale: float = 1.0) -> Iterator[FakeOpenAIServer]:
    """Run a fake OpenAI endpoint on a free loopback port for the duration of the block."""
    server = FakeOpenAIServer(latency_scale=latency_scale).start()
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":  # pragma: no cover - manual use
    with serve_fake_openai() as srv:
        print(f"fake OpenAI at {srv.base_url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


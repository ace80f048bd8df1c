"""A small OpenAI-compatible HTTP server for the offline demo and the examples.

Stdlib only (``http.server`` in a daemon thread, loopback, free port). It answers the paid
endpoints the demo uses with OpenAI-shaped bodies, including usage, so real ``openai`` clients
(and therefore tracked clients) work against it unchanged:

- ``POST /v1/chat/completions``: text and vision (image parts add image tokens), SSE streams
  with the ``include_usage`` chunk when asked; model ``*-unavailable`` or an unknown
  ``does-not-exist`` model answers OpenAI's 404 ``model_not_found`` error.
- ``POST /v1/responses`` (non-streaming), ``POST /v1/embeddings``, ``POST /v1/images/generations``.
- Azure paths (``/openai/deployments/<name>/...``) map onto the same handlers.

Token counts are word counts (deterministic, not tiktoken-exact): this server exists to exercise
the tracking pipeline, not to imitate a model. A per-model delay makes latency comparisons
between models visible in reports.

Run it on its own with ``python -m tracked_openai._fake_server`` (prints its base URL).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAIServer", "serve_fake_openai"]

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


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    deployment: str | None = None

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: the demo prints its own output.
        return None

    # -- plumbing ----------------------------------------------------------------------------
    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", f"req_fake_{self.server.next_id()}")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: str, kind: str = "invalid_request_error") -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})

    def _route(self) -> str:
        path = self.path.split("?", 1)[0]
        if path.startswith("/openai/deployments/"):
            self.deployment = path.split("/")[3]
            return "/" + path.split("/", 4)[4]
        self.deployment = None
        return path[3:] if path.startswith("/v1/") else path

    def do_GET(self) -> None:
        route = self._route()
        if route == "/models":
            models = [{"id": m, "object": "model", "owned_by": "fake"} for m in MODEL_DELAY]
            self._send_json(200, {"object": "list", "data": models})
        else:
            self._error(404, f"unknown route GET {route}", "not_found")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            self._error(400, "We could not parse the JSON body of your request.", "invalid_json")
            return
        self.server.count()
        route = self._route()
        model = str(body.get("model") or self.deployment or "gpt-4o")
        if "unavailable" in model or model == "does-not-exist":
            self._error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "model_not_found",
            )
            return
        time.sleep(MODEL_DELAY.get(model, _DEFAULT_DELAY) * self.server.latency_scale)
        handler = {
            "/chat/completions": self._chat,
            "/responses": self._responses,
            "/embeddings": self._embeddings,
            "/images/generations": self._images,
        }.get(route)
        if handler is None:
            self._error(404, f"unknown route POST {route}", "not_found")
            return
        handler(body, model)

    # -- endpoints ---------------------------------------------------------------------------
    def _chat(self, body: dict[str, Any], model: str) -> None:
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
        ident = f"chatcmpl-fake{self.server.next_id()}"
        created = int(time.time())
        served = model if "-20" in model else {"gpt-4o": "gpt-4o-2024-08-06"}.get(model, model)
        if body.get("stream"):
            self._chat_stream(ident, created, served, text, usage, body)
            return
        self._send_json(
            200,
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
            },
        )

    def _chat_stream(
        self, ident: str, created: int, model: str, text: str, usage: dict[str, Any], body: dict[str, Any]
    ) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("x-request-id", f"req_fake_{self.server.next_id()}")
        # No content-length: the stream ends when the connection closes, as OpenAI's does.
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True

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
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for word in text.split(" "):
            event([{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}])
        event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            event([], {"usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _responses(self, body: dict[str, Any], model: str) -> None:
        prompt_tokens = _words(body.get("input")) + _words(body.get("instructions"))
        text = _reply(prompt_tokens, model, json.dumps(body.get("input"), sort_keys=True)[-200:])
        out = len(text.split())
        n = self.server.next_id()
        self._send_json(
            200,
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
            },
        )

    def _embeddings(self, body: dict[str, Any], model: str) -> None:
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
        self._send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _images(self, body: dict[str, Any], model: str) -> None:
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
        self._send_json(200, result)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Bursts of hundreds of concurrent clients (budget tests): socketserver's default backlog of
    # 5 would leave connections waiting on SYN retries.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], latency_scale: float) -> None:
        super().__init__(address, _Handler)
        self.latency_scale = latency_scale
        self.requests = 0
        self._ids = 0
        self._lock = threading.Lock()

    def next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def count(self) -> None:
        with self._lock:
            self.requests += 1


class FakeOpenAIServer:
    """A running fake endpoint: ``with FakeOpenAIServer() as server: OpenAI(base_url=server.base_url)``.

    Args:
        host: Loopback interface to bind.
        port: ``0`` picks a free port.
        latency_scale: Multiplies the simulated per-model delay (``0`` answers at once).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency_scale: float = 1.0) -> None:
        self._server = _Server((host, port), latency_scale)
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
        return self._server.requests

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

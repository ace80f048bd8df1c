"""The most a request can cost, worked out before it is sent.

Input: the request's text counted with tiktoken (offline, as for stream estimates: ``capture.estimate``),
with OpenAI's per-message overhead; each image part at the most an image can bill on the model's
family (``low`` detail at its fixed price); input audio parts by their length. Output: the
request's own cap (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``) times ``n``,
else the model's output limit (``OUTPUT_LIMITS``, longest matching prefix; ``DEFAULT_OUTPUT_LIMIT``
for a model not listed). Images: ``n`` images at the size and quality asked for (the dearest
quality when it is ``auto`` or not given). Speech: the input's characters. Transcription: the
upload's measured length, else ``DEFAULT_AUDIO_SECONDS``. All of it priced by the package's price
book at the requested service tier, so a reservation is never below what the call can be billed
(with one exception said in the README: a model the price table does not know costs nothing here).
"""

from __future__ import annotations

import json
import math
import time
from decimal import Decimal
from functools import lru_cache
from typing import Any

from ..records import CallRecord, Usage
from ._model import NANO, to_nano

__all__ = [
    "DEFAULT_OUTPUT_LIMIT",
    "OUTPUT_LIMITS",
    "plain_chat_bound",
    "worst_case_bound",
    "worst_case_nano",
    "worst_case_usd",
]

# Most output tokens a model can return (OpenAI's model pages, 2026); longest prefix wins.
OUTPUT_LIMITS: dict[str, int] = {
    "gpt-3.5-turbo": 4_096,
    "gpt-4": 8_192,
    "gpt-4-turbo": 4_096,
    "gpt-4o": 16_384,
    "gpt-4o-mini": 16_384,
    "chatgpt-4o": 16_384,
    "gpt-4.1": 32_768,
    "gpt-4.5": 16_384,
    "gpt-5": 128_000,
    "o1": 100_000,
    "o1-mini": 65_536,
    "o3": 100_000,
    "o4-mini": 100_000,
    "davinci-002": 16_384,
    "babbage-002": 16_384,
}
DEFAULT_OUTPUT_LIMIT = 32_768
# Most input tokens one image part can bill (OpenAI's vision guide: 85 + 170 per 512px tile, at
# most 8 tiles, for the gpt-4o family; the mini models count more tokens at a lower rate).
_IMAGE_TOKENS_HIGH: dict[str, int] = {
    "gpt-4o-mini": 2_833 + 5_667 * 8,
    "gpt-4.1-mini": 2_490,
    "gpt-4.1-nano": 3_780,
    "o4-mini": 2_642,
    "": 85 + 170 * 8,
}
_IMAGE_TOKENS_LOW: dict[str, int] = {"gpt-4o-mini": 2_833, "": 85}
DEFAULT_AUDIO_SECONDS = 1_800.0
# Audio input tokens per second on the audio models (1 token per 100 ms).
_AUDIO_TOKENS_PER_SECOND = 10
_IMAGE_ENDPOINTS = ("images.generate", "images.edit", "images.variation")


def _prefix_value(table: dict[str, int], model: str, default: int) -> int:
    best, value = -1, default
    for prefix, limit in table.items():
        if prefix and model.startswith(prefix) and len(prefix) > best:
            best, value = len(prefix), limit
    return value


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _media_tokens(value: Any, model: str) -> tuple[int, int]:
    """(image tokens, audio tokens) of every image and audio part in a request's input."""
    images = audio = 0
    if isinstance(value, list):
        for item in value:
            i, a = _media_tokens(item, model)
            images += i
            audio += a
    elif isinstance(value, dict):
        kind = value.get("type")
        if kind in ("image_url", "input_image"):
            spec = value.get("image_url")
            detail = spec.get("detail") if isinstance(spec, dict) else value.get("detail")
            table = _IMAGE_TOKENS_LOW if detail == "low" else _IMAGE_TOKENS_HIGH
            images += _prefix_value(table, model, table[""])
        elif kind == "input_audio":
            spec = value.get("input_audio") or {}
            data = spec.get("data") if isinstance(spec, dict) else None
            size = len(data) * 3 // 4 if isinstance(data, str) else 0
            # 2,000 bytes a second is 16 kbit/s, below any format OpenAI takes: an upper bound.
            audio += int(size / 2000 * _AUDIO_TOKENS_PER_SECOND) + 1
        else:
            for key in ("content", "input"):
                if key in value:
                    i, a = _media_tokens(value[key], model)
                    images += i
                    audio += a
    return images, audio


def _upload_seconds(upload: Any) -> float:
    if upload is None:
        return DEFAULT_AUDIO_SECONDS
    try:
        from ..capture.audio import measure_seconds

        seconds = measure_seconds(upload)
    except Exception:
        seconds = None
    return float(seconds) * 1.01 + 1 if seconds else DEFAULT_AUDIO_SECONDS


def _price(record: CallRecord) -> Decimal | None:
    from ..pricing import price_record

    price_record(record)
    return record.cost.total_usd if record.cost is not None else None


def worst_case_usd(
    endpoint: str,
    request: dict[str, Any],
    model: str | None,
    provider: str = "openai",
    upload: Any = None,
) -> Decimal | None:
    """The most the call can cost in dollars; ``None`` when the price table cannot price it."""
    nano = worst_case_nano(endpoint, request, model, provider, upload)
    return None if nano is None else Decimal(nano) / NANO


def worst_case_nano(
    endpoint: str,
    request: dict[str, Any],
    model: str | None,
    provider: str = "openai",
    upload: Any = None,
) -> int | None:
    """:func:`worst_case_usd` in nano-dollars, rounded up (what a reservation holds)."""
    return _worst_case(endpoint, request, model, provider, upload, _Tally(True))


def worst_case_bound(
    endpoint: str,
    request: dict[str, Any],
    model: str | None,
    provider: str = "openai",
    upload: Any = None,
) -> tuple[int | None, bool]:
    """``(nano-dollars, exact)``: :func:`worst_case_nano` without running tiktoken, each text
    counted as a token a byte (a token is at least one byte, so never below the price).
    ``exact`` is False when a text was long enough for that to overstate it: the caller's path
    reserves this bound while the lease has ample room, and counts exactly only when it has not."""
    if endpoint == "chat.completions":
        fast = plain_chat_bound(request, model, provider)
        if fast is not None:
            return fast
    tally = _Tally(False)
    return _worst_case(endpoint, request, model, provider, upload, tally), not tally.bounded


def _worst_case(
    endpoint: str, request: dict[str, Any], model: str | None, provider: str, upload: Any, tally: _Tally
) -> int | None:
    name = model or ""
    tier = request.get("service_tier")
    tier = tier if isinstance(tier, str) else None
    if endpoint in _IMAGE_ENDPOINTS:
        return _nano(_image_worst_case(request, name, provider))
    if endpoint == "audio.speech":
        text = request.get("input")
        chars = Usage(characters=len(text) if isinstance(text, str) else 4096)
        return _nano(_price(_record(endpoint, model, provider, tier, chars)))
    if endpoint in ("audio.transcriptions", "audio.translations"):
        seconds = Usage(seconds=_upload_seconds(upload))
        return _nano(_price(_record(endpoint, model, provider, tier, seconds)))
    images = audio = 0
    if endpoint == "chat.completions":
        prompt, images, audio = _chat_tokens(request, model, tally)
    elif endpoint == "embeddings":
        prompt = _embedding_tokens(request, model, tally)
    else:
        from ..capture.estimate import estimate_prompt_tokens

        prompt = estimate_prompt_tokens(endpoint, request, model) + _json_bytes(request.get("tools"))
        images, audio = _media_tokens(request.get("input"), name)
    output = 0
    if endpoint != "embeddings":
        cap = None
        for key in ("max_completion_tokens", "max_output_tokens", "max_tokens"):
            cap = _int(request.get(key))
            if cap is not None:
                break
        if cap is None:
            cap = _output_limit(name)
        output = cap * max(_int(request.get("n")) or 1, 1)
    if not images and not audio and prompt < _LINEAR_MAX_INPUT:
        rates = _linear_rates(endpoint, name, provider, tier)
        if rates is None:
            return None
        # Float rates, rounded up with a nano-dollar to spare: never below the exact price.
        return math.ceil(prompt * rates[0] + output * rates[1]) + 1
    usage = Usage(
        input_tokens=prompt + images + audio,
        image_input_tokens=images or None,
        audio_input_tokens=audio or None,
        output_tokens=output,
    )
    return _nano(_price(_record(endpoint, model, provider, tier, usage)))


# Chat requests of plain text messages without tools are most calls: they take a path of their
# own that gives what the general one does (a test holds the two equal) in a third of the time,
# since the caller's path runs it cold, between the SDK's own work, where every bytecode counts.
_PLAIN_CHAT_KEYS = frozenset(
    {
        "messages", "model", "max_tokens", "max_completion_tokens", "max_output_tokens", "n",
        "service_tier", "stream", "stream_options", "temperature", "top_p", "seed", "stop", "user",
        "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
        "metadata", "store", "reasoning_effort", "verbosity", "prompt_cache_key", "safety_identifier",
        "parallel_tool_calls", "modalities",
    }
)
_UNPRICED = (0.0, 0.0, 0)
_plain_chat_cache: dict[tuple[Any, ...], tuple[float, float, int]] = {}


def plain_chat_bound(
    request: dict[str, Any], model: str | None, provider: str
) -> tuple[int | None, bool] | None:
    """:func:`worst_case_bound` of a chat request whose messages are ``{"role", "content"}`` with
    a standard role and text content, and nothing priced besides (no tools, schemas, images,
    audio); ``None`` for any other request."""
    if not _PLAIN_CHAT_KEYS.issuperset(request):
        return None
    tier = request.get("service_tier")
    if tier is not None and type(tier) is not str:
        return None
    messages = request.get("messages")
    if type(messages) is not list:
        return None
    prompt, bounded = 3, False
    for message in messages:
        if type(message) is not dict or len(message) != 2:
            return None
        content, role = message.get("content"), message.get("role")
        if type(content) is not str or role not in _ROLES:
            return None
        size = len(content) if content.isascii() else len(content.encode())
        if size > _BYTES_AS_TOKENS:
            bounded = True
        prompt += 4 + size
    if prompt >= _LINEAR_MAX_INPUT:
        return None
    name = model or ""
    key = (id(_price_book()), name, provider, tier)
    found = _plain_chat_cache.get(key)
    if found is None:
        rates = _linear_rates("chat.completions", name, provider, tier)
        found = _UNPRICED if rates is None else (rates[0], rates[1], _output_limit(name))
        if len(_plain_chat_cache) > 10_000:  # bounded: model names come from callers
            _plain_chat_cache.clear()
        _plain_chat_cache[key] = found
    if found is _UNPRICED:
        return None, not bounded
    cap = request.get("max_completion_tokens")
    if cap is None:
        cap = request.get("max_output_tokens")
    if cap is None:
        cap = request.get("max_tokens")
    if cap is not None:
        cap = _int(cap)
        if cap is None:
            return None  # not a count: the general path decides what it means
    else:
        cap = found[2]
    n = request.get("n")
    if n is not None:
        n = _int(n)
        if n is None:
            return None
    return math.ceil(prompt * found[0] + cap * (n or 1) * found[1]) + 1, not bounded


def _nano(usd: Decimal | None) -> int | None:
    return None if usd is None else to_nano(usd)


# Texts up to this many bytes count as one token a byte (a token is at least a byte): an upper
# bound that spares tiktoken's ~15 µs per text on the caller's path; longer ones are counted.
_BYTES_AS_TOKENS = 64
# Tokens of each standard role (one in cl100k and o200k).
_ROLES = frozenset({"system", "user", "assistant", "developer", "tool", "function"})


@lru_cache(maxsize=256)
def _counter_for(model: str | None) -> Any:
    from ..capture.estimate import _encoding_for

    return _encoding_for(model)


def _bytes(text: str) -> int:
    # ``isascii`` is a flag CPython keeps on the string: no pass over it, no copy.
    return len(text) if text.isascii() else len(text.encode())


class _Tally:
    """How one request's texts are counted: exactly (tiktoken), or bounded by their UTF-8 length
    (``bounded`` then says whether any text was long enough for the bound to overstate it)."""

    __slots__ = ("bounded", "exact")

    def __init__(self, exact: bool) -> None:
        self.exact = exact
        self.bounded = False

    def count(self, text: str, model: str | None) -> int:
        size = _bytes(text)
        if size <= _BYTES_AS_TOKENS:
            return size
        if not self.exact:
            self.bounded = True
            return size
        from ..capture.estimate import _Counter

        # tiktoken's count extrapolates past its slice limit; the byte length never undercounts.
        return min(int(_Counter(_counter_for(model))(text)), size)


def _json_bytes(value: Any) -> int:
    """Tokens of tool and schema definitions, bounded by their JSON's length in bytes."""
    if not value:
        return 0
    try:
        return len(json.dumps(value, default=str).encode())
    except (TypeError, ValueError):
        return 0


def _chat_tokens(request: dict[str, Any], model: str | None, tally: _Tally) -> tuple[int, int, int]:
    """(text tokens, image tokens, audio tokens) of a chat request: OpenAI's counting recipe
    (3 tokens per message, +1 for a name, +3 priming), tools and response format included."""
    name = model or ""
    total = 3 + _json_bytes(request.get("tools")) + _json_bytes(request.get("functions"))
    total += _json_bytes(request.get("response_format"))
    images = audio = 0
    for message in request.get("messages") or []:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        total += 4 if role in _ROLES else 3 + (tally.count(role, model) if isinstance(role, str) else 0)
        content = message.get("content")
        if isinstance(content, str):
            total += tally.count(content, model)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += tally.count(part["text"], model)
                elif isinstance(part, str):
                    total += tally.count(part, model)
                else:
                    i, a = _media_tokens(part, name)
                    images += i
                    audio += a
        if message.get("name"):
            total += 1 + tally.count(str(message["name"]), model)
        if message.get("tool_calls"):
            total += _json_bytes(message["tool_calls"])
    return total, images, audio


# Up to this many input tokens no long-context price applies (the lowest threshold listed is
# above it), so a call is priced from per-token rates worked out once per model.
_LINEAR_MAX_INPUT = 100_000
_PROBE = 1_000
_rates_cache: dict[tuple[Any, ...], tuple[float, float] | None] = {}


def _linear_rates(endpoint: str, model: str, provider: str, tier: str | None) -> tuple[float, float] | None:
    """Nano-dollars per input and per output token for ``model`` (``None``: unpriced)."""
    book = _price_book()
    key = (id(book), endpoint, model, provider, tier)
    try:
        return _rates_cache[key]
    except KeyError:
        pass
    cost_in = _price(_record(endpoint, model, provider, tier, Usage(input_tokens=_PROBE)))
    cost_out: Decimal | None = Decimal(0)
    if endpoint != "embeddings":  # embeddings have no output (nor an output price)
        probe = Usage(input_tokens=0, output_tokens=_PROBE)
        cost_out = _price(_record(endpoint, model, provider, tier, probe))
    rates = None
    if cost_in is not None and cost_out is not None:
        rates = (float(cost_in * NANO / _PROBE), float(cost_out * NANO / _PROBE))
    if len(_rates_cache) > 10_000:  # bounded: model names come from callers
        _rates_cache.clear()
    _rates_cache[key] = rates
    return rates


def _price_book() -> Any:
    # The import statement is looked up once, not on every call (it costs a few hundred ns).
    global _get_price_book
    if _get_price_book is None:
        from ..pricing import get_price_book

        _get_price_book = get_price_book
    return _get_price_book()


_get_price_book: Any = None


@lru_cache(maxsize=1024)
def _output_limit(model: str) -> int:
    return _prefix_value(OUTPUT_LIMITS, model, DEFAULT_OUTPUT_LIMIT)


def _record(endpoint: str, model: str | None, provider: str, tier: str | None, usage: Usage) -> CallRecord:
    record = CallRecord(
        record_id="", started_at=time.time(), endpoint=endpoint, provider=provider, model=model
    )
    # Azure requests name a deployment; the price book then needs the model itself, which only
    # the response says: price the deployment name as a model name (it often is one).
    record.response_model = model
    record.service_tier = tier
    record.usage = usage
    return record


def _embedding_tokens(request: dict[str, Any], model: str | None, tally: _Tally) -> int:
    value = request.get("input")
    items = value if isinstance(value, list) else [value]
    total = 0
    for item in items:
        if isinstance(item, str):
            total += tally.count(item, model)
        elif isinstance(item, int):
            total += 1
        elif isinstance(item, list):
            total += len(item)  # already tokens
    return total


def _image_worst_case(request: dict[str, Any], model: str, provider: str) -> Decimal | None:
    """``n`` images at the dearest per-image price the size and quality asked for allow."""
    from ..pricing import get_price_book

    found = get_price_book()._resolve(model, provider)
    if found is None:
        return None
    period = found[0].at(time.time())
    n = _int(request.get("n")) or 1
    size = request.get("size")
    quality = request.get("quality")
    best: Decimal | None = None
    for q, sizes in period.per_image.items():
        if (
            isinstance(quality, str)
            and quality not in ("auto", q)
            and not (quality == "standard" and q == "standard")
        ):
            continue
        for s, price in sizes.items():
            if isinstance(size, str) and size not in ("auto", s):
                continue
            if best is None or price > best:
                best = price
    if best is None:
        return None
    total = best * n
    prompt = request.get("prompt")
    if isinstance(prompt, str) and "standard" in period.tiers:
        # gpt-image models also bill the prompt's tokens; a token is at least one byte.
        extra = _price(
            _record("images.generate", model, provider, None, Usage(input_tokens=len(prompt.encode())))
        )
        if extra is not None:
            total += extra
    return total

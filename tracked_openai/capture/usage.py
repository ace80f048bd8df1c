"""Which calls are paid, and where each endpoint reports its usage.

Extraction reads typed SDK objects and plain JSON dicts alike (``_get``), tolerates any missing
or oddly-typed field, and never re-estimates a figure the response reported.
"""

from __future__ import annotations

from typing import Any

from ..records import Usage

__all__ = ["ENDPOINTS", "PARAM_KEYS", "apply_body", "embeddings_request", "params_of", "usage_from_body"]

# options.url (query stripped) -> endpoint name. Anything else is free (or not yet known) and
# passes through untracked.
ENDPOINTS: dict[str, str] = {
    "/chat/completions": "chat.completions",
    "/responses": "responses",
    "/responses/compact": "responses.compact",
    "/embeddings": "embeddings",
    "/images/generations": "images.generate",
    "/images/edits": "images.edit",
    "/images/variations": "images.variation",
    "/audio/transcriptions": "audio.transcriptions",
    "/audio/translations": "audio.translations",
    "/audio/speech": "audio.speech",
    "/completions": "completions",
    "/decisions": "decisions",
}

# Request parameters worth recording (never the prompt itself).
PARAM_KEYS = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
    "size",
    "quality",
    "style",
    "service_tier",
    "reasoning_effort",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "dimensions",
    "encoding_format",
    "voice",
    "speed",
    "background",
    "output_format",
    "response_format",
    "language",
    "stream",
    "verbosity",
    "moderation",
    "partial_images",
)

_CHAT_LIKE = frozenset({"chat.completions", "completions"})
_RESPONSES_LIKE = frozenset({"responses", "responses.compact", "decisions"})
_IMAGES = frozenset({"images.generate", "images.edit", "images.variation"})


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def embeddings_request(request: dict[str, Any], options: Any) -> dict[str, Any]:
    """An embeddings request as the caller made it: without ``encoding_format`` when that is the
    SDK's own default (``request`` itself otherwise; the SDK's body is never changed)."""
    if request.get("encoding_format") == "base64" and sdk_chose_encoding(options):
        return {k: v for k, v in request.items() if k != "encoding_format"}
    return request


def sdk_chose_encoding(options: Any) -> bool:
    """Whether an embeddings request's ``encoding_format="base64"`` is the SDK's own choice, not
    the caller's: the SDK sends base64 when the caller gave no format and decodes the answer
    back to floats in its ``post_parser``, which keeps the caller's argument. Read from there
    (a ``functools.partial`` in SDK 3.x, a closure in older releases); when it can't be read the
    SDK's choice is assumed, since every release sends base64 by default and asking for it
    explicitly is rare."""
    parser = getattr(options, "post_parser", None)
    keywords = getattr(parser, "keywords", None)
    if isinstance(keywords, dict) and "encoding_format" in keywords:
        return not isinstance(keywords["encoding_format"], str)
    code = getattr(parser, "__code__", None)
    closure = getattr(parser, "__closure__", None)
    if code is not None and closure and "encoding_format" in code.co_freevars:
        try:
            value = closure[code.co_freevars.index("encoding_format")].cell_contents
        except (ValueError, IndexError):
            return True
        return not isinstance(value, str)
    return True


def params_of(request: dict[str, Any]) -> dict[str, Any]:
    """The request parameters worth recording (``PARAM_KEYS``, never the prompt), as the request
    body carries them. Values the SDK adds by itself are taken out before (see ``begin`` and
    :func:`sdk_chose_encoding`), so these are the caller's choices."""
    params: dict[str, Any] = {}
    for key in PARAM_KEYS:
        value = request.get(key)
        if value is None:
            continue
        if isinstance(value, (str, int, float, bool)):
            params[key] = value
        elif key == "response_format" and isinstance(value, dict):
            params[key] = str(value.get("type"))
        elif isinstance(value, type):  # .parse(response_format=Model)
            params[key] = value.__name__
    reasoning = request.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        params["reasoning_effort"] = reasoning["effort"]
    if request.get("tools"):
        params["tools"] = len(request["tools"]) if isinstance(request["tools"], list) else 1
    return params


def usage_from_body(endpoint: str, body: Any) -> Usage | None:
    """The :class:`Usage` a response body (typed object or dict) reports, or ``None``."""
    usage = _get(body, "usage")
    if endpoint in _IMAGES:
        out = _usage_tokens(usage) if usage is not None else Usage()
        data = _get(body, "data")
        if isinstance(data, list):
            out.images = len(data)
        return None if out.is_empty() else out
    if endpoint in ("audio.transcriptions", "audio.translations"):
        out = Usage()
        if usage is not None:
            if _get(usage, "type") == "duration" or _get(usage, "seconds") is not None:
                out.seconds = _num(_get(usage, "seconds"))
            else:
                out = _usage_tokens(usage)
        if out.seconds is None and out.input_tokens is None:
            out.seconds = _num(_get(body, "duration"))
        return None if out.is_empty() else out
    if usage is None:
        return None
    if endpoint in _CHAT_LIKE or endpoint == "embeddings":
        return _usage_chat(usage)
    return _usage_tokens(usage)


def _usage_chat(usage: Any) -> Usage:
    details = _get(usage, "prompt_tokens_details")
    out_details = _get(usage, "completion_tokens_details")
    return Usage(
        input_tokens=_int(_get(usage, "prompt_tokens")),
        output_tokens=_int(_get(usage, "completion_tokens")),
        cached_input_tokens=_int(_get(details, "cached_tokens")),
        cache_write_tokens=_int(_get(details, "cache_write_tokens")),
        audio_input_tokens=_int(_get(details, "audio_tokens")),
        image_input_tokens=_int(_get(details, "image_tokens")),
        reasoning_tokens=_int(_get(out_details, "reasoning_tokens")),
        audio_output_tokens=_int(_get(out_details, "audio_tokens")),
    )


def _usage_tokens(usage: Any) -> Usage:
    """Responses / images / audio token usage (``input_tokens``/``output_tokens`` style)."""
    details = _get(usage, "input_tokens_details") or _get(usage, "input_token_details")
    out_details = _get(usage, "output_tokens_details") or _get(usage, "output_token_details")
    return Usage(
        input_tokens=_int(_get(usage, "input_tokens")),
        output_tokens=_int(_get(usage, "output_tokens")),
        cached_input_tokens=_int(_get(details, "cached_tokens")),
        cache_write_tokens=_int(_get(details, "cache_write_tokens")),
        audio_input_tokens=_int(_get(details, "audio_tokens")),
        image_input_tokens=_int(_get(details, "image_tokens")),
        reasoning_tokens=_int(_get(out_details, "reasoning_tokens")),
        audio_output_tokens=_int(_get(out_details, "audio_tokens")),
        image_output_tokens=_int(_get(out_details, "image_tokens")),
    )


def apply_body(record: Any, endpoint: str, body: Any) -> None:
    """Copy usage, served model and service tier from a response body onto ``record``."""
    usage = usage_from_body(endpoint, body)
    if usage is not None:
        if record.usage.characters is not None:
            usage.characters = record.usage.characters
        record.usage = usage
        record.usage_source = "response"
    model = _get(body, "model")
    if isinstance(model, str) and model:
        record.response_model = model
    tier = _get(body, "service_tier")
    if isinstance(tier, str) and tier:
        record.service_tier = tier
    if endpoint in _RESPONSES_LIKE:
        # Hosted tools are read from it on the exporter thread (``capture.tools``).
        record.tool_source = body

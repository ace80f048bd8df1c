"""The request side of a tracked call: which calls are paid, and the usage chunk we ask for.

``begin`` looks at the SDK's request options (method, URL, JSON body) and starts a ``Call`` for
a paid endpoint; for chat and completions streams to OpenAI or Azure it adds
``stream_options.include_usage`` (the caller never sees the extra chunk: see ``tee``).
"""

from __future__ import annotations

from typing import Any

from openai.lib.azure import AsyncAzureOpenAI, AzureOpenAI

from .._config import settings as _settings
from ..records import Usage
from ..scope import _current as _current_op
from ..scope import call_opened
from .audio import capture_upload
from .call import AUDIO_IN, Call
from .usage import ENDPOINTS, embeddings_request

__all__ = ["LIVE_BASE_URL", "begin"]

_RAW_HEADER = "X-Stainless-Raw-Response"

# Client classes whose ``base_url`` is not their ``_base_url``: the SDK's module clients read
# ``openai.base_url``, which may change after the client was built (``_module_client`` adds them).
LIVE_BASE_URL: set[type[Any]] = set()


def _is_openai_host(client: Any) -> bool:
    # ``base_url`` is a property that imports on every read; the URL object it returns only
    # changes when the client's base URL is set, so the answer is kept per client and URL.
    url = getattr(client, "_base_url", None)
    if url is None or type(client) in LIVE_BASE_URL:
        url = client.base_url
    cached = client.__dict__.get("_tracked_openai_host")
    if cached is not None and cached[0] is url:
        return bool(cached[1])
    host = str(url.host)
    answer = isinstance(client, (AzureOpenAI, AsyncAzureOpenAI)) or (
        host == "api.openai.com"
        or host.endswith((".openai.com", ".openai.azure.com", ".cognitiveservices.azure.com"))
    )
    client.__dict__["_tracked_openai_host"] = (url, answer)
    return answer


def begin(client: Any, options: Any, stream: bool) -> tuple[Call | None, Any]:
    """Start a record for a paid call; ``(None, options)`` for anything we do not track."""
    if options.method.lower() != "post":
        return None, options
    url: str = options.url
    query = url.find("?")
    if query >= 0:
        url = url[:query]
    endpoint = ENDPOINTS.get(url)
    if endpoint is None:
        return None, options
    request = options.json_data if isinstance(options.json_data, dict) else {}
    headers = options.headers
    raw = headers.get(_RAW_HEADER) if isinstance(headers, dict) else None
    op = _current_op.get()
    settings = _settings
    model = request.get("model")
    call = Call(
        endpoint,
        op,
        request,
        op.record.feature if op is not None else settings.default_feature,
        "azure" if isinstance(client, (AzureOpenAI, AsyncAzureOpenAI)) else "openai",
        model if isinstance(model, str) else None,
        bool(stream or request.get("stream")),
    )
    if endpoint == "audio.speech" and isinstance(request.get("input"), str):
        call.record.usage = Usage(characters=len(request["input"]))
    if settings.capture_content:
        call.record.content = {
            "request": {
                k: request[k]
                for k in ("messages", "input", "prompt", "instructions")
                if k in request
            }
        }
    if endpoint in AUDIO_IN:
        call.upload = capture_upload(getattr(options, "files", None))
    elif endpoint == "embeddings":
        # Recorded params are what the caller passed, not the SDK's default encoding.
        call.request = embeddings_request(request, options)
    if (
        call.stream
        and endpoint in ("chat.completions", "completions")
        and settings.inject_stream_usage
        and raw is None
    ):
        options = _maybe_inject_usage(client, options, request, call)
    if op is not None:
        # Last: from here on the call is sure to finish (and release its operation).
        call_opened(op)
    return call, options


def _maybe_inject_usage(client: Any, options: Any, request: dict[str, Any], call: Call) -> Any:
    stream_options = request.get("stream_options")
    if stream_options is not None or options.extra_json is not None:
        if isinstance(stream_options, dict) and "include_usage" in stream_options:
            return options
        extra = options.extra_json
        if isinstance(extra, dict) and "stream_options" in extra:
            return options
    if not _is_openai_host(client):
        # Other OpenAI-compatible servers may reject the field; estimate instead.
        return options
    merged = dict(stream_options) if isinstance(stream_options, dict) else {}
    merged["include_usage"] = True
    # ``options`` is the SDK's own per-call object (built by the resource method, copied again
    # by ``request()`` before each attempt); replacing its body spares a pydantic copy. The
    # caller's ``stream_options`` dict is never mutated.
    body = {**request, "stream_options": merged}
    fields = getattr(options, "__dict__", None)
    if fields is not None and fields.get("json_data") is request:
        # The field is set already: this is what pydantic's ``__setattr__`` does then, minus
        # its dispatch (microseconds on a cold path).
        fields["json_data"] = body
    else:
        options.json_data = body
    call.injected = True
    return options


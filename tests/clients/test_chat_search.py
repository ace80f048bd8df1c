"""Chat Completions search models carry a fee per request (issue 19, item 1): recorded as one
``chat_search`` tool call and priced, streaming and not. Bodies shaped like OpenAI's chat
completion and chunk objects; figures computed by hand from pricing/openai.yaml."""

from __future__ import annotations

import json
from decimal import Decimal

from tests.helpers.clients import make_clients
from tests.helpers.fakeopenai import FakeResponse

MODEL = "gpt-4o-mini-search-preview-2025-03-11"
USAGE = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
MSG = [{"role": "user", "content": "news?"}]
# gpt-4o-mini-search-preview $0.15 in / $0.60 out: 1000 x 0.15 + 200 x 0.6 = 270 per 1M;
# the search fee $25 / 1k requests.
TOKENS, FEE = Decimal("0.00027"), Decimal("0.025")


def _body() -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1764874030,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "x", "annotations": []},
            }
        ],
        "usage": USAGE,
    }


def _sse() -> str:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1764874030, "model": MODEL}
    chunks = [
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "x"}, "finish_reason": None}],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": USAGE},
    ]
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def _check(records) -> None:
    (call,) = records.calls
    assert call.usage.tool_calls == {"chat_search": 1}
    assert call.usage.tool_details == {"chat_search": {"search_context_size": "high"}}
    assert call.cost_status == "priced" and call.cost is not None
    assert call.cost.tool_usd == FEE and call.cost.total_usd == TOKENS + FEE


def test_chat_search_model_fee(fake, records) -> None:
    fake.add("POST", "/chat/completions", lambda r: FakeResponse(json_body=_body()))
    tracked, _, _ = make_clients(fake, is_async=False)
    tracked.chat.completions.create(
        model="gpt-4o-mini-search-preview", messages=MSG, web_search_options={"search_context_size": "high"}
    )
    _check(records)


def test_chat_search_model_fee_streamed(fake, records) -> None:
    fake.add("POST", "/chat/completions", lambda r: FakeResponse(sse=_sse()))
    tracked, _, _ = make_clients(fake, is_async=False)
    stream = tracked.chat.completions.create(
        model="gpt-4o-mini-search-preview",
        messages=MSG,
        stream=True,
        stream_options={"include_usage": True},
        web_search_options={"search_context_size": "high"},
    )
    for _ in stream:
        pass
    _check(records)


def test_plain_chat_model_has_no_tool_fee(fake, records) -> None:
    fake.add(
        "POST", "/chat/completions", lambda r: FakeResponse(json_body={**_body(), "model": "gpt-4o-mini"})
    )
    tracked, _, _ = make_clients(fake, is_async=False)
    tracked.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    (call,) = records.calls
    assert call.usage.tool_calls is None and call.cost is not None and call.cost.tool_usd is None

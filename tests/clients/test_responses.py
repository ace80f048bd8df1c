"""Drop-in client matrix, responses: sync/async x plain/raw/streaming-response (x stream where the API
allows). The caller's value equals a plain `openai` client's for the same bytes; one record each."""

from __future__ import annotations

import pytest

from tests.helpers.cases import RESPONSES
from tests.helpers.clients import Case, case_params, check_case_async, check_case_sync


@pytest.mark.parametrize(("case", "mode"), case_params(RESPONSES))
def test_sync_matches_plain_sdk_and_records_once(case: Case, mode: str, fake, records) -> None:
    check_case_sync(case, mode, fake, records)


@pytest.mark.parametrize(("case", "mode"), case_params(RESPONSES))
async def test_async_matches_plain_sdk_and_records_once(case: Case, mode: str, fake, records) -> None:
    await check_case_async(case, mode, fake, records)


def _response_body(**extra):
    from tests.helpers.fakeopenai import load_fixture

    body = dict(load_fixture("responses_gpt5_mini_reasoning")["response_body"])
    body.update(extra)
    return body


def test_compact(fake, records) -> None:
    from tests.helpers.clients import make_clients, normalize
    from tests.helpers.fakeopenai import FakeResponse

    body = {
        "id": "cmp_1",
        "created_at": 1764619600,
        "object": "response.compaction",
        "output": [],
        "usage": {
            "input_tokens": 900,
            "input_tokens_details": {"cached_tokens": 512},
            "output_tokens": 80,
            "output_tokens_details": {"reasoning_tokens": 40},
            "total_tokens": 980,
        },
    }
    fake.add(
        "POST",
        "/responses/compact",
        lambda r: FakeResponse(json_body=body, headers={"x-request-id": "req_c"}),
    )
    tracked, plain, _ = make_clients(fake, is_async=False)
    got = tracked.responses.compact(model="gpt-5-mini", previous_response_id="resp_1")
    assert normalize(got) == normalize(
        plain.responses.compact(model="gpt-5-mini", previous_response_id="resp_1")
    )
    (call,) = records.calls
    assert call.endpoint == "responses.compact" and call.model == "gpt-5-mini"
    assert call.usage.input_tokens == 900 and call.usage.cached_input_tokens == 512
    assert call.usage.output_tokens == 80 and call.usage.reasoning_tokens == 40
    assert call.request_ids == ["req_c"]


def test_method_level_raw_and_streaming_spellings(fake, records) -> None:
    from tests.helpers.clients import HAS_BETA_RESPONSES, fixture_responder, make_clients

    fake.add("POST", "/responses", fixture_responder("responses_gpt5_mini_reasoning"))
    tracked, plain, _ = make_clients(fake, is_async=False)
    for client in (tracked, plain):
        raw = client.responses.with_raw_response.create(model="gpt-5-mini", input="x")
        assert raw.parse().usage.input_tokens == 54
        with client.responses.with_streaming_response.create(model="gpt-5-mini", input="x") as r:
            r.read()
        if HAS_BETA_RESPONSES:  # older SDKs have no second Responses resource
            raw = client.beta.responses.with_raw_response.create(model="gpt-5-mini", input="x")
            raw.parse()
    calls = records.calls
    assert len(calls) == (3 if HAS_BETA_RESPONSES else 2)
    assert all(c.endpoint == "responses" and c.usage.output_tokens == 164 for c in calls)


def test_hosted_tool_usage_is_recorded(fake, records) -> None:
    # The image tool's own tokens (Response.tool_usage.image_gen) and the searches it reports
    # (web_search.num_requests) are recorded as tool usage and priced, apart from the model's tokens.
    from decimal import Decimal

    from tests.helpers.clients import make_clients
    from tests.helpers.fakeopenai import FakeResponse

    tool_usage = {
        "image_gen": {
            "input_tokens": 30,
            "input_tokens_details": {"image_tokens": 0, "text_tokens": 30},
            "output_tokens": 1056,
            "output_tokens_details": {"image_tokens": 1056, "text_tokens": 0},
            "total_tokens": 1086,
        },
        "web_search": {"num_requests": 2},
    }
    output = [
        {
            "type": "web_search_call",
            "id": "ws_1",
            "status": "completed",
            "action": {"type": "search", "query": "cat"},
        },
        {"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": "aGk=",
         "size": "1024x1024", "quality": "high"},
    ]
    tools = [{"type": "image_generation", "model": "gpt-image-1"}, {"type": "web_search"}]
    body = _response_body(tool_usage=tool_usage, output=output, tools=tools)
    fake.add("POST", "/responses", lambda r: FakeResponse(json_body=body))
    tracked, _, _ = make_clients(fake, is_async=False)
    tracked.responses.create(model="gpt-5-mini", input="draw a cat", tools=tools)
    (call,) = records.calls
    assert call.usage.tool_calls == {"web_search": 2, "image_generation": 1}
    image = (call.usage.tool_details or {})["image_generation"]
    assert image["tokens"] == {"input_tokens": 30, "image_input_tokens": 0, "output_tokens": 1056,
                               "image_output_tokens": 1056}
    # Two searches at $10 / 1k, and gpt-image-1's tokens: 30 x $5 + 1056 x $40 per 1M.
    assert call.cost is not None and call.cost_status == "priced"
    assert call.cost.tool_usd == Decimal("0.02") + Decimal("0.04239")

"""Recorded Responses bodies with hosted tools, priced exactly through a tracked client, streaming
and not (issue 19, item 1). Expected figures are computed by hand from pricing/openai.yaml's
current entries (calls are made now, so current prices apply)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.helpers.clients import make_clients
from tests.helpers.fakeopenai import FakeResponse, load_fixture

D = Decimal

# case -> (tool_calls, tool_details, token cost, tool cost)
CASES: dict[str, tuple[dict[str, int], dict[str, Any], Decimal, Decimal]] = {
    # gpt-4o-2024-08-06 $2.50 in / $10 out: 319 x 2.5 + 556 x 10 = 6357.5 per 1M.
    # web_search_preview on a non-reasoning model: $25 / 1k calls.
    "responses_gpt4o_web_search": (
        {"web_search_preview": 1},
        {"web_search_preview": {"search_context_size": "medium"}},
        D("0.0063575"),
        D("0.025"),
    ),
    # 870 x 2.5 + 30 x 10 = 2475 per 1M; file search $2.50 / 1k calls.
    "responses_gpt4o_file_search": ({"file_search": 1}, {}, D("0.002475"), D("0.0025")),
    # 1177 x 2.5 + 37 x 10 = 3312.5 per 1M.
    "responses_stream_gpt4o_file_search": ({"file_search": 1}, {}, D("0.0033125"), D("0.0025")),
    # gpt-5.5 $5 / $30: 1375 x 5 + 143 x 30 = 11165 per 1M; one 1g container, 5-minute minimum at
    # $0.0015/min = $0.0075.
    "responses_gpt55_code_interpreter": (
        {"code_interpreter": 1},
        {"code_interpreter": {"containers": 1, "memory_limit": "1g"}},
        D("0.011165"),
        D("0.0075"),
    ),
    # gpt-5 $1.25 / $10: 1872 x 1.25 + 1438 x 10 = 16720 per 1M; one gpt-image-1 high 1536x1024
    # image, $0.25.
    "responses_gpt5_image_generation": (
        {"image_generation": 1},
        {"image_generation": {"model": "gpt-image-1", "images": {"high/1536x1024": 1}}},
        D("0.01672"),
        D("0.25"),
    ),
    # 107 x 2.5 + 37 x 10 = 637.5 per 1M; MCP has no fee of its own.
    "responses_gpt4o_mcp": ({"mcp": 1}, {}, D("0.0006375"), D(0)),
    # 107 x 2.5 + 34 x 10 = 607.5 per 1M.
    "responses_stream_gpt4o_mcp": ({"mcp": 1}, {}, D("0.0006075"), D(0)),
}


def _call(fake: Any, name: str, *, is_async: bool = False) -> Any:
    case = load_fixture(name)
    # A header recorded as a list (access-control-expose-headers) is not one the fake can send.
    headers = {k: v for k, v in case["response_headers_subset"].items() if isinstance(v, str)}
    served = {**case, "response_headers_subset": headers}
    fake.add("POST", "/responses", lambda request: FakeResponse.from_case(served))
    return case, make_clients(fake, is_async=is_async)[0]


def _check(records: Any, name: str) -> None:
    tools, details, tokens, fee = CASES[name]
    (call,) = records.calls
    assert call.usage.tool_calls == tools
    for kind, detail in details.items():
        assert call.usage.tool_details is not None
        assert call.usage.tool_details[kind] == detail
    assert call.cost_status == "priced", call.pricing_rule
    assert call.cost is not None
    assert call.cost.tool_usd == fee
    assert call.cost.input_usd + call.cost.output_usd == tokens
    assert call.cost.total_usd == tokens + fee
    assert "tools: " in (call.pricing_rule or "")
    assert call.tool_source is None  # released once read


@pytest.mark.parametrize("name", sorted(CASES))
def test_hosted_tool_fixture_priced_exactly(name: str, fake, records) -> None:
    case, tracked = _call(fake, name)
    request = dict(case["request"])
    if request.get("stream"):
        with tracked.responses.create(**request) as stream:
            for _ in stream:
                pass
    else:
        tracked.responses.create(**request)
    _check(records, name)


@pytest.mark.parametrize("name", ["responses_stream_gpt4o_file_search", "responses_gpt4o_web_search"])
async def test_hosted_tool_fixture_priced_exactly_async(name: str, fake, records) -> None:
    case, tracked = _call(fake, name, is_async=True)
    request = dict(case["request"])
    if request.get("stream"):
        stream = await tracked.responses.create(**request)
        async for _ in stream:
            pass
    else:
        await tracked.responses.create(**request)
    _check(records, name)


def test_stream_helper_records_tool_use(fake, records) -> None:
    # `responses.stream()` reads the same events: the completed response's items are counted.
    case, tracked = _call(fake, "responses_stream_gpt4o_file_search")
    request = {k: v for k, v in case["request"].items() if k != "stream"}
    with tracked.responses.stream(**request) as stream:
        stream.get_final_response()
    _check(records, "responses_stream_gpt4o_file_search")


def test_operation_rolls_up_tool_counts_and_fees(fake, records) -> None:
    from tracked_openai import track
    from tracked_openai.mlflow.runs import run_fields

    case, tracked = _call(fake, "responses_gpt4o_file_search")
    with track("crs_analysis", "lookup"):
        tracked.responses.create(**case["request"])
        tracked.responses.create(**case["request"])
    (op,) = records.operations
    assert op.call_count == 2 and op.usage.tool_calls == {"file_search": 2}
    # Two calls of (tokens + $0.0025): the roll-up's cost includes the fees.
    assert op.cost_usd == 2 * (D("0.002475") + D("0.0025"))
    _, _, metrics, _ = run_fields(op)
    assert metrics["tool_calls_file_search"] == 2
    call_metrics = run_fields(records.calls[0])[2]
    assert call_metrics["tool_calls_file_search"] == 1 and call_metrics["tool_cost_usd"] == 0.0025

"""Hosted tool uses read from a Responses body's output items (issue 19, item 1)."""

from __future__ import annotations

from tracked_openai.capture.tools import apply_tools, hosted_tools
from tracked_openai.records import CallRecord, Usage


def test_items_counted_by_kind_with_what_the_fee_depends_on() -> None:
    output = [
        {"type": "reasoning"},
        {"type": "web_search_call", "action": {"type": "search"}},
        {"type": "web_search_call", "action": {"type": "open_page"}},
        {"type": "code_interpreter_call", "container_id": "cntr_a"},
        {"type": "code_interpreter_call", "container_id": "cntr_a"},
        {"type": "code_interpreter_call", "container_id": "cntr_b"},
        {"type": "function_call", "name": "mine"},  # the caller's own tool: not hosted
        {"type": "mcp_list_tools"},
        {"type": "hologram_call"},  # unknown kind: counted under its own name
        {"type": "message"},
    ]
    tools = [
        {"type": "web_search", "search_context_size": "high"},
        {"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "4g"}},
    ]
    calls, details = hosted_tools(output, tools) or ({}, {})
    assert calls == {"web_search": 2, "code_interpreter": 3, "hologram": 1}
    assert details["web_search"] == {"search_context_size": "high"}
    assert details["code_interpreter"] == {"containers": 2, "memory_limit": "4g"}


def test_num_requests_wins_when_larger() -> None:
    output = [{"type": "web_search_call"}]
    calls, _ = hosted_tools(
        output, [{"type": "web_search_preview_2025_03_11"}], {"web_search": {"num_requests": 3}}
    ) or ({}, {})
    assert calls == {"web_search_preview": 3}
    # All zeros (a body without searches) adds nothing.
    assert hosted_tools([{"type": "message"}], [], {"web_search": {"num_requests": 0}}) is None


def test_request_tools_are_the_fallback_and_source_is_released() -> None:
    rec = CallRecord(endpoint="responses", model="gpt-5")
    rec.tool_source = {"output": [{"type": "web_search_call"}]}  # a body that echoes no tools
    apply_tools(rec, "responses", {"tools": [{"type": "web_search_preview", "search_context_size": "low"}]})
    assert rec.usage.tool_calls == {"web_search_preview": 1}
    assert rec.usage.tool_details == {"web_search_preview": {"search_context_size": "low"}}
    assert rec.tool_source is None


def test_chat_search_model_counts_one_per_request() -> None:
    rec = CallRecord(
        endpoint="chat.completions",
        model="gpt-4o-search-preview",
        response_model="gpt-4o-search-preview-2025-03-11",
        usage=Usage(input_tokens=5),
    )
    apply_tools(rec, "chat.completions", {"web_search_options": {"search_context_size": "high"}})
    assert rec.usage.tool_calls == {"chat_search": 1}
    assert rec.usage.tool_details == {"chat_search": {"search_context_size": "high"}}
    plain = CallRecord(endpoint="chat.completions", model="gpt-4o", usage=Usage(input_tokens=5))
    apply_tools(plain, "chat.completions", {})
    assert plain.usage.tool_calls is None

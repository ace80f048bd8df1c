"""The recorded Responses bodies with hosted tools (issue 19, item 1) are whole and say what they hold.

Data checks only (their pricing: tests/clients/test_responses_hosted_tools.py). Each case names the
tool items its body must contain; a stream must parse event by event, in order, and end with the
same items and usage.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from tests.helpers.fakeopenai import load_fixture

# case -> the output item types the recorded body holds (reasoning/message items left out).
HOSTED_TOOL_CASES: dict[str, dict[str, int]] = {
    "responses_gpt4o_web_search": {"web_search_call": 1},
    "responses_gpt4o_file_search": {"file_search_call": 1},
    "responses_stream_gpt4o_file_search": {"file_search_call": 1},
    "responses_gpt55_code_interpreter": {"code_interpreter_call": 1},
    "responses_gpt5_image_generation": {"image_generation_call": 1},
    "responses_gpt4o_mcp": {"mcp_list_tools": 1, "mcp_call": 1},
    "responses_stream_gpt4o_mcp": {"mcp_list_tools": 1, "mcp_call": 1},
}
PROVENANCE = ("source_repo", "source_path", "source_commit", "source_license", "covers", "notes")


def _final_response(case: dict[str, Any]) -> dict[str, Any]:
    if "response_body" in case:
        body: dict[str, Any] = case["response_body"]
        return body
    events = [json.loads(line[len("data: "):]) for line in case["response_sse"].splitlines()
              if line.startswith("data: ")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    final: dict[str, Any] = events[-1]["response"]
    # The items streamed one by one are the ones the completed response lists.
    assert [item["id"] for item in done] == [item["id"] for item in final["output"]]
    return final


@pytest.mark.parametrize("name", sorted(HOSTED_TOOL_CASES))
def test_hosted_tool_fixture_is_whole(name: str) -> None:
    case = load_fixture(name)
    assert case["case_id"] == name
    assert all(case[field] for field in PROVENANCE), name
    assert len(case["source_commit"]) == 40
    assert case["endpoint"] == "/v1/responses" and case["status"] == 200
    response = _final_response(case)
    kinds = Counter(item["type"] for item in response["output"])
    tools = {kind: n for kind, n in kinds.items() if kind not in ("reasoning", "message")}
    assert tools == HOSTED_TOOL_CASES[name]
    usage = response["usage"]
    assert usage["input_tokens"] + usage["output_tokens"] == usage["total_tokens"] > 0
    # The README promises that usage objects are never edited: no truncation may touch them.
    assert not any("usage" in t for t in case["truncations"])

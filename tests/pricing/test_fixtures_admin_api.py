"""The documented Usage/Costs API bodies (issue 19, item 4) have the shape a fake admin API will serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[1] / "fixtures" / "admin_api"
CASES = sorted(p.stem for p in FOLDER.glob("*.json"))


def test_every_documented_endpoint_has_a_file() -> None:
    expected = {"costs"} | {f"usage_{kind}" for kind in (
        "completions", "embeddings", "moderations", "images", "audio_speeches", "audio_transcriptions",
        "vector_stores", "code_interpreter_sessions")}
    assert set(CASES) == expected


@pytest.mark.parametrize("name", CASES)
def test_documented_body_has_the_page_shape(name: str) -> None:
    case = json.loads((FOLDER / f"{name}.json").read_text())
    assert case["case_id"] == name and case["source_url"].startswith("https://platform.openai.com/docs/")
    assert case["endpoint"].startswith("/v1/organization/") and case["method"] == "GET"
    assert {"start_time", "page", "limit", "group_by"} <= set(case["documented_query_parameters"])
    body = case["response_body"]
    assert body["object"] == "page" and isinstance(body["has_more"], bool)
    # A cursor exactly when more pages follow.
    assert (body["next_page"] is not None) == body["has_more"]
    usage_kind = f"organization.usage.{name.removeprefix('usage_')}.result"
    kind = "organization.costs.result" if name == "costs" else usage_kind
    for bucket in body["data"]:
        assert bucket["object"] == "bucket" and bucket["end_time"] - bucket["start_time"] == 86_400
        assert [r["object"] for r in bucket["results"]] == [kind]
    assert case["documented_result_object"]["object"] == kind

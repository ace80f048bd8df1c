"""Records made by the library itself (tracked client over the fake OpenAI transport) and
MLflow read-backs shared by the traces tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import tracked_openai
from tests.helpers.fakeopenai import FakeOpenAI, FakeResponse
from tracked_openai import track
from tracked_openai.records import CallRecord, OperationRecord, Record
from tracked_openai.testing import TrackedRecords

SERVED_SUFFIX = "-2024-08-06"


def chat_served(request: Any) -> FakeResponse:
    """A chat answer from a dated snapshot of the requested model (the served model differs
    from the request's), 1000 prompt (200 cached) / 200 completion tokens."""
    body = json.loads(request.content)
    if body.get("messages", [{}])[-1].get("content") == "fail":
        return FakeResponse(
            status=400,
            json_body={"error": {"message": "bad request", "type": "invalid_request_error", "code": None}},
        )
    return FakeResponse(
        json_body={
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body["model"] + SERVED_SUFFIX,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 200,
                "total_tokens": 1200,
                "prompt_tokens_details": {"cached_tokens": 200},
            },
        }
    )


@dataclass
class Made:
    records: list[Record]

    @property
    def calls(self) -> list[CallRecord]:
        return [r for r in self.records if isinstance(r, CallRecord)]

    @property
    def operations(self) -> list[OperationRecord]:
        return [r for r in self.records if isinstance(r, OperationRecord)]

    def op(self, operation: str) -> OperationRecord:
        return next(o for o in self.operations if o.operation == operation)

    def calls_of(self, op: OperationRecord) -> list[CallRecord]:
        return [c for c in self.calls if c.parent_id == op.record_id]


def make_records(fake: FakeOpenAI, records: TrackedRecords, feature: str = "checkout") -> Made:
    """Through the library: ``place_order`` (2 calls, user tag ``team``), ``refund`` (1 call,
    1 call rejected with HTTP 400, then the block raises), 1 call outside any operation."""
    fake.add("POST", "/chat/completions", chat_served)
    client = tracked_openai.OpenAI(api_key="sk-test-hardcoded", http_client=fake.sync_client(), max_retries=0)
    hello: Any = [{"role": "user", "content": "hello"}]
    fail: Any = [{"role": "user", "content": "fail"}]
    try:
        with track(feature, "place_order", team="payments"):
            client.chat.completions.create(model="gpt-4o-mini", messages=hello, temperature=0.2)
            client.chat.completions.create(model="gpt-4o", messages=hello)
        try:
            with track(feature, "refund"):
                client.chat.completions.create(model="gpt-4o-mini", messages=hello)
                try:
                    client.chat.completions.create(model="gpt-4o-mini", messages=fail)
                except Exception:
                    pass
                raise ValueError("refund refused")
        except ValueError:
            pass
        with track(feature):
            pass  # (no calls: an operation with an empty trace body is still a trace)
        client.chat.completions.create(model="gpt-4o-mini", messages=hello)
    finally:
        client.close()
    return Made(records.records)


def cost_of(calls: Sequence[CallRecord]) -> float:
    return float(sum((c.cost.total_usd for c in calls if c.cost is not None), Decimal(0)))


def tokens_of(calls: Sequence[CallRecord], key: str) -> int:
    return sum(getattr(c.usage, key) or 0 for c in calls)


def read_traces(uri: str, experiment_id: str) -> dict[str, Any]:
    """Every trace of the experiment, by MLflow trace id, read with MLflow's own client."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found: dict[str, Any] = {}
    token: str | None = None
    while True:
        page = client.search_traces(locations=[experiment_id], max_results=500, page_token=token)
        for trace in page:
            assert trace.info.trace_id not in found, "a trace listed twice"
            found[trace.info.trace_id] = trace
        token = page.token
        if not token:
            return found


def check_traces(found: dict[str, Any], made: Made, feature: str = "checkout") -> None:
    """What MLflow holds is exactly our records: one trace per operation and per call outside
    any operation, one span per call, totals = the sums of our call records."""
    from tracked_openai.mlflow.traces import mlflow_trace_id

    top_calls = [c for c in made.calls if c.parent_id is None]
    assert len(found) == len(made.operations) + len(top_calls)
    for op in made.operations:
        trace = found[mlflow_trace_id(op.record_id)]
        calls = made.calls_of(op)
        spans = trace.data.spans
        assert len(spans) == 1 + len(calls)
        roots = [s for s in spans if s.parent_id is None]
        assert len(roots) == 1 and roots[0].span_type == "CHAIN"
        tags = trace.info.tags
        assert tags["feature"] == feature
        # The record id is the trace id and a root-span attribute, not a tag (see trace_tags).
        assert "record_id" not in tags and "kind" not in tags
        assert roots[0].attributes["tracked_openai.record_id"] == op.record_id
        assert tags.get("status") == (None if op.status == "success" else op.status)
        assert tags["mlflow.traceName"] == f"{feature}/{op.operation or op.function or 'operation'}"
        if op.operation:
            assert tags["operation"] == op.operation
        assert trace.info.state.value == ("ERROR" if op.status == "error" else "OK")
        if calls:
            usage = trace.info.token_usage
            assert usage["input_tokens"] == tokens_of(calls, "input_tokens")
            assert usage["output_tokens"] == tokens_of(calls, "output_tokens")
            assert usage["cache_read_input_tokens"] == tokens_of(calls, "cached_input_tokens")
            assert abs(trace.info.cost["total_cost"] - cost_of(calls)) < 1e-12
        by_record = {s.attributes["tracked_openai.record_id"]: s for s in spans}
        for call in calls:
            span = by_record[call.record_id]
            assert span.parent_id == roots[0].span_id
            assert span.span_type == "CHAT_MODEL"
            assert span.attributes["mlflow.llm.model"] == (call.response_model or call.model)
            if call.status == "success":
                assert call.response_model and call.response_model.endswith(SERVED_SUFFIX)
            assert span.attributes["gen_ai.request.model"] == call.model
            assert span.status.status_code.value == ("ERROR" if call.status == "error" else "OK")
            if call.cost is not None:
                assert span.attributes["mlflow.llm.cost"]["total_cost"] == float(call.cost.total_usd)
    for call in top_calls:
        trace = found[mlflow_trace_id(call.record_id)]
        assert len(trace.data.spans) == 1
        assert trace.data.spans[0].attributes["mlflow.llm.model"] == call.response_model
        assert trace.info.tags["feature"] == call.feature
        assert trace.info.token_usage["input_tokens"] == call.usage.input_tokens
        assert (
            call.cost is not None and abs(trace.info.cost["total_cost"] - float(call.cost.total_usd)) < 1e-12
        )

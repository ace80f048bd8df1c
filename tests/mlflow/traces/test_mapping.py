"""The records → spans mapping on its own (no store): ids, grouping, attributes, encoding."""

from __future__ import annotations

import gzip
from decimal import Decimal

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.helpers.fakeopenai import FakeOpenAI
from tracked_openai.mlflow import otlp
from tracked_openai.mlflow.traces import (
    mlflow_trace_id,
    span_id_for,
    trace_id_for,
    traces_of,
)
from tracked_openai.records import LATE_TAG, CallRecord, Cost, OperationRecord, Usage, new_record_id
from tracked_openai.testing import TrackedRecords

from .helpers import SERVED_SUFFIX, make_records


def test_ids_are_deterministic_and_valid() -> None:
    rid = new_record_id()
    assert trace_id_for(rid) == bytes.fromhex(rid)
    assert mlflow_trace_id(rid) == "tr-" + rid
    assert span_id_for(rid) == span_id_for(rid) and len(span_id_for(rid)) == 8
    # Ids that are not 32 hex digits (or are all zeros, invalid in OTLP) are hashed.
    for odd in ("0" * 32, "op-1", "F" * 32):
        tid = trace_id_for(odd)
        assert len(tid) == 16 and tid.strip(b"\0") and tid == trace_id_for(odd)
    assert trace_id_for("op-1") != trace_id_for("op-2")


def test_one_trace_per_operation_one_span_per_call(fake: FakeOpenAI, records: TrackedRecords) -> None:
    made = make_records(fake, records)
    traces = traces_of(made.records)
    top_calls = [c for c in made.calls if c.parent_id is None]
    assert len(traces) == len(made.operations) + len(top_calls)
    spans = [s for t in traces for s in t.spans]
    # every record is exactly one span
    assert sorted(s.attributes["tracked_openai.record_id"] for s in spans) == sorted(
        r.record_id for r in made.records
    )
    order = made.op("place_order")
    trace = next(t for t in traces if t.trace_id == trace_id_for(order.record_id))
    root, *children = trace.spans
    assert root.parent_span_id is None and root.name == "place_order"
    assert root.attributes["mlflow.traceTag.team"] == "payments"
    assert root.attributes["mlflow.traceTag.mlflow.traceName"] == "checkout/place_order"
    assert "mlflow.chat.tokenUsage" not in root.attributes and "mlflow.llm.cost" not in root.attributes
    assert len(children) == 2
    for span in children:
        assert span.parent_span_id == root.span_id
        assert span.attributes["mlflow.llm.model"].endswith(SERVED_SUFFIX)
        assert span.attributes["mlflow.chat.tokenUsage"] == {
            "input_tokens": 1000,
            "output_tokens": 200,
            "total_tokens": 1200,
            "cache_read_input_tokens": 200,
        }
        assert span.attributes["gen_ai.usage.input_tokens"] == 1000
        assert span.attributes["gen_ai.operation.name"] == "chat"
        assert span.attributes["tracked_openai.usage_source"] == "response"
    refund = next(t for t in traces if t.trace_id == trace_id_for(made.op("refund").record_id))
    assert refund.spans[0].status == "error"
    assert refund.spans[0].events[0].attributes["exception.type"] == "ValueError"
    assert "refund refused" in str(refund.spans[0].events[0].attributes["exception.stacktrace"])
    assert [s.status for s in refund.spans[1:]].count("error") == 1
    # No content unless captured.
    assert not any("mlflow.spanInputs" in s.attributes for s in spans)


def test_calls_carried_by_their_operation_and_late_calls() -> None:
    op = OperationRecord(
        record_id=new_record_id(), feature="f", operation="o", started_at=1.0, duration_s=2.0
    )
    carried = CallRecord(
        record_id=new_record_id(),
        parent_id=op.record_id,
        feature="f",
        endpoint="embeddings",
        model="text-embedding-3-small",
        usage=Usage(input_tokens=5),
        started_at=1.5,
        duration_s=0.1,
    )
    late = CallRecord(
        record_id=new_record_id(),
        parent_id=op.record_id,
        feature="f",
        endpoint="images.generate",
        tags={LATE_TAG: "true"},
        cost=Cost(Decimal("0.04"), Decimal(0), Decimal("0.04")),
        started_at=1.6,
        duration_s=5.0,
    )
    # The carried call is in the batch too (as the runs sink needs it): still one span.
    [trace] = traces_of([carried, op], calls_of={op.record_id: [carried]})
    assert [s.attributes["tracked_openai.record_id"] for s in trace.spans] == [
        op.record_id,
        carried.record_id,
    ]
    assert trace.spans[1].attributes["mlflow.spanType"] == "EMBEDDING"
    assert "mlflow.llm.cost" not in trace.spans[1].attributes  # unpriced: no cost, never 0
    # A late call alone joins its operation's trace under the operation's span.
    [alone] = traces_of([late])
    assert alone.trace_id == trace.trace_id
    assert alone.spans[0].parent_span_id == span_id_for(op.record_id)
    assert alone.spans[0].attributes["mlflow.spanType"] == "LLM"
    assert alone.spans[0].attributes["mlflow.llm.cost"] == {
        "input_cost": 0.04,
        "output_cost": 0.0,
        "total_cost": 0.04,
    }


def test_content_only_when_captured() -> None:
    call = CallRecord(
        record_id=new_record_id(),
        feature="f",
        endpoint="chat.completions",
        model="gpt-4o",
        content={"request": {"messages": [{"role": "user", "content": "hi"}]}, "response": ["hello"]},
    )
    [trace] = traces_of([call])
    assert trace.spans[0].attributes["mlflow.spanInputs"] == {"messages": [{"role": "user", "content": "hi"}]}
    assert trace.spans[0].attributes["mlflow.spanOutputs"] == ["hello"]


def test_encoding_roundtrip(fake: FakeOpenAI, records: TrackedRecords) -> None:
    made = make_records(fake, records)
    traces = traces_of(made.records)
    request = ExportTraceServiceRequest()
    request.ParseFromString(gzip.decompress(otlp._body(traces)))
    spans = list(request.resource_spans[0].scope_spans[0].spans)
    assert len(spans) == len(made.records)
    usage = next(a.value for s in spans for a in s.attributes if a.key == "mlflow.chat.tokenUsage")
    assert {kv.key: kv.value.int_value for kv in usage.kvlist_value.values}["input_tokens"] == 1000


def test_otlp_headers_and_endpoint() -> None:
    assert otlp.parse_headers("a=1, b%20c=x%3Dy,bad") == {"a": "1", "b c": "x=y"}
    assert otlp._traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert otlp._traces_url("http://collector:4318/v1/traces/") == "http://collector:4318/v1/traces"


def test_hosted_tools_on_the_call_span() -> None:
    call = CallRecord(
        record_id=new_record_id(),
        endpoint="responses",
        model="gpt-4o",
        usage=Usage(input_tokens=10, output_tokens=2, tool_calls={"web_search_preview": 2, "mcp": 1}),
        cost=Cost(Decimal("0.000045"), Decimal("0.00002"), Decimal("0.050065"), tool_usd=Decimal("0.05")),
        cost_status="priced",
    )
    ((span,),) = [t.spans for t in traces_of([call])]
    attrs = span.attributes
    assert attrs["tracked_openai.usage.tool_calls.web_search_preview"] == 2
    assert attrs["tracked_openai.usage.tool_calls.mcp"] == 1
    assert attrs["tracked_openai.tool_cost_usd"] == 0.05
    assert attrs["mlflow.llm.cost"]["total_cost"] == 0.050065  # type: ignore[index]

"""The trace tags we make MLflow store, pinned: MLflow's SQL store writes each trace tag of each
trace with a merge of its own (a SELECT and an INSERT: two round trips to PostgreSQL), and each
resource attribute as one more, which is what bounds ``traces`` mode on a PostgreSQL-backed
``mlflow server``. A tag added here must be worth two round trips per trace
(``benchmarks/trace_statements.py`` counts them)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from sqlalchemy import event

from tracked_openai.mlflow import otlp
from tracked_openai.mlflow.otlp import EmbeddedTransport
from tracked_openai.mlflow.traces import TRACE_TAG_PREFIX, mlflow_trace_id, traces_of
from tracked_openai.records import LATE_TAG, CallRecord, OperationRecord, Record, Usage

# What MLflow adds to every trace on its own, whatever we send.
MLFLOW_OWN = {"mlflow.artifactLocation", "mlflow.trace.spansLocation"}


def _operation(feature: str, status: str = "success", tags: dict[str, str] | None = None) -> list[Record]:
    op = OperationRecord(
        started_at=1_765_000_000.0, duration_s=0.4, feature=feature, operation="diagram_analysis",
        function="analyze", tags={"tracking_type": "gpt_vision", **(tags or {})}, status=status,
    )
    call = CallRecord(
        parent_id=op.record_id, started_at=1_765_000_000.01, duration_s=0.3, feature=feature,
        operation="diagram_analysis", function="analyze", endpoint="chat.completions", model="gpt-4o",
        usage=Usage(input_tokens=100, output_tokens=20), usage_source="response",
    )
    return [call, op]


def _tags_sent(records: list[Record]) -> dict[str, dict[str, Any]]:
    """Root span's ``mlflow.traceTag.*`` attributes per trace; call spans must send none."""
    out: dict[str, dict[str, Any]] = {}
    for trace in traces_of(records):
        for span in trace.spans:
            attrs = span.attributes
            tags = {k[len(TRACE_TAG_PREFIX) :]: v for k, v in attrs.items() if k.startswith(TRACE_TAG_PREFIX)}
            if span.parent_span_id is not None:
                assert not tags, "only a root span's tags become trace tags: anything else is waste"
            else:
                out[trace.mlflow_trace_id] = tags
    return out


def test_trace_tag_set_is_pinned() -> None:
    ok = _operation("pid_verification")
    failed = _operation("pid_verification", status="error")
    # A user tag named like one of the run tags traces leave to their spans cannot pass for ours.
    clash = _operation(
        "pid_verification", tags={"record_id": "mine", "kind": "mine", "function": "f", "status": "s"}
    )
    top = CallRecord(
        started_at=1_765_000_000.0, duration_s=0.2, feature="crs_analysis", endpoint="embeddings",
        model="text-embedding-3-small", tags={"team": "docs", LATE_TAG: "1"},
    )
    sent = _tags_sent([*ok, *failed, *clash, top])
    name = "pid_verification/diagram_analysis"
    base = {"tracking_type": "gpt_vision", "feature": "pid_verification", "operation": "diagram_analysis"}
    assert sent[mlflow_trace_id(ok[1].record_id)] == {**base, "mlflow.traceName": name}
    assert sent[mlflow_trace_id(failed[1].record_id)] == {**base, "status": "error", "mlflow.traceName": name}
    assert sent[mlflow_trace_id(clash[1].record_id)] == {**base, "mlflow.traceName": name}
    assert sent[mlflow_trace_id(top.record_id)] == {
        "team": "docs", "feature": "crs_analysis", "mlflow.traceName": "crs_analysis/embeddings",
    }


def test_no_resource_attributes_for_mlflow_but_service_name_for_other_receivers() -> None:
    traces = traces_of(_operation("f"))
    assert not otlp.encode(traces, service_name=None).resource_spans[0].resource.attributes
    generic = otlp.encode(traces).resource_spans[0].resource.attributes
    assert [(a.key, a.value.string_value) for a in generic] == [("service.name", otlp.SERVICE_NAME)]


def test_store_writes_only_these_tags_and_few_statements_per_trace(tmp_path: Path) -> None:
    """Through MLflow's own SQL store (what ``mlflow server`` runs): the stored tag set, and the
    statements per trace (21 before the tags were cut, 11 after, for this one-call operation)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    store = client._tracking_client.store
    exp = client.create_experiment("pinned-tags")
    transport = EmbeddedTransport(store)
    transport.send(exp, traces_of(_operation("warm-up")))  # first-use queries are not per trace

    n = 8
    records = [r for _ in range(n) for r in _operation("pid_verification")]
    statements: Counter[str] = Counter()

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        match = re.match(r"\s*(\w+)\s+(?:INTO\s+|FROM\s+)?(\w+)", statement, re.IGNORECASE)
        statements[" ".join(match.groups()).upper() if match else statement[:20]] += 1

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        transport.send(exp, traces_of(records))
    finally:
        event.remove(store.engine, "before_cursor_execute", count)

    op = records[1]
    assert isinstance(op, OperationRecord)
    stored = client.get_trace(mlflow_trace_id(op.record_id)).info.tags
    assert set(stored) == MLFLOW_OWN | {"tracking_type", "feature", "operation", "mlflow.traceName"}
    assert stored["mlflow.traceName"] == "pid_verification/diagram_analysis"  # a column: no merge
    # Per trace: the trace row (INSERT, UPDATE), MLflow's two own tags (one INSERT; one merge,
    # a SELECT and an INSERT) and a merge per tag of ours (3 here).
    assert statements["INSERT TRACE_TAGS"] == n * (2 + 3), statements
    assert statements["SELECT TRACE_TAGS"] == n * (1 + 3), statements
    assert sum(statements.values()) <= n * 11 + 12, statements  # + a few per request

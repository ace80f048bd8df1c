"""Fill an embedded SQLite MLflow store with many call runs, fast.

MLflow creates the store (its own schema and migrations) and the experiments; the runs go in as
plain SQL inserts into MLflow's tables, with the tags, metrics and params the MLflow sink writes
for each record (``run_fields``), so reports and ``reprice`` read them as the sink's own runs.
About 10k runs a second, against ~30 through ``MlflowClient``. Used by tests and by
``benchmarks/reports.py``.

``seed_traces`` does the same for traces: each operation's trace (its root span and its calls'
spans, from the traces sink's own mapping ``operation_trace``) as rows of MLflow's
``trace_info``, ``trace_tags`` and ``spans`` tables, each span's JSON as MLflow's store keeps
it (ids in base64, every attribute value JSON-encoded). With ``seed_calls`` for the operations
this is the default ``runs+traces`` store: operations are runs, their calls only spans.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from tracked_openai import reports
from tracked_openai.mlflow.traces import (
    LLM_COST,
    LLM_MODEL,
    LLM_PROVIDER,
    SPAN_TYPE,
    SpanData,
    operation_trace,
)
from tracked_openai.records import CallRecord, OperationRecord, Record
from tracked_openai.sinks.mlflow import run_fields

__all__ = ["seed_calls", "seed_traces"]


def _experiment(client: object, feature: str, cache: dict[str, int]) -> int:
    exp = cache.get(feature)
    if exp is None:
        name = reports.experiment_name(feature)
        found = client.get_experiment_by_name(name)  # type: ignore[attr-defined]
        exp = cache[feature] = int(
            found.experiment_id
            if found is not None
            else client.create_experiment(name, tags={reports.FEATURE_TAG: feature})  # type: ignore[attr-defined]
        )
    return exp


def seed_calls(db: Path, records: Iterable[Record]) -> dict[str, str]:
    """Write ``records`` (priced already) as top-level runs; returns ``{record_id: run_id}``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiments: dict[str, int] = {}
    runs, tags, metrics, params = [], [], [], []
    ids: dict[str, str] = {}
    for record in records:
        exp = _experiment(client, record.feature, experiments)
        name, t, m, p = run_fields(record)
        run_id = uuid.uuid4().hex
        ids[record.record_id] = run_id
        start = round(record.started_at * 1000)
        end = start + round((record.duration_s or 0) * 1000)
        status = "FINISHED" if record.status == "success" else "FAILED"
        runs.append((run_id, name, "LOCAL", "", "", "seed", status, start, end, "", "active", "", exp))
        tags.extend((k, v, run_id) for k, v in t.items())
        tags.append(("mlflow.runName", name, run_id))
        metrics.extend((k, v, end, 0, 0, run_id) for k, v in m.items())
        params.extend((k, v, run_id) for k, v in p.items())
    con = sqlite3.connect(db)
    with con:
        con.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id,"
            " status, start_time, end_time, source_version, lifecycle_stage, artifact_uri,"
            " experiment_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            runs,
        )
        con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tags)
        con.executemany(
            "INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)",
            metrics,
        )
        con.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)",
            metrics,
        )
        con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", params)
    con.close()
    return ids


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def _span_row(span: SpanData, trace_id: str, exp: int) -> tuple[object, ...]:
    attrs = {k: json.dumps(v) for k, v in span.attributes.items()}
    attrs["mlflow.traceRequestId"] = json.dumps(trace_id)
    content = {
        "trace_id": _b64(span.trace_id),
        "span_id": _b64(span.span_id),
        "parent_span_id": _b64(span.parent_span_id),
        "name": span.name,
        "start_time_unix_nano": span.start_ns,
        "end_time_unix_nano": span.end_ns,
        "events": [],
        "status": {"code": "STATUS_CODE_OK" if span.status == "ok" else "STATUS_CODE_ERROR", "message": ""},
        "attributes": attrs,
        "links": [],
    }
    cost = span.attributes.get(LLM_COST)
    costs = (
        [cost.get(k) for k in ("input_cost", "output_cost", "total_cost")] if isinstance(cost, dict) else []
    )
    return (
        trace_id,
        exp,
        span.span_id.hex(),
        span.parent_span_id.hex() if span.parent_span_id else None,
        span.name,
        span.attributes.get(SPAN_TYPE),
        "OK" if span.status == "ok" else "ERROR",
        span.start_ns,
        span.end_ns,
        json.dumps(content),
        *(costs or [None, None, None]),
        span.attributes.get(LLM_MODEL),
        span.attributes.get(LLM_PROVIDER),
    )


def seed_traces(db: Path, operations: Sequence[tuple[OperationRecord, Sequence[CallRecord]]]) -> None:
    """Write each operation's trace: its root span and one span per call (priced already)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiments: dict[str, int] = {}
    infos, tags, spans = [], [], []
    for op, calls in operations:
        exp = _experiment(client, op.feature, experiments)
        trace = operation_trace(op, calls)
        trace_id = trace.mlflow_trace_id
        start_ms = round(op.started_at * 1000)
        infos.append(
            (
                trace_id,
                exp,
                start_ms,
                round((op.duration_s or 0) * 1000),
                "OK",
                f"{op.feature}/{op.operation}",
            )
        )
        tags.extend((k, v, trace_id) for k, v in (("feature", op.feature), ("record_id", op.record_id)))
        tags.append(("mlflow.trace.spansLocation", "TRACKING_STORE", trace_id))
        spans.extend(_span_row(span, trace_id, exp) for span in trace.spans)
    con = sqlite3.connect(db)
    with con:
        con.executemany(
            "INSERT INTO trace_info (request_id, experiment_id, timestamp_ms, execution_time_ms, status,"
            " trace_name) VALUES (?,?,?,?,?,?)",
            infos,
        )
        con.executemany("INSERT INTO trace_tags (key, value, request_id) VALUES (?,?,?)", tags)
        con.executemany(
            "INSERT INTO spans (trace_id, experiment_id, span_id, parent_span_id, name, type, status,"
            " start_time_unix_nano, end_time_unix_nano, content, input_cost, output_cost, total_cost,"
            " model_name, model_provider) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            spans,
        )
    con.close()

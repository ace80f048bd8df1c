"""Reading our traces back for reports: each span we wrote as the run it stands for.

Reports fold runs (``tracked_openai.reports.feature_metrics``). In ``traces`` mode there are no
runs, and in ``runs+traces`` the calls made inside operations are spans only; so reports also
read the traces of the same experiments and turn each of our spans into a run-like object with
the tags and metrics the runs sink would have written for the same record (``kind``,
``feature``, ``operation``, ``status``, ``model``, ``prompt_tokens``, ``cost_usd``, …).

A record is counted once: reports skip a span whose record id they already counted as a run
(in ``runs+traces`` a call outside any operation, or a late call, is both). Spans that are not
ours (no ``tracked_openai.record_id``) are ignored.

Span attributes cannot be changed once written, but trace tags can: a repricing
(``tracked_openai.reprice``) stores a call span's new figures in one trace tag per call and
price table version, ``repriced/<version slug>/<record id>`` = compact JSON
(``{"cost_usd": ..., "input_cost_usd": ..., "output_cost_usd": ..., "cost_status": ...,
"pricing_version": ..., "pricing_rule": ...}``, a few hundred characters against MLflow's 8,000).
:func:`span_run` reads them back as the run metrics and tags a repricing writes on a call run
(``repriced/<slug>/cost_usd``, ``repriced/<slug>/cost_status``, ...), so a repriced span and a
repriced run read the same.

This pages through every trace of the window with its spans (MLflow's ``search_traces``); the
server-side trace-metrics aggregation is not used yet.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .names import TOOL_CALLS_PREFIX, TOOL_USAGE_TAG
from .traces import TOOL_USAGE_ATTR, USAGE_FIELDS

__all__ = [
    "REPRICED_PREFIX",
    "TraceRun",
    "iter_trace_runs",
    "repriced_tag_key",
    "span_run",
]

# Trace tags holding a repricing's figures for one call span (see the module docstring).
REPRICED_PREFIX = "repriced/"
_TOOL_COUNT = "tracked_openai.usage.tool_calls."

_OURS = "tracked_openai."
_PAGE = 500
# A call starts after its operation: traces are searched from a little before ``since``, and
# each span is then kept by its own start time, as runs are.
_SLACK_MS = 6 * 3600 * 1000


@dataclass
class _Info:
    run_id: str
    experiment_id: str
    start_time: int
    end_time: int | None
    status: str
    run_name: str = ""
    lifecycle_stage: str = "active"
    artifact_uri: str = ""


@dataclass
class _Data:
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class TraceRun:
    """A span of ours, shaped like the run the runs sink writes for the same record."""

    info: _Info
    data: _Data


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def repriced_tag_key(slug: str, record_id: str) -> str:
    """The trace tag holding the figures of ``record_id``'s call span repriced to ``slug``."""
    return f"{REPRICED_PREFIX}{slug}/{record_id}"


def _read_repriced(record_id: str, trace_tags: Mapping[str, str], data: _Data) -> None:
    """This call's repriced figures (trace tags) as the run metrics and tags of the same names."""
    suffix = "/" + record_id
    for key, value in trace_tags.items():
        if not (key.startswith(REPRICED_PREFIX) and key.endswith(suffix)):
            continue
        base = key[: -len(suffix)]
        try:
            figures = json.loads(value)
        except ValueError:
            continue
        if not isinstance(figures, dict):
            continue
        for name in ("cost_usd", "input_cost_usd", "output_cost_usd"):
            number = _num(figures.get(name))
            if number is not None:
                data.metrics[f"{base}/{name}"] = number
        for name in ("pricing_version", "pricing_rule", "cost_status"):
            text = figures.get(name)
            if isinstance(text, str) and text:
                data.tags[f"{base}/{name}"] = text


def span_run(span: Any, experiment_id: str, trace_tags: Mapping[str, str] | None = None) -> TraceRun | None:
    """The run-like view of one of our spans; ``None`` for spans that are not ours.

    ``trace_tags`` (its trace's tags) supply the figures a repricing stored for a call span."""
    attrs: dict[str, Any] = span.attributes or {}
    record_id = attrs.get(_OURS + "record_id")
    if not record_id:
        return None
    is_call = attrs.get("mlflow.spanType") != "CHAIN"
    tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    for key, value in attrs.items():
        if not key.startswith(_OURS):
            continue
        name = key[len(_OURS) :]
        if name.startswith("tag."):
            tags[name[4:]] = _text(value)
        elif name.startswith("param."):
            params[name[6:]] = _text(value)
        elif name.startswith("metric."):
            number = _num(value)
            if number is not None:
                metrics[name[7:]] = number
    for key, value in attrs.items():
        if key.startswith("mlflow.traceTag.") and not key.startswith("mlflow.traceTag.mlflow."):
            tags.setdefault(key[len("mlflow.traceTag.") :], _text(value))
    for name in (
        "record_id",
        "feature",
        "operation",
        "function",
        "status",
        "error_type",
        "cost_status",
        "pricing_version",
        "usage_source",
        "service_tier",
        "endpoint",
        "parent_feature",
        "pricing_rule",
        "stream",
        "stream_end",
        "http_status",
        "attempts",
    ):
        value = attrs.get(_OURS + name)
        if value is not None and value != "":
            tags[name] = _text(value)
    request_ids = attrs.get(_OURS + "request_ids")
    if request_ids:
        tags["request_ids"] = (
            ",".join(map(str, request_ids)) if isinstance(request_ids, list) else str(request_ids)
        )
    parent = attrs.get(_OURS + "parent_record_id")
    if parent:
        tags["parent_record_id"] = _text(parent)
    start_ms = span.start_time_ns // 1_000_000
    end_ms = span.end_time_ns // 1_000_000 if span.end_time_ns else None
    if end_ms is not None:
        metrics["execution_time"] = (span.end_time_ns - span.start_time_ns) / 1e9
    if is_call:
        tags["kind"] = "call"
        model = attrs.get("gen_ai.request.model")
        if model:
            tags["model"] = _text(model)
            params.setdefault("model", _text(model))
        served = attrs.get("gen_ai.response.model")
        if served:
            tags["response_model"] = _text(served)
        usage = attrs.get("mlflow.chat.tokenUsage") or {}
        if isinstance(usage, dict):
            for metric, key in (
                ("prompt_tokens", "input_tokens"),
                ("completion_tokens", "output_tokens"),
                ("total_tokens", "total_tokens"),
                ("cached_tokens", "cache_read_input_tokens"),
            ):
                number = _num(usage.get(key))
                if number is not None:
                    metrics[metric] = number
        for name in USAGE_FIELDS:
            number = _num(attrs.get(_OURS + "usage." + name))
            if number is not None:
                metrics[name] = number
        for key, value in attrs.items():
            if key.startswith(_TOOL_COUNT):
                number = _num(value)
                if number is not None:
                    metrics[TOOL_CALLS_PREFIX + key[len(_TOOL_COUNT) :]] = number
        tool_usage = attrs.get(TOOL_USAGE_ATTR)
        if isinstance(tool_usage, dict):  # a store may hand back the JSON text parsed
            tool_usage = json.dumps(tool_usage, sort_keys=True, separators=(",", ":"))
        if isinstance(tool_usage, str) and tool_usage:
            tags[TOOL_USAGE_TAG] = tool_usage
        provider = attrs.get("mlflow.llm.provider")
        if provider:
            tags["provider"] = _text(provider)
        cost = attrs.get("mlflow.llm.cost")
        if isinstance(cost, dict) and _num(cost.get("total_cost")) is not None:
            metrics["cost_usd"] = float(cost["total_cost"])
            for metric, key in (("input_cost_usd", "input_cost"), ("output_cost_usd", "output_cost")):
                number = _num(cost.get(key))
                if number is not None:
                    metrics[metric] = number
        attempts = _num(attrs.get(_OURS + "attempts"))
        if attempts is not None:
            metrics["attempts"] = attempts
    else:
        tags["kind"] = "operation"
        for name in ("call_count", "cost_usd", "unpriced_calls"):
            number = _num(attrs.get(_OURS + name))
            if number is not None:
                metrics[name] = number
    ok = tags.get("status", "success") == "success"
    info = _Info(
        run_id=span.trace_id,
        experiment_id=experiment_id,
        start_time=start_ms,
        end_time=end_ms,
        status="FINISHED" if ok else "FAILED",
        run_name=span.name,
    )
    data = _Data(tags, metrics, params)
    if is_call and trace_tags:
        _read_repriced(str(record_id), trace_tags, data)
    return TraceRun(info, data)


def iter_trace_runs(
    client: Any,
    experiment_ids: Sequence[str],
    since: datetime | None = None,
    until: datetime | None = None,
    operation: str | None = None,
    page_size: int = _PAGE,
) -> Iterator[TraceRun]:
    """Every span of ours in the traces of ``experiment_ids`` started in ``[since, until)``
    (and of ``operation`` when given), as runs, one page of traces at a time."""
    since_ms = int(since.timestamp() * 1000) if since is not None else None
    until_ms = int(until.timestamp() * 1000) if until is not None else None
    parts = []
    if since_ms is not None:
        parts.append(f"trace.timestamp_ms >= {since_ms - _SLACK_MS}")
    if until_ms is not None:
        parts.append(f"trace.timestamp_ms < {until_ms}")
    if operation:
        parts.append("tags.operation = '{}'".format(operation.replace("'", "\\'")))
    for experiment_id in experiment_ids:
        token: str | None = None
        while True:
            page = client.search_traces(
                locations=[experiment_id],
                filter_string=" AND ".join(parts) or None,
                max_results=min(page_size, _PAGE),
                page_token=token,
            )
            for trace in page:
                for span in trace.data.spans:
                    run = span_run(span, experiment_id, trace.info.tags)
                    if run is None:
                        continue
                    start = run.info.start_time
                    if since_ms is not None and start < since_ms:
                        continue
                    if until_ms is not None and start >= until_ms:
                        continue
                    if operation and run.data.tags.get("operation") != operation:
                        continue
                    yield run
            token = page.token
            if not token:
                break


def newest_span_runs(client: Any, experiment_ids: Sequence[str], limit: int) -> list[TraceRun]:
    """Our spans in the newest ``limit`` traces of each experiment, as runs: enough to hold the
    newest ``limit`` records (a trace starts no later than any of its spans)."""
    found: list[TraceRun] = []
    for experiment_id in experiment_ids:
        page = client.search_traces(
            locations=[experiment_id], max_results=min(limit, _PAGE), order_by=["timestamp_ms DESC"]
        )
        for trace in page:
            for span in trace.data.spans:
                run = span_run(span, experiment_id, trace.info.tags)
                if run is not None:
                    found.append(run)
    return found

"""Records as MLflow traces: the mapping from our records to spans, above any transport.

* An operation (a ``track`` block or a decorated call) is one trace: a root span for the
  operation and one child span per call made directly inside it. A call outside any operation
  is a trace of one span. A call that finished after its operation was exported (``LATE_TAG``)
  is still a span of its operation's trace, sent on its own: MLflow recomputes the trace's
  totals over all of its spans, and the span id is the same on every attempt, so it is never
  counted twice. An operation nested in another is a trace of its own (its calls are its spans),
  so each call is a span of exactly one trace.
* Trace and span ids are derived from record ids (a record id is 32 hex digits, which is
  exactly an OpenTelemetry trace id; MLflow names the trace ``tr-<trace id in hex>``), so a
  retried or replayed batch overwrites the same spans instead of making a second trace.
* Call spans carry MLflow's attributes (``mlflow.spanType``, ``mlflow.chat.tokenUsage``,
  ``mlflow.llm.cost`` with our exact cost, ``mlflow.llm.model`` = the served model,
  ``mlflow.llm.provider``), the OpenTelemetry GenAI semantic-convention names so any OTLP
  backend understands them, and ours (``tracked_openai.*``). The root span carries no usage or
  cost of its own: the trace's totals are the sum of its call spans.
* Root-span attributes ``mlflow.traceTag.<key>`` become trace tags in MLflow's store (feature,
  operation, the user's tags, the status when not ``success``, the trace name
  ``feature/operation``): few, as each costs the store two round trips (:func:`trace_tags`).
* Prompts and outputs become span inputs/outputs only when the record holds them
  (``capture_content``).

The result is plain data (:class:`TraceData`, :class:`SpanData`); ``tracked_openai.mlflow.otlp``
encodes it as OTLP protobuf for ``mlflow server`` (or any OTLP receiver) and for the embedded
store's ``log_spans``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from ..records import LATE_TAG, CallRecord, OperationRecord, Record, tag_value

__all__ = [
    "TOOL_USAGE_ATTR",
    "SpanData",
    "SpanEvent",
    "TraceData",
    "call_span",
    "call_trace",
    "mlflow_trace_id",
    "operation_trace",
    "span_id_for",
    "trace_id_for",
    "trace_tags",
    "traces_of",
]

# MLflow's span attribute names (mlflow.tracing.constant.SpanAttributeKey), typed once here.
SPAN_TYPE = "mlflow.spanType"
SPAN_INPUTS = "mlflow.spanInputs"
SPAN_OUTPUTS = "mlflow.spanOutputs"
SPAN_FUNCTION = "mlflow.spanFunctionName"
CHAT_USAGE = "mlflow.chat.tokenUsage"
LLM_COST = "mlflow.llm.cost"
LLM_MODEL = "mlflow.llm.model"
LLM_PROVIDER = "mlflow.llm.provider"
TRACE_TAG_PREFIX = "mlflow.traceTag."
TRACE_NAME_TAG = "mlflow.traceName"
# Tags runs carry that traces leave to their spans (see trace_tags), and the late-call marker.
_RESERVED_TAGS = frozenset({"record_id", "kind", "function", "status", LATE_TAG})

# OpenTelemetry GenAI semantic conventions (gen_ai.*).
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_PROVIDER = "gen_ai.provider.name"
GEN_AI_SYSTEM = "gen_ai.system"  # the older name of the provider attribute, still widely read
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_SERVICE_TIER = "gen_ai.openai.response.service_tier"
GEN_AI_RESPONSE_IDS = "gen_ai.response.id"

OURS = "tracked_openai."
# The hosted tools a call used and what each fee depended on (search context size, image size,
# ...), as the run's ``tool_usage`` tag: a repricing from spans needs more than the counts.
TOOL_USAGE_ATTR = OURS + "tool_usage"
# Usage fields beyond tokens a call span carries as ``tracked_openai.usage.<field>`` (read back by
# trace_reports under the run metric of the same name).
USAGE_FIELDS = (
    "reasoning_tokens",
    "audio_input_tokens",
    "audio_output_tokens",
    "image_input_tokens",
    "image_output_tokens",
    "cache_write_tokens",
    "images",
    "seconds",
    "characters",
)

# Our endpoint name -> (MLflow span type, gen_ai.operation.name). Images and audio have no span
# type of their own in MLflow: LLM (a generative model call) is the closest.
_ENDPOINT_KINDS: dict[str, tuple[str, str]] = {
    "chat.completions": ("CHAT_MODEL", "chat"),
    "responses": ("CHAT_MODEL", "chat"),
    "responses.compact": ("CHAT_MODEL", "chat"),
    "completions": ("LLM", "text_completion"),
    "embeddings": ("EMBEDDING", "embeddings"),
}
_DEFAULT_KIND = ("LLM", "generate_content")
_OPERATION_SPAN_TYPE = "CHAIN"

# Request params with a GenAI semantic-convention name.
_GEN_AI_PARAMS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "max_output_tokens": "gen_ai.request.max_tokens",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "n": "gen_ai.request.choice.count",
}

# OTel provider names (gen_ai.provider.name well-known values).
_PROVIDERS = {"openai": "openai", "azure": "azure.ai.openai"}

# MLflow's limits on trace tags (mlflow.utils.validation): longer values are cut, not rejected.
_MAX_TAG_KEY = 250
_MAX_TAG_VALUE = 8000
_MAX_TEXT = 8000

_HEX32 = re.compile(r"[0-9a-f]{32}")

AttributeValue = str | int | float | bool | Mapping[str, Any] | Sequence[Any]


@dataclass(slots=True, frozen=True)
class SpanEvent:
    """A timestamped event on a span (an error is an ``exception`` event, as in OpenTelemetry)."""

    name: str
    time_ns: int
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


@dataclass(slots=True)
class SpanData:
    """One span, transport-neutral. Ids are raw bytes (16 for traces, 8 for spans)."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes | None
    name: str
    start_ns: int
    end_ns: int
    status: Literal["ok", "error"]
    status_message: str = ""
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)


@dataclass(slots=True)
class TraceData:
    """The spans to send together for one trace (all of a new trace's spans, or the span of a
    late call joining its operation's trace), its feature (which experiment it goes to) and the
    records it was made from (to find the one a receiver rejects)."""

    trace_id: bytes
    feature: str
    spans: list[SpanData]
    record_ids: tuple[str, ...]

    @property
    def mlflow_trace_id(self) -> str:
        return "tr-" + self.trace_id.hex()


# -- ids -------------------------------------------------------------------------------------------
def trace_id_for(record_id: str) -> bytes:
    """The trace id of the trace rooted at ``record_id``: the id itself when it is 32 hex digits
    (our ids are), else 16 bytes of its BLAKE2b hash. Never all zeros (invalid in OTLP)."""
    if _HEX32.fullmatch(record_id) and record_id.strip("0"):
        return bytes.fromhex(record_id)
    digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=16, person=b"to-trace").digest()
    return digest if digest.strip(b"\0") else b"\0" * 15 + b"\1"


def span_id_for(record_id: str) -> bytes:
    """The span id of ``record_id``'s span: 8 bytes of a BLAKE2b hash, never all zeros."""
    digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=8, person=b"to-span").digest()
    return digest if digest.strip(b"\0") else b"\0" * 7 + b"\1"


def mlflow_trace_id(record_id: str) -> str:
    """The MLflow trace id (``tr-<hex>``) of the trace rooted at ``record_id`` (an operation, or
    a call outside any operation)."""
    return "tr-" + trace_id_for(record_id).hex()


# -- helpers ---------------------------------------------------------------------------------------
def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _times(record: Record) -> tuple[int, int]:
    start = _ns(record.started_at)
    return start, start + max(0, _ns(record.duration_s or 0.0))


def _usd(value: Decimal) -> float:
    return float(value)


def _plain(value: Any) -> AttributeValue:
    """A param value as an attribute value: scalars kept, anything else as text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return tag_value(value)[:_MAX_TEXT]


def _put(attrs: dict[str, AttributeValue], key: str, value: Any) -> None:
    if value is not None and value != "":
        attrs[key] = value


def _error_event(record: Record, time_ns: int) -> SpanEvent:
    attrs: dict[str, AttributeValue] = {"exception.type": record.error_type or "Error"}
    if record.error_message:
        attrs["exception.message"] = record.error_message
    traceback = getattr(record, "traceback", None)
    if traceback:
        attrs["exception.stacktrace"] = traceback
    return SpanEvent("exception", time_ns, attrs)


def _status(record: Record) -> tuple[Literal["ok", "error"], str]:
    if record.status != "success":  # an error, or a call a budget blocked (the caller got an exception)
        return "error", f"{record.error_type or 'Error'}: {record.error_message or ''}".rstrip(": ")[
            :_MAX_TEXT
        ]
    return "ok", ""


def _tag_attrs(attrs: dict[str, AttributeValue], tags: Mapping[str, Any]) -> None:
    for key, value in tags.items():
        if value is None or value == "":
            continue
        attrs[TRACE_TAG_PREFIX + str(key)[:_MAX_TAG_KEY]] = tag_value(value)[:_MAX_TAG_VALUE]


def trace_tags(record: Record, name: str) -> dict[str, str]:
    """The trace tags of the trace rooted at ``record``: the user's tags, ``feature``,
    ``operation``, ``status`` when not ``success``, and the trace name.

    Few on purpose: MLflow's SQL store writes each trace tag with a merge of its own (a SELECT
    and an INSERT, two round trips to the database per tag and trace; the trace name goes in a
    column of the trace row instead, for free), which bounds ``traces`` mode on PostgreSQL
    (``benchmarks/trace_statements.py``). What the other tags said is on the spans, where our
    readers find it: the record id is the trace id and ``tracked_openai.record_id``, the kind is
    the root span's type (``CHAIN`` for an operation), the function is the span's
    ``mlflow.spanFunctionName``/``tracked_openai.function``, and the status is the trace's state
    (``ERROR`` unless ``success``) and ``tracked_openai.status``; ``status`` stays a tag when it
    is not ``success`` (an error, a budget block) so those traces can be found by tag.
    The user's tags come first, ours after, so ours win on a clash (as on runs); a user tag with
    the name of a tag we no longer write is dropped, so it cannot pass for ours."""
    tags: dict[str, str] = {k: v for k, v in record.tags.items() if k not in _RESERVED_TAGS}
    tags["feature"] = record.feature
    if record.operation:
        tags["operation"] = record.operation
    if record.status != "success":
        tags["status"] = record.status
    tags[TRACE_NAME_TAG] = name
    return tags


# -- spans -----------------------------------------------------------------------------------------
def call_span(call: CallRecord, trace_id: bytes, parent_span_id: bytes | None) -> SpanData:
    """The span of one call record."""
    span_type, gen_ai_op = _ENDPOINT_KINDS.get(call.endpoint, _DEFAULT_KIND)
    served = call.response_model or call.model
    attrs: dict[str, AttributeValue] = {SPAN_TYPE: span_type}
    usage = call.usage
    if usage.input_tokens is not None or usage.output_tokens is not None:
        token_usage: dict[str, int] = {
            "input_tokens": usage.input_tokens or 0,
            "output_tokens": usage.output_tokens or 0,
            "total_tokens": usage.total_tokens or 0,
        }
        if usage.cached_input_tokens:
            token_usage["cache_read_input_tokens"] = usage.cached_input_tokens
        if usage.cache_write_tokens:
            token_usage["cache_creation_input_tokens"] = usage.cache_write_tokens
        attrs[CHAT_USAGE] = token_usage
    if call.cost is not None:
        # Ours, exactly: MLflow computes a cost of its own only when this is absent.
        attrs[LLM_COST] = {
            "input_cost": _usd(call.cost.input_usd),
            "output_cost": _usd(call.cost.output_usd),
            "total_cost": _usd(call.cost.total_usd),
        }
    _put(attrs, LLM_MODEL, served)
    _put(attrs, LLM_PROVIDER, call.provider)

    _put(attrs, GEN_AI_OPERATION, gen_ai_op)
    provider = _PROVIDERS.get(call.provider, call.provider)
    _put(attrs, GEN_AI_PROVIDER, provider)
    _put(attrs, GEN_AI_SYSTEM, provider)
    _put(attrs, GEN_AI_REQUEST_MODEL, call.model)
    _put(attrs, GEN_AI_RESPONSE_MODEL, call.response_model)
    _put(attrs, GEN_AI_INPUT_TOKENS, usage.input_tokens)
    _put(attrs, GEN_AI_OUTPUT_TOKENS, usage.output_tokens)
    _put(attrs, GEN_AI_CACHE_READ_TOKENS, usage.cached_input_tokens)
    _put(attrs, GEN_AI_SERVICE_TIER, call.service_tier)
    if call.request_ids:
        attrs[GEN_AI_RESPONSE_IDS] = call.request_ids[-1]
    for key, value in call.params.items():
        semconv = _GEN_AI_PARAMS.get(key)
        if semconv is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            attrs.setdefault(semconv, value)

    _put(attrs, OURS + "record_id", call.record_id)
    _put(attrs, OURS + "parent_record_id", call.parent_id)
    _put(attrs, OURS + "feature", call.feature)
    _put(attrs, OURS + "operation", call.operation)
    _put(attrs, OURS + "function", call.function)
    _put(attrs, OURS + "endpoint", call.endpoint)
    _put(attrs, OURS + "status", call.status)
    _put(attrs, OURS + "cost_status", call.cost_status)
    _put(attrs, OURS + "pricing_version", call.pricing_version)
    _put(attrs, OURS + "pricing_rule", call.pricing_rule)
    _put(attrs, OURS + "usage_source", call.usage_source)
    _put(attrs, OURS + "service_tier", call.service_tier)
    _put(attrs, OURS + "http_status", call.http_status)
    _put(attrs, OURS + "attempts", call.attempts)
    _put(attrs, OURS + "stream", call.stream)
    _put(attrs, OURS + "stream_end", call.stream_end)
    _put(attrs, OURS + "error_type", call.error_type)
    if call.request_ids:
        attrs[OURS + "request_ids"] = list(call.request_ids)
    if call.cost is not None:
        attrs[OURS + "cost_usd"] = _usd(call.cost.total_usd)
        if call.cost.tool_usd is not None:
            attrs[OURS + "tool_cost_usd"] = _usd(call.cost.tool_usd)
    for kind, count in (usage.tool_calls or {}).items():
        attrs[OURS + "usage.tool_calls." + kind] = count
    if usage.tool_calls:
        tool_usage = {"tool_calls": usage.tool_calls, "tool_details": usage.tool_details or {}}
        attrs[TOOL_USAGE_ATTR] = json.dumps(tool_usage, sort_keys=True, separators=(",", ":"))[:_MAX_TEXT]
    for key in USAGE_FIELDS:
        _put(attrs, OURS + "usage." + key, getattr(usage, key))
    for key, value in call.params.items():
        if value is not None:
            attrs[OURS + "param." + key] = _plain(value)
    for key, value in call.tags.items():
        _put(attrs, OURS + "tag." + key, tag_value(value)[:_MAX_TAG_VALUE])
    if call.content:
        request = call.content.get("request")
        if request is not None:
            attrs[SPAN_INPUTS] = request
        response = call.content.get("response")
        if response is not None:
            attrs[SPAN_OUTPUTS] = response

    start, end = _times(call)
    status, message = _status(call)
    events = [_error_event(call, end)] if status == "error" else []
    name = " ".join(part for part in (call.endpoint or "call", served) if part)
    return SpanData(
        trace_id=trace_id,
        span_id=span_id_for(call.record_id),
        parent_span_id=parent_span_id,
        name=name,
        start_ns=start,
        end_ns=end,
        status=status,
        status_message=message,
        attributes=attrs,
        events=events,
    )


def _operation_span(op: OperationRecord, trace_id: bytes, trace_name: str) -> SpanData:
    attrs: dict[str, AttributeValue] = {SPAN_TYPE: _OPERATION_SPAN_TYPE}
    _put(attrs, SPAN_FUNCTION, op.function)
    _put(attrs, OURS + "record_id", op.record_id)
    _put(attrs, OURS + "parent_record_id", op.parent_id)
    _put(attrs, OURS + "parent_feature", op.parent_feature)
    _put(attrs, OURS + "feature", op.feature)
    _put(attrs, OURS + "operation", op.operation)
    _put(attrs, OURS + "function", op.function)
    _put(attrs, OURS + "status", op.status)
    _put(attrs, OURS + "error_type", op.error_type)
    # The roll-up as figures of the operation (nested operations' calls included, as on its
    # run), not as MLflow usage/cost: the trace's totals come from its call spans only.
    attrs[OURS + "call_count"] = op.call_count
    if op.cost_usd is not None:
        attrs[OURS + "cost_usd"] = _usd(op.cost_usd)
    if op.unpriced_calls:
        attrs[OURS + "unpriced_calls"] = op.unpriced_calls
    if op.models:
        attrs[OURS + "models"] = list(op.models)
    for key, value in op.metrics.items():
        attrs[OURS + "metric." + key] = value
    for key, value in op.params.items():
        if value is not None:
            attrs[OURS + "param." + key] = _plain(value)
    _tag_attrs(attrs, trace_tags(op, trace_name))
    start, end = _times(op)
    status, message = _status(op)
    events = [_error_event(op, end)] if status == "error" else []
    return SpanData(
        trace_id=trace_id,
        span_id=span_id_for(op.record_id),
        parent_span_id=None,
        name=op.operation or op.function or "operation",
        start_ns=start,
        end_ns=end,
        status=status,
        status_message=message,
        attributes=attrs,
        events=events,
    )


# -- traces ----------------------------------------------------------------------------------------
def operation_trace(op: OperationRecord, calls: Iterable[CallRecord] = ()) -> TraceData:
    """The trace of an operation: its root span and a span per call made directly inside it."""
    trace_id = trace_id_for(op.record_id)
    name = f"{op.feature}/{op.operation or op.function or 'operation'}"
    root = _operation_span(op, trace_id, name)
    spans = [root]
    ids = [op.record_id]
    seen: set[str] = set()
    for call in calls:
        if call.record_id in seen:
            continue
        seen.add(call.record_id)
        spans.append(call_span(call, trace_id, root.span_id))
        ids.append(call.record_id)
    return TraceData(trace_id, op.feature, spans, tuple(ids))


def call_trace(call: CallRecord) -> TraceData:
    """A call's own trace: one root span when it ran outside any operation; else its span
    alone, joining its operation's trace (a late call, or one whose operation is sent apart)."""
    if call.parent_id is None:
        trace_id = trace_id_for(call.record_id)
        span = call_span(call, trace_id, None)
        name = f"{call.feature}/{call.endpoint or 'call'}"
        _tag_attrs(span.attributes, trace_tags(call, name))
        return TraceData(trace_id, call.feature, [span], (call.record_id,))
    trace_id = trace_id_for(call.parent_id)
    span = call_span(call, trace_id, span_id_for(call.parent_id))
    return TraceData(trace_id, call.feature, [span], (call.record_id,))


def traces_of(
    records: Sequence[Record], calls_of: Mapping[str, Sequence[CallRecord]] | None = None
) -> list[TraceData]:
    """The traces of a batch of records, in order of first appearance.

    An operation's trace holds its call spans: ``calls_of[op.record_id]`` when given (the
    calls an operation carries), plus the calls of the batch made directly inside it. Any other
    call is its own trace (:func:`call_trace`). Each call record becomes one span, once.
    """
    ops = {r.record_id: r for r in records if isinstance(r, OperationRecord)}
    grouped: dict[str, list[CallRecord]] = {op_id: list((calls_of or {}).get(op_id, ())) for op_id in ops}
    out: list[TraceData] = []
    for record in records:
        if isinstance(record, CallRecord) and record.parent_id in grouped:
            grouped[record.parent_id].append(record)
    placed = {c.record_id for calls in grouped.values() for c in calls}
    for record in records:
        if isinstance(record, OperationRecord):
            out.append(operation_trace(record, grouped[record.record_id]))
        elif isinstance(record, CallRecord) and record.record_id not in placed:
            out.append(call_trace(record))
    return out

"""The run mapping: what one record becomes in MLflow (run name, tags, metrics, params).

Reports, the CLI and the REST API read exactly these names (``docs/mlflow-mapping.md``); the
names shared with them are in ``names``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from ..records import CallRecord, OperationRecord, Record, tag_value
from .names import (
    CALL_COUNT,
    COST_STATUS_TAG,
    COST_USD,
    EXECUTION_TIME,
    KIND_TAG,
    MODEL_TAG,
    OPERATION_TAG,
    PARENT_FEATURE_TAG,
    PARENT_RECORD_TAG,
    RECORD_ID_TAG,
    RESPONSE_MODEL_TAG,
    RUN_FEATURE_TAG,
    STATUS_TAG,
    TOKEN_METRICS,
    TOOL_CALLS_PREFIX,
    TOOL_COST_USD,
    TOOL_USAGE_TAG,
    USAGE_SOURCE_TAG,
    finite_number,
    metric_name,
)

if TYPE_CHECKING:
    pass

__all__ = ["run_fields"]

# MLflow server limits per log_batch request and per value (mlflow.utils.validation).
MAX_METRICS = 1000
MAX_PARAMS = 100
MAX_TAGS = 100
MAX_ENTITIES = 1000
_MAX_TAG_VALUE = 8000
_MAX_PARAM_VALUE = 6000
_MAX_KEY = 250

_BAD_KEY = re.compile(r"[^\w\-. /]")
_LRU_SIZE = 50_000
_WINDOW_GAP_MS = 5_000


def _key(name: str) -> str:
    # MLflow accepts alphanumerics, underscores, dashes, periods, spaces and slashes in keys.
    return _BAD_KEY.sub("_", str(name))[:_MAX_KEY] or "_"


def ms(seconds: float) -> int:
    return round(seconds * 1000)


# Usage kinds a response reports as 0 when they do not apply (a text chat says "0 audio
# tokens"): written only when non-zero. Cached and reasoning tokens keep their 0, which is an
# answer there (no cache hit, no reasoning) that hit rates and averages need.
_ZERO_MEANS_ABSENT = (
    "audio_input_tokens",
    "audio_output_tokens",
    "image_input_tokens",
    "image_output_tokens",
)
_SEP = " · "
_MAX_NAME_MODELS = 80  # characters of the model list shown in an operation run's name


@functools.cache
def _source_tags() -> tuple[tuple[str, str], ...]:
    """``mlflow.user``, ``mlflow.source.name`` and ``mlflow.source.type`` as MLflow's own runs
    get them (its default run context: the script or entry point, the user), once per process."""
    try:
        from mlflow.tracking.context.default_context import DefaultRunContext

        tags = {str(k): str(v) for k, v in DefaultRunContext().tags().items()}  # type: ignore[no-untyped-call]
    except Exception:  # an MLflow without that module: the same facts, read here
        import getpass
        import sys

        try:
            user = getpass.getuser()
        except Exception:
            user = "unknown"
        source = sys.argv[0] if sys.argv and sys.argv[0] else "<console>"
        tags = {"mlflow.user": user, "mlflow.source.name": source, "mlflow.source.type": "LOCAL"}
    return tuple(tags.items())


def _short_id(record_id: str) -> str:
    # Six hex digits that tell runs apart in a run table; derived from the record id, so a
    # re-exported record keeps its name.
    return hashlib.blake2s(record_id.encode(), digest_size=3).hexdigest()


def run_fields(
    record: Record,
) -> tuple[str, dict[str, str], dict[str, float], dict[str, str]]:
    """``(run_name, tags, metrics, params)`` for one record: the whole mapping in one place."""
    tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}

    def tag(name: str, value: Any) -> None:
        if value is not None and value != "":
            tags[name] = tag_value(value)[:_MAX_TAG_VALUE]

    def metric(name: str, value: Any) -> None:
        number = finite_number(value, parse=True)
        if number is not None:
            metrics[_key(name)] = number

    # User tags first so that our own keys (record_id, status, …) can't be overwritten by them.
    for key, value in record.tags.items():
        tag(_key(key), value)
    tag(RECORD_ID_TAG, record.record_id)
    tag(KIND_TAG, record.kind)
    tag(RUN_FEATURE_TAG, record.feature)
    tag(OPERATION_TAG, record.operation)
    tag("function", record.function)
    tag(STATUS_TAG, record.status)
    tag("error_message", record.error_message)
    tag("error_type", record.error_type)
    tag(PARENT_RECORD_TAG, record.parent_id)
    metric(EXECUTION_TIME, record.duration_s)
    usage = record.usage
    prompt, completion, cached, reasoning, total = TOKEN_METRICS
    metric(prompt, usage.input_tokens)
    metric(completion, usage.output_tokens)
    metric(total, usage.total_tokens)
    metric(cached, usage.cached_input_tokens)
    metric(reasoning, usage.reasoning_tokens)
    for name in _ZERO_MEANS_ABSENT:
        if getattr(usage, name):
            metric(name, getattr(usage, name))
    for name in ("images", "seconds", "characters"):
        metric(name, getattr(usage, name))
    for kind, count in (usage.tool_calls or {}).items():
        metric(f"{TOOL_CALLS_PREFIX}{kind}", count)
    for param_name, param_value in record.params.items():
        if param_value is not None:
            params[_key(param_name)] = tag_value(param_value)[:_MAX_PARAM_VALUE]

    if isinstance(record, CallRecord):
        model = record.model or record.response_model
        name = _SEP.join(part for part in (record.endpoint or "call", model) if part)
        tag("endpoint", record.endpoint)
        tag(MODEL_TAG, record.model)
        tag(RESPONSE_MODEL_TAG, record.response_model)
        tag("pricing_version", record.pricing_version)
        tag(USAGE_SOURCE_TAG, record.usage_source)
        tag(COST_STATUS_TAG, record.cost_status)
        tag("service_tier", record.service_tier)
        tag("provider", record.provider)
        if usage.tool_calls:
            tool_usage = {"tool_calls": usage.tool_calls, "tool_details": usage.tool_details or {}}
            tag(TOOL_USAGE_TAG, json.dumps(tool_usage, sort_keys=True, separators=(",", ":")))
        tag("http_status", record.http_status)
        if record.stream:
            tag("stream", True)
        tag("stream_end", record.stream_end)
        if record.request_ids:
            tag("request_ids", ",".join(record.request_ids))
        if record.cost is not None:
            metric(COST_USD, record.cost.total_usd)
            metric("input_cost_usd", record.cost.input_usd)
            metric("output_cost_usd", record.cost.output_usd)
            metric(TOOL_COST_USD, record.cost.tool_usd)
        metric("attempts", record.attempts)
        if record.model:
            params["model"] = record.model[:_MAX_PARAM_VALUE]
    else:
        assert isinstance(record, OperationRecord)
        tag("error_traceback", record.traceback)
        tag(PARENT_FEATURE_TAG, record.parent_feature)
        # Operation metrics by their stored names (``confidence`` as ``confidence_score``, also
        # for records spooled before it was renamed where they are logged); ours below win.
        for logged_name, logged_value in record.metrics.items():
            metric(metric_name(logged_name), logged_value)
        metric(CALL_COUNT, record.call_count)
        metric("unpriced_calls", record.unpriced_calls)
        if record.cost_usd is not None:
            metric(COST_USD, record.cost_usd)
        if record.feature_call_count is not None:
            metric("feature_call_count", record.feature_call_count)
            metric("feature_cost_usd", record.feature_cost_usd)
        # The model(s) its calls used, so runs group and filter by model; one the caller logged
        # (``op.log_params(model=...)``, manual results) wins.
        logged = record.params.get("model")
        model = tag_value(logged) if logged is not None else ",".join(record.models) or None
        if model is not None:
            params["model"] = model[:_MAX_PARAM_VALUE]
            tag(MODEL_TAG, model)
        label = record.operation or record.function or "operation"
        shown = model
        if shown is not None and len(shown) > _MAX_NAME_MODELS:
            shown = shown[: _MAX_NAME_MODELS - 1] + "…"
        name = _SEP.join(part for part in (label, shown, _short_id(record.record_id)) if part)
    for key, value in _source_tags():
        tags.setdefault(key, value)
    return name, tags, metrics, params

"""Every name the MLflow mapping uses, once: experiments, tags, metrics, and the number rules.

The sink writes these names, reports and the REST API read them, and the AIFlow tracking
decorators/API, ``track``'s operations and the Django integration log metrics through
``numeric_metrics``: non-finite or non-numeric values are left out (MLflow rejects them) and
``confidence`` is stored as ``confidence_score``, the name AIFlow's reports read.

Feature registry: feature key → MLflow experiment name. The four AIFlow features are registered
by default. ``register_feature(key, name)`` (or ``tracked_openai.configure(features={...})``)
adds or renames one; a key nobody registered still works and gets an experiment named after the
key (plugin style: a new feature needs no setup).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

from .._config import settings

__all__ = [
    "CALL_COUNT",
    "CONFIDENCE",
    "COST_STATUS_TAG",
    "COST_USD",
    "EXECUTION_TIME",
    "KIND_TAG",
    "MODEL_TAG",
    "OPERATION_TAG",
    "RECORD_ID_TAG",
    "RESPONSE_MODEL_TAG",
    "RUN_FEATURE_TAG",
    "STATUS_TAG",
    "TOKEN_METRICS",
    "TOOL_CALLS_PREFIX",
    "TOOL_COST_USD",
    "TOOL_USAGE_TAG",
    "USAGE_SOURCE_TAG",
    "DEFAULT_FEATURES",
    "FEATURE_TAG",
    "PARENT_FEATURE_TAG",
    "PARENT_RECORD_TAG",
    "PARENT_TAG",
    "experiment_name",
    "features",
    "finite_number",
    "metric_name",
    "numeric_metrics",
    "register_feature",
]

# Experiment tag: the feature key an experiment holds (its name may be configured).
FEATURE_TAG = "tracked_openai.feature"
# MLflow's own nesting of a call's run under its operation's run (same experiment only).
PARENT_TAG = "mlflow.parentRunId"
# Set on every run that has an enclosing operation (the link that survives across experiments,
# which MLflow cannot nest).
PARENT_RECORD_TAG = "parent_record_id"
# Set on an operation nested in another: the enclosing operation's feature.
PARENT_FEATURE_TAG = "parent_feature"
# The confidence metric AIFlow's decorators log and its reports average.
CONFIDENCE = "confidence_score"

# Run tags and metrics the sink writes (``runs.run_fields``) and reports read back.
RECORD_ID_TAG = "record_id"
KIND_TAG = "kind"  # "call" or "operation"
RUN_FEATURE_TAG = "feature"
OPERATION_TAG = "operation"
STATUS_TAG = "status"
MODEL_TAG = "model"
RESPONSE_MODEL_TAG = "response_model"
USAGE_SOURCE_TAG = "usage_source"
COST_STATUS_TAG = "cost_status"
EXECUTION_TIME = "execution_time"
COST_USD = "cost_usd"
CALL_COUNT = "call_count"
# Hosted tools a call used: one metric per kind (``tool_calls_web_search``, ``tool_calls_file_search``…)
# and their priced fees (included in ``cost_usd``).
TOOL_CALLS_PREFIX = "tool_calls_"
TOOL_COST_USD = "tool_cost_usd"
# Call run tag: the hosted tools' counts and what their fees depend on, as JSON
# (``{"tool_calls": {...}, "tool_details": {...}}``), so a stored call can be priced again.
TOOL_USAGE_TAG = "tool_usage"
TOKEN_METRICS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "total_tokens")

DEFAULT_FEATURES: dict[str, str] = {
    "pid_verification": "P&ID Design Verification",
    "pfd_conversion": "PFD to P&ID Conversion",
    "crs_analysis": "CRS Document Analysis",
    "visual_generation": "Visual Diagram Generation",
}

_registry: dict[str, str] = dict(DEFAULT_FEATURES)
_lock = threading.Lock()


def register_feature(key: str, name: str) -> None:
    """Map feature ``key`` to the experiment ``name`` (replaces an earlier mapping)."""
    if not key or not name:
        raise ValueError("register_feature() needs a non-empty key and name")
    with _lock:
        _registry[str(key)] = str(name)


def features() -> dict[str, str]:
    """Every known feature key and its experiment name (registry, then ``configure(features=)``)."""
    with _lock:
        merged = dict(_registry)
    merged.update(settings.features)
    return merged


def experiment_name(
    feature: str, prefix: str | None = None, overrides: Mapping[str, str] | None = None
) -> str:
    """The experiment a feature's runs go to: ``overrides`` (a sink's own names), then the
    configured or registered name, else the key; with the prefix.

    ``prefix`` defaults to ``settings.experiment_prefix``; it is joined with ``/`` unless it
    already ends with a separator (``/``, ``-``, ``_``, ``:``, `` ``).
    """
    name = overrides.get(feature) if overrides else None
    if name is None:
        name = settings.features.get(feature)
    if name is None:
        with _lock:
            name = _registry.get(feature, feature)
    if prefix is None:
        prefix = settings.experiment_prefix
    if not prefix:
        return name
    return f"{prefix}{name}" if prefix[-1] in "/-_: " else f"{prefix}/{name}"


def finite_number(value: Any, *, parse: bool = False) -> float | None:
    """``value`` as a finite float (a bool as 0/1), else ``None``. With ``parse``, anything
    ``float()`` accepts too (``Decimal`` fields, numeric strings)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        number = float(value)
    elif parse and value is not None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def metric_name(key: Any) -> str:
    """The stored name of a metric: ``confidence`` becomes ``confidence_score``."""
    return CONFIDENCE if key in ("confidence", CONFIDENCE) else str(key)


def numeric_metrics(values: Mapping[Any, Any], *, parse: bool = False) -> dict[str, float]:
    """The metrics of ``values`` MLflow can store: finite numbers, under their stored names."""
    metrics: dict[str, float] = {}
    for key, value in values.items():
        number = finite_number(value, parse=parse)
        if number is not None:
            metrics[metric_name(key)] = number
    return metrics

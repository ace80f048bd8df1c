"""Folding runs into totals: counts, rates, latency percentiles, tokens and cost, per slice."""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from .._config import settings
from ..mlflow.names import (
    CALL_COUNT,
    CONFIDENCE,
    COST_STATUS_TAG,
    COST_USD,
    EXECUTION_TIME,
    KIND_TAG,
    MODEL_TAG,
    OPERATION_TAG,
    RESPONSE_MODEL_TAG,
    RUN_FEATURE_TAG,
    STATUS_TAG,
    TOKEN_METRICS,
    USAGE_SOURCE_TAG,
)
from .query import BREAKDOWNS, PAGE_SIZE, is_run, iter_records, parse_when

__all__ = ["feature_metrics", "tracking_enabled"]

# -- aggregation ---------------------------------------------------------------------------------
def _percentile(sorted_values: array[float] | list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method) of already sorted values."""
    n = len(sorted_values)
    if n == 0:
        return None
    pos = (n - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class _Group:
    """Running sums for one slice (a feature, a model, an operation, a day, or everything)."""

    runs: int = 0
    successes: int = 0
    exec_sum: float = 0.0
    exec_n: int = 0
    conf_sum: float = 0.0
    conf_n: int = 0
    # Calls' cost plus costs logged by hand on operations without calls (each counted once).
    cost: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    calls: int = 0
    call_errors: int = 0
    # Calls a budget stopped before they were sent (status ``blocked``; also in call_errors).
    blocked_calls: int = 0
    call_cost: float = 0.0
    call_cost_n: int = 0
    call_exec_sum: float = 0.0
    call_exec_n: int = 0
    call_latencies: array[float] = field(default_factory=lambda: array("d"))
    unpriced_calls: int = 0
    tokens: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TOKEN_METRICS, 0.0))

    def add_run(self, ok: bool, metrics: Mapping[str, float]) -> None:
        self.runs += 1
        self.successes += ok
        t = metrics.get(EXECUTION_TIME)
        if t is not None:
            self.exec_sum += t
            self.exec_n += 1
            self.latencies.append(t)
        c = metrics.get(CONFIDENCE)
        if c is not None:
            self.conf_sum += c
            self.conf_n += 1

    def add_cost(self, cost: float) -> None:
        self.cost += cost

    def add_call(self, ok: bool, metrics: Mapping[str, float], unpriced: bool, blocked: bool = False) -> None:
        self.calls += 1
        self.call_errors += not ok
        self.blocked_calls += blocked
        self.unpriced_calls += unpriced
        t = metrics.get(EXECUTION_TIME)
        if t is not None:
            self.call_exec_sum += t
            self.call_exec_n += 1
            self.call_latencies.append(t)
        cost = metrics.get(COST_USD)
        if cost is not None:
            self.call_cost += cost
            self.call_cost_n += 1
            self.cost += cost
        for name in TOKEN_METRICS:
            value = metrics.get(name)
            if value is not None:
                self.tokens[name] += value

    def _tokens(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.tokens.items()}

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "total_runs": self.runs,
            "avg_execution_time": self.exec_sum / self.exec_n if self.exec_n else None,
            "success_rate": 100.0 * self.successes / self.runs if self.runs else None,
            "avg_confidence": self.conf_sum / self.conf_n if self.conf_n else None,
            "total_cost": round(self.cost, 10),
            "total_calls": self.calls,
            "failed_calls": self.call_errors,
            "blocked_calls": self.blocked_calls,
            "unpriced_calls": self.unpriced_calls,
            **self._tokens(),
            "p50_execution_time": _percentile(lat, 0.50),
            "p95_execution_time": _percentile(lat, 0.95),
        }

    def model_row(self) -> dict[str, Any]:
        # A model's figures come from its calls: operations have no single model.
        lat = sorted(self.call_latencies)
        return {
            "total_calls": self.calls,
            "success_rate": 100.0 * (self.calls - self.call_errors) / self.calls if self.calls else None,
            "avg_execution_time": self.call_exec_sum / self.call_exec_n if self.call_exec_n else None,
            "p50_execution_time": _percentile(lat, 0.50),
            "p95_execution_time": _percentile(lat, 0.95),
            "total_cost": round(self.call_cost, 10),
            "avg_cost_per_call": self.call_cost / self.call_cost_n if self.call_cost_n else None,
            "unpriced_calls": self.unpriced_calls,
            **self._tokens(),
        }

    def slice_row(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "total_runs": self.runs,
            "success_rate": 100.0 * self.successes / self.runs if self.runs else None,
            "avg_execution_time": self.exec_sum / self.exec_n if self.exec_n else None,
            "p50_execution_time": _percentile(lat, 0.50),
            "p95_execution_time": _percentile(lat, 0.95),
            "avg_confidence": self.conf_sum / self.conf_n if self.conf_n else None,
            "total_cost": round(self.cost, 10),
            "total_calls": self.calls,
            "blocked_calls": self.blocked_calls,
            "unpriced_calls": self.unpriced_calls,
            "prompt_tokens": int(self.tokens["prompt_tokens"]),
            "completion_tokens": int(self.tokens["completion_tokens"]),
        }


def _is_ok(run: Any) -> bool:
    status = run.data.tags.get(STATUS_TAG)
    if status is not None:
        return bool(status == "success")
    return bool(run.info.status == "FINISHED")


def _is_unpriced(tags: Mapping[str, str], metrics: Mapping[str, float]) -> bool:
    """A call that should have a price and has none (same rule as an operation's roll-up):
    no ``cost_usd`` and either it succeeded or it reported usage. A failed call that never
    reached the model costs nothing and is not "unpriced"."""
    if COST_USD in metrics:
        return False
    if tags.get(COST_STATUS_TAG) == "unpriced":
        return True
    return tags.get(STATUS_TAG) == "success" or tags.get(USAGE_SOURCE_TAG, "none") != "none"


def _hand_logged_cost(tags: Mapping[str, str], metrics: Mapping[str, float]) -> float | None:
    """The ``cost_usd`` of a run that is not a call and has no calls rolled up into it (a cost
    logged by hand). An operation with calls carries their roll-up, counted with the calls."""
    if tags.get(KIND_TAG) == "call" or metrics.get(CALL_COUNT):
        return None
    return metrics.get(COST_USD)


def feature_metrics(
    feature: str | None = None,
    since: str | date | datetime | None = None,
    until: str | date | datetime | None = None,
    *,
    operation: str | None = None,
    tracking_uri: str | None = None,
    page_size: int = PAGE_SIZE,
) -> dict[str, Any]:
    """Totals and breakdowns for ``feature`` (every tracked feature when ``None``).

    Args:
        feature: Feature key (``"pid_verification"``); ``None`` for all features.
        since: Only runs started at or after this (``YYYY-MM-DD``, ISO datetime, ``today``, ``7d``).
        until: Only runs started before this; a bare date includes that whole day.
        operation: Only runs of this operation (the operations and the calls made inside them).
        tracking_uri: Store to read (default: ``MLFLOW_TRACKING_URI`` or MLflow's default).
        page_size: Runs fetched per query.

    Returns:
        The AIFlow fields ``total_runs``, ``avg_execution_time`` (s), ``success_rate`` (percent),
        ``avg_confidence``, ``total_cost`` (USD), plus ``total_calls``, ``failed_calls``,
        ``blocked_calls`` (stopped by a budget before they were sent; counted as failed too),
        ``unpriced_calls``, ``prompt_tokens``, ``completion_tokens``, ``cached_tokens``,
        ``reasoning_tokens``, ``total_tokens``, ``p50_execution_time``, ``p95_execution_time``,
        and ``by_model``, ``by_operation``, ``by_day``, ``by_feature`` (lists of rows with a
        ``key``). Empty stores give zero counts and ``None`` averages.
    """
    start = parse_when(since)
    end = parse_when(until, end=True)
    if start is not None and end is not None and start >= end:
        raise ValueError("since must be before until")
    total = _Group()
    slices: dict[str, dict[str, _Group]] = {name: {} for name in BREAKDOWNS}

    def group(dim: str, key: str) -> _Group:
        table = slices[dim]
        g = table.get(key)
        if g is None:
            g = table[key] = _Group()
        return g

    for run in iter_records(
        feature, tracking_uri=tracking_uri, since=start, until=end, operation=operation, page_size=page_size
    ):
        tags = run.data.tags
        metrics = run.data.metrics
        ok = _is_ok(run)
        day = datetime.fromtimestamp((run.info.start_time or 0) / 1000, tz=UTC).date().isoformat()
        keys = {
            "operation": tags.get(OPERATION_TAG) or "(none)",
            "day": day,
            "feature": tags.get(RUN_FEATURE_TAG) or "(none)",
        }
        if is_run(tags):
            total.add_run(ok, metrics)
            for dim, key in keys.items():
                group(dim, key).add_run(ok, metrics)
        hand_cost = _hand_logged_cost(tags, metrics)
        if hand_cost is not None:
            total.add_cost(hand_cost)
            for dim, key in keys.items():
                group(dim, key).add_cost(hand_cost)
        if tags.get(KIND_TAG) == "call":
            unpriced = _is_unpriced(tags, metrics)
            blocked = tags.get(STATUS_TAG) == "blocked"
            total.add_call(ok, metrics, unpriced, blocked)
            for dim, key in keys.items():
                group(dim, key).add_call(ok, metrics, unpriced, blocked)
            model = tags.get(RESPONSE_MODEL_TAG) or tags.get(MODEL_TAG) or run.data.params.get("model")
            group("model", model or "(unknown)").add_call(ok, metrics, unpriced, blocked)

    result = total.summary()
    result["feature"] = feature
    result["operation"] = operation
    result["since"] = start.isoformat() if start else None
    result["until"] = end.isoformat() if end else None
    result["by_model"] = [
        {"key": k, **g.model_row()}
        for k, g in sorted(slices["model"].items(), key=lambda kv: (-kv[1].call_cost, kv[0]))
    ]
    for dim in ("operation", "day", "feature"):
        items = (
            sorted(slices[dim].items())
            if dim == "day"
            else sorted(slices[dim].items(), key=lambda kv: (-kv[1].cost, -kv[1].runs, kv[0]))
        )
        result[f"by_{dim}"] = [{"key": k, **g.slice_row()} for k, g in items if g.runs or g.calls or g.cost]
    return result


def tracking_enabled() -> bool:
    """Whether tracking is on in this process (``MLFLOW_ENABLED`` / ``TRACKED_OPENAI_ENABLED``)."""
    return bool(settings.enabled)

"""Call totals computed by the tracking store itself: MLflow's trace-metrics aggregation
(``QueryTraceMetrics``: ``SqlAlchemyStore.query_trace_metrics`` on the embedded store, ``POST
/api/3.0/mlflow/traces/metrics`` through ``mlflow server``), so a report does not page through
every trace.

What MLflow can aggregate, and so what this gives (mlflow 3.17, ``sql_trace_metrics_utils``):

* span count, grouped by span type, model (``mlflow.llm.model``: the served model, ours) and
  a day bucket of the span's start: our **calls** are the spans that are not the ``CHAIN`` root
  of an operation;
* span cost (``mlflow.llm.cost``, which is **our** cost, sent unchanged), summed by model and by
  day of the span's start;
* tokens only per trace (``input_tokens``, ``output_tokens``, ``total_tokens``,
  ``cache_read_input_tokens``: the sum of the trace's spans' ``mlflow.chat.tokenUsage``, our
  root span carrying none), so tokens are totals per feature (an experiment), never per model
  or per day: a span has no token column MLflow can group.

What it cannot see, so :func:`server_call_totals` gives ``None`` with the reason and the
caller pages instead: spans that are not ours (a trace without our ``feature`` tag, e.g. MLflow's
own autolog into the same experiment), and a window bound that cuts a trace (MLflow filters
span counts and tokens by the trace's start, our reports by each span's own start). Calls that
are also runs (``runs`` mode, or calls outside operations in ``runs+traces``) are the caller's
to check: MLflow cannot count runs, nor match a run and a span by record id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "CallTotals",
    "FeatureTotals",
    "NotServableError",
    "server_call_totals",
    "supports_trace_metrics",
]

_DAY_S = 86_400
# Far enough ahead for "no upper bound": MLflow needs both ends to bucket by day.
_FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01
# One answer must hold every group: MLflow pages nothing (its page token is a TODO), so a full
# page means "maybe more" and the caller pages through traces instead.
_MAX_ROWS = 10_000
_OPERATION_SPAN_TYPE = "CHAIN"
_TOKEN_METRICS = {
    "prompt_tokens": "input_tokens",
    "completion_tokens": "output_tokens",
    "total_tokens": "total_tokens",
    "cached_tokens": "cache_read_input_tokens",
}


class NotServableError(Exception):
    """The store cannot give exactly the paging path's numbers for this query (the reason)."""


@dataclass
class FeatureTotals:
    """One experiment's calls, cost and tokens."""

    calls: int = 0
    cost: float = 0.0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TOKEN_METRICS, 0))
    by_model: dict[str, list[float]] = field(default_factory=dict)  # model -> [calls, cost]
    by_day: dict[str, list[float]] = field(default_factory=dict)  # YYYY-MM-DD -> [calls, cost]


@dataclass
class CallTotals:
    by_feature: dict[str, FeatureTotals]


def supports_trace_metrics(client: Any) -> bool:
    """Whether the client's store answers ``query_trace_metrics`` (SQL stores and ``mlflow
    server``; a ``./mlruns`` folder does not)."""
    store = client._tracking_client.store
    from mlflow.store.tracking.file_store import FileStore

    return not isinstance(store, FileStore) and hasattr(store, "query_trace_metrics")


def _query(
    store: Any,
    experiment_id: str,
    view: str,
    metric: str,
    aggregation: str,
    dimensions: Sequence[str] = (),
    filters: Sequence[str] = (),
    start_ms: int | None = None,
    end_ms: int | None = None,
    by_day: bool = False,
) -> list[Any]:
    from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType

    points = store.query_trace_metrics(
        experiment_ids=[experiment_id],
        view_type=MetricViewType(view),
        metric_name=metric,
        aggregations=[MetricAggregation(AggregationType(aggregation))],
        dimensions=list(dimensions) or None,
        filters=list(filters) or None,
        time_interval_seconds=_DAY_S if by_day else None,
        start_time_ms=start_ms,
        end_time_ms=end_ms,
        max_results=_MAX_ROWS,
    )
    if len(points) >= _MAX_ROWS:
        raise NotServableError(f"more than {_MAX_ROWS} groups in one answer")
    return list(points)


def _value(point: Any) -> float:
    return float(next(iter(point.values.values()), 0) or 0)


def _count(store: Any, experiment_id: str, filters: Sequence[str] = ()) -> int:
    points = _query(store, experiment_id, "TRACES", "trace_count", "COUNT", filters=filters)
    return int(sum(_value(p) for p in points))


def _check_all_ours(store: Any, experiment_id: str, feature: str) -> None:
    """Every trace of the experiment carries our ``feature`` tag with the experiment's feature
    (every trace we write does; MLflow's own autolog writes none)."""
    total = _count(store, experiment_id)
    quoted = feature.replace("'", "\\'")
    ours = _count(store, experiment_id, [f"trace.tag.feature = '{quoted}'"])
    if ours != total:
        raise NotServableError(
            f"{total - ours} of {total} traces are not tracked-openai's (no feature tag): "
            "MLflow's span counts cannot leave them out"
        )


def _check_bound(client: Any, store: Any, experiment_id: str, bound_ms: int) -> None:
    """No trace started before ``bound_ms`` has a span after it (MLflow puts a span in the
    window of its trace's start; our reports in the window of the span's own start)."""
    points = _query(store, experiment_id, "TRACES", "latency", "MAX", end_ms=bound_ms - 1)
    longest = int(max((_value(p) for p in points), default=0))
    if longest <= 0:
        return
    # Only traces that started within the longest trace's duration before the bound can cross
    # it: a handful to read, not the window.
    token: str | None = None
    while True:
        page = client.search_traces(
            locations=[experiment_id],
            filter_string=(
                f"trace.timestamp_ms >= {bound_ms - longest - 1} AND trace.timestamp_ms < {bound_ms}"
            ),
            max_results=500,
            page_token=token,
            include_spans=False,
        )
        for trace in page:
            info = trace.info
            end = info.request_time + (info.execution_duration or 0)
            if end > bound_ms:
                raise NotServableError(
                    f"trace {info.trace_id} starts before {_iso(bound_ms)} and ends after it: "
                    "MLflow counts its spans by the trace's start, reports by each span's"
                )
        token = page.token
        if not token:
            return


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def _day(bucket: str) -> str:
    return bucket[:10]


def _feature_totals(
    store: Any, experiment_id: str, start_ms: int | None, end_ms: int | None
) -> FeatureTotals:
    out = FeatureTotals()

    def query(
        view: str, metric: str, aggregation: str, dims: Sequence[str] = (), by_day: bool = False
    ) -> list[Any]:
        # MLflow needs both ends to bucket by day.
        lo = start_ms if start_ms is not None or not by_day else 0
        hi = end_ms if end_ms is not None or not by_day else _FAR_FUTURE_MS
        return _query(store, experiment_id, view, metric, aggregation, dims, (), lo, hi, by_day)

    def calls(point: Any) -> int:
        # Our calls: every span but an operation's CHAIN root.
        return 0 if point.dimensions.get("span_type") == _OPERATION_SPAN_TYPE else int(_value(point))

    for point in query("SPANS", "span_count", "COUNT", ["span_type", "span_model_name"]):
        out.by_model.setdefault(str(point.dimensions["span_model_name"]), [0, 0.0])[0] += calls(point)
    out.calls = sum(calls(p) for p in query("SPANS", "span_count", "COUNT", ["span_type"]))
    unnamed = out.calls - sum(int(row[0]) for row in out.by_model.values())
    if unnamed:
        # MLflow leaves out groups whose model is null; ours always name one, but say so.
        out.by_model.setdefault("(unknown)", [0, 0.0])[0] += unnamed
    out.by_model = {k: v for k, v in out.by_model.items() if v[0]}
    for point in query("SPANS", "total_cost", "SUM", ["span_model_name"]):
        out.by_model.setdefault(str(point.dimensions["span_model_name"]), [0, 0.0])[1] += _value(point)
    out.cost = sum(_value(p) for p in query("SPANS", "total_cost", "SUM"))
    for point in query("SPANS", "span_count", "COUNT", ["span_type"], by_day=True):
        if count := calls(point):
            out.by_day.setdefault(_day(point.dimensions["time_bucket"]), [0, 0.0])[0] += count
    for point in query("SPANS", "total_cost", "SUM", by_day=True):
        out.by_day.setdefault(_day(point.dimensions["time_bucket"]), [0, 0.0])[1] += _value(point)
    for ours, theirs in _TOKEN_METRICS.items():
        out.tokens[ours] = int(sum(_value(p) for p in query("TRACES", theirs, "SUM")))
    return out


def server_call_totals(
    client: Any,
    experiments: Sequence[tuple[str, str]],
    since: datetime | None = None,
    until: datetime | None = None,
) -> CallTotals:
    """Calls, cost and tokens of the call spans in ``experiments`` (``(feature, experiment
    id)`` pairs) started in ``[since, until)``, computed by the store. Raises
    :class:`NotServableError` (with the reason) when the store's figures could differ from the
    paging path's."""
    if not supports_trace_metrics(client):
        raise NotServableError("the store has no trace-metrics aggregation (a ./mlruns folder)")
    store = client._tracking_client.store
    start_ms = int(since.timestamp() * 1000) if since is not None else None
    # MLflow's end bound is inclusive (milliseconds), ours exclusive.
    end_ms = int(until.timestamp() * 1000) - 1 if until is not None else None
    totals: dict[str, FeatureTotals] = {}
    for feature, experiment_id in experiments:
        _check_all_ours(store, experiment_id, feature)
        for bound in (start_ms, None if end_ms is None else end_ms + 1):
            if bound is not None:
                _check_bound(client, store, experiment_id, bound)
        totals[feature] = _feature_totals(store, experiment_id, start_ms, end_ms)
    return CallTotals(totals)

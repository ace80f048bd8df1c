"""Call totals (calls, cost, tokens by feature, model and day), from the store's own
aggregation when it gives exactly our numbers, else by paging through the records.

``feature_metrics`` needs every record (latency percentiles, success rates, unpriced calls,
runs); these totals do not, so where MLflow can add them up itself
(``tracked_openai/mlflow/trace_metrics.py``) a report over 100k calls reads a few dozen rows
instead of 100k spans. The rule is the same as everywhere in reports: each call once, under its
own feature, model and the day it started.

The store's path is used when all of this holds, else the records are paged (the answer says
which, and why):

* the store has the aggregation (SQL store, ``mlflow server``; not a ``./mlruns`` folder);
* no call is a run in the window (``runs`` mode writes calls as runs, ``runs+traces`` a call
  outside any operation or a late one as a run *and* a span): MLflow cannot add up runs, nor
  tell that a run and a span are the same record;
* every trace in the experiments is ours, and no trace crosses a bound of the window.

Tokens per model and per day are paged only: MLflow keeps tokens per trace, not per span.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any, Literal

from ..mlflow.names import FEATURE_TAG, KIND_TAG, MODEL_TAG, RESPONSE_MODEL_TAG, RUN_FEATURE_TAG
from ..mlflow.store import StoreUnavailableError, read_client, resolve_tracking_uri, short_error
from .query import _experiment_ids, iter_records, parse_when, time_filter

__all__ = ["METHODS", "TOKEN_FIELDS", "Method", "call_totals", "parse_method"]

TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens")
Method = Literal["auto", "server", "paging"]
METHODS: tuple[Method, ...] = ("auto", "server", "paging")


def parse_method(raw: str | None) -> Method:
    """``method`` from a query string or a command line: one of :data:`METHODS` (missing:
    ``auto``), else ``ValueError``. An empty ``method=`` is refused too: the API documents
    the three values, and an empty one that quietly meant ``auto`` would not be one of them."""
    if raw is None:
        return "auto"
    for method in METHODS:
        if raw == method:
            return method
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {raw!r}")


def _empty() -> dict[str, Any]:
    return {"total_calls": 0, "total_cost": 0.0, **dict.fromkeys(TOKEN_FIELDS, 0)}


def _call_runs_in(client: Any, ids: Sequence[str], since: datetime | None, until: datetime | None) -> bool:
    """Whether any call of the window is a run (one query, one row)."""
    from mlflow.entities import ViewType

    window = time_filter(since, until)
    found = client.search_runs(
        list(ids),
        filter_string=" AND ".join(p for p in (f"tags.{KIND_TAG} = 'call'", window) if p),
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=1,
    )
    return bool(found)


def _features(client: Any, ids: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for experiment_id in ids:
        exp = client.get_experiment(experiment_id)
        pairs.append((str(exp.tags.get(FEATURE_TAG) or exp.name), experiment_id))
    return pairs


def _rows(table: dict[str, dict[str, Any]], order: Literal["cost", "key"]) -> list[dict[str, Any]]:
    items = (
        sorted(table.items())
        if order == "key"
        else sorted(table.items(), key=lambda kv: (-kv[1]["total_cost"], -kv[1]["total_calls"], kv[0]))
    )
    out = []
    for key, row in items:
        row = dict(row)
        row["total_cost"] = round(row["total_cost"], 10)
        out.append({"key": key, **row})
    return out


def _result(
    total: dict[str, Any],
    by_feature: dict[str, dict[str, Any]],
    by_model: dict[str, dict[str, Any]],
    by_day: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    total = dict(total)
    total["total_cost"] = round(total["total_cost"], 10)
    return {
        **total,
        "by_feature": _rows(by_feature, "cost"),
        "by_model": _rows(by_model, "cost"),
        "by_day": _rows(by_day, "key"),
    }


def _from_server(
    client: Any, ids: Sequence[str], since: datetime | None, until: datetime | None
) -> dict[str, Any]:
    from ..mlflow.trace_metrics import server_call_totals

    found = server_call_totals(client, _features(client, ids), since, until)
    total = _empty()
    by_feature: dict[str, dict[str, Any]] = {}
    by_model: dict[str, dict[str, Any]] = {}
    by_day: dict[str, dict[str, Any]] = {}
    for feature, t in found.by_feature.items():
        if not t.calls and not t.cost:
            continue
        row = {"total_calls": t.calls, "total_cost": t.cost, **t.tokens}
        by_feature[feature] = row
        for key in row:
            total[key] += row[key]
        for table, source in ((by_model, t.by_model), (by_day, t.by_day)):
            for key, (calls, cost) in source.items():
                slot = table.setdefault(key, {"total_calls": 0, "total_cost": 0.0})
                slot["total_calls"] += int(calls)
                slot["total_cost"] += cost
    return _result(total, by_feature, by_model, by_day)


def _by_paging(
    feature: str | None, tracking_uri: str | None, since: datetime | None, until: datetime | None
) -> dict[str, Any]:
    total = _empty()
    by_feature: dict[str, dict[str, Any]] = {}
    by_model: dict[str, dict[str, Any]] = {}
    by_day: dict[str, dict[str, Any]] = {}
    for run in iter_records(feature, tracking_uri=tracking_uri, since=since, until=until):
        tags = run.data.tags
        if tags.get(KIND_TAG) != "call":
            continue
        metrics = run.data.metrics
        cost = metrics.get("cost_usd") or 0.0
        tokens = {k: int(metrics.get(k) or 0) for k in TOKEN_FIELDS}
        row = by_feature.setdefault(tags.get(RUN_FEATURE_TAG) or "(none)", _empty())
        for target in (total, row):
            target["total_calls"] += 1
            target["total_cost"] += cost
            for key, value in tokens.items():
                target[key] += value
        model = tags.get(RESPONSE_MODEL_TAG) or tags.get(MODEL_TAG) or run.data.params.get("model")
        day = datetime.fromtimestamp((run.info.start_time or 0) / 1000, tz=UTC).date().isoformat()
        for table, key in ((by_model, model or "(unknown)"), (by_day, day)):
            slot = table.setdefault(key, {"total_calls": 0, "total_cost": 0.0})
            slot["total_calls"] += 1
            slot["total_cost"] += cost
    return _result(total, by_feature, by_model, by_day)


def call_totals(
    feature: str | None = None,
    since: str | date | datetime | None = None,
    until: str | date | datetime | None = None,
    *,
    tracking_uri: str | None = None,
    method: Method = "auto",
) -> dict[str, Any]:
    """Calls, cost (USD) and tokens of ``feature`` (every tracked feature when ``None``) in
    ``[since, until)``, with ``by_feature`` (calls, cost, tokens), ``by_model`` and ``by_day``
    (calls, cost) rows.

    ``method``: ``auto`` asks the store to add them up when it gives exactly the paging
    path's numbers (see the module docstring) and pages otherwise; ``server`` raises
    ``ValueError`` with the reason when the store cannot; ``paging`` always pages. The answer
    says which was used (``method``) and, when ``auto`` paged, why (``fallback_reason``).
    """
    # Checked here too: a typo must not quietly become "auto" (anything but "paging" asked
    # the store first).
    method = parse_method(method)
    start = parse_when(since)
    end = parse_when(until, end=True)
    if start is not None and end is not None and start >= end:
        raise ValueError("since must be before until")
    reason: str | None = None
    result: dict[str, Any] | None = None
    if method != "paging":
        from ..mlflow.trace_metrics import NotServableError

        client = read_client(resolve_tracking_uri(tracking_uri))
        ids = _experiment_ids(client, feature)
        try:
            if _call_runs_in(client, ids, start, end):
                raise NotServableError(
                    "calls are runs in this window (runs mode, or calls outside operations in "
                    "runs+traces): MLflow cannot add up runs nor match a run to its span"
                )
            result = _from_server(client, ids, start, end) if ids else _result(_empty(), {}, {}, {})
        except NotServableError as exc:
            reason = str(exc)
        except Exception as exc:
            reason = f"the store's aggregation failed: {short_error(exc)}"
        if result is None and method == "server":
            raise ValueError(f"the store cannot add these up itself: {reason}")
    if result is None:
        try:
            result = _by_paging(feature, tracking_uri, start, end)
        except StoreUnavailableError:
            raise
        result["method"] = "paging"
    else:
        result["method"] = "server"
    result["fallback_reason"] = reason
    result["feature"] = feature
    result["since"] = start.isoformat() if start else None
    result["until"] = end.isoformat() if end else None
    return result

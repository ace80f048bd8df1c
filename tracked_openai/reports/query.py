"""Reading runs from the store: features and their experiments, time bounds, runs page by page."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .._config import settings
from ..mlflow.names import (
    CONFIDENCE,
    EXECUTION_TIME,
    FEATURE_TAG,
    KIND_TAG,
    OPERATION_TAG,
    PARENT_FEATURE_TAG,
    PARENT_RECORD_TAG,
    PARENT_TAG,
    RUN_FEATURE_TAG,
    STATUS_TAG,
    experiment_name,
    features,
)
from ..mlflow.store import StoreUnavailableError, read_client, resolve_tracking_uri, short_error

__all__ = [
    "BREAKDOWNS",
    "PAGE_SIZE",
    "UnknownFeatureError",
    "experiment_name",
    "experiments",
    "is_run",
    "iter_records",
    "iter_runs",
    "parse_when",
    "recent_runs",
    "run_row",
    "time_filter",
]

BREAKDOWNS = ("model", "operation", "day", "feature")
# Runs per search_runs page. Measured (benchmarks/reports.py, 10k runs): 5,000 is ~15% faster
# than 1,000 but holds ~140 MB more at the peak (MLflow builds every run of a page as objects).
PAGE_SIZE = 1_000


class UnknownFeatureError(ValueError):
    """A feature neither registered nor found in the store (CLI exit code 2, HTTP 404).

    ``known`` lists the features that are: the registered ones (the four default AIFlow features
    unless configured otherwise), the default feature of calls made outside any operation, and
    every feature the store holds.
    """

    def __init__(self, feature: str, known: list[str]) -> None:
        self.feature = feature
        self.known = known
        super().__init__(f"unknown feature {feature!r}; known features: {', '.join(known) or '(none)'}")


# -- features and experiments ------------------------------------------------------------------
def _registry() -> dict[str, str]:
    """``{feature key: experiment name}`` from the feature registry."""
    return {str(k): str(v) for k, v in features().items()}


def _tracked_experiments(client: Any) -> Iterator[Any]:
    from mlflow.entities import ViewType

    token = None
    while True:
        page = client.search_experiments(
            view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            filter_string=f"tags.`{FEATURE_TAG}` != ''",
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def experiments(tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """One row per feature: ``key``, ``name``, ``experiment_id`` (``None`` = nothing recorded yet).

    Lists the registered features (the four default AIFlow features) and every feature found in
    the store (tagged ``tracked_openai.feature``), registered or not.
    """
    client = read_client(resolve_tracking_uri(tracking_uri))
    rows: dict[str, dict[str, Any]] = {
        key: {"key": key, "name": name, "experiment_id": None} for key, name in _registry().items()
    }
    try:
        for exp in _tracked_experiments(client):
            key = exp.tags.get(FEATURE_TAG)
            rows[key] = {"key": key, "name": exp.name, "experiment_id": exp.experiment_id}
        for row in rows.values():
            if row["experiment_id"] is None:
                # A store written before the feature tag existed: fall back to the name.
                exp = client.get_experiment_by_name(row["name"])
                if exp is not None and exp.lifecycle_stage == "active":
                    row["experiment_id"] = exp.experiment_id
    except StoreUnavailableError:
        raise
    except Exception as exc:
        raise StoreUnavailableError(f"cannot list experiments: {short_error(exc)}") from exc
    return sorted(rows.values(), key=lambda r: (r["experiment_id"] is None, r["key"]))


def _experiment_ids(client: Any, feature: str | None) -> list[str]:
    if feature is None:
        return [e.experiment_id for e in _tracked_experiments(client)]
    found = client.search_experiments(
        max_results=1, filter_string=f"tags.`{FEATURE_TAG}` = '{_quote(feature)}'"
    )
    if found:
        return [found[0].experiment_id]
    exp = client.get_experiment_by_name(experiment_name(feature))
    if exp is not None and exp.lifecycle_stage == "active":
        return [exp.experiment_id]
    known = _known_features(client)
    if feature not in known:
        # A typo must not read as "no runs": say so, and what the store does have.
        raise UnknownFeatureError(feature, sorted(known))
    return []


def _known_features(client: Any) -> set[str]:
    """Registered features, the default feature of calls outside any operation, and every
    feature the store holds."""
    known = set(_registry())
    known.add(str(settings.default_feature))
    known.update(str(e.tags.get(FEATURE_TAG)) for e in _tracked_experiments(client))
    return known


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


# -- time bounds -------------------------------------------------------------------------------
def parse_when(value: str | date | datetime | None, *, end: bool = False) -> datetime | None:
    """A report bound from ``YYYY-MM-DD``, an ISO datetime, ``today``, ``Nd`` (N days ago) or a
    ``date``/``datetime``. A bare date as an ``end`` bound includes that whole day. Naive
    datetimes are UTC. Raises ``ValueError`` with a readable message."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        day = datetime(value.year, value.month, value.day, tzinfo=UTC)
        return day + timedelta(days=1) if end else day
    text = value.strip()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if text == "today":
        return today + timedelta(days=1) if end else today
    if text.endswith("d") and text[:-1].isdigit():
        return today - timedelta(days=int(text[:-1]) - (1 if end else 0))
    try:
        if len(text) == 10:
            return parse_when(date.fromisoformat(text), end=end)
        return parse_when(datetime.fromisoformat(text.replace("Z", "+00:00")), end=end)
    except ValueError:
        raise ValueError(
            f"invalid date {value!r}: use YYYY-MM-DD, an ISO datetime, 'today' or Nd (e.g. 7d)"
        ) from None


def time_filter(since: datetime | None, until: datetime | None, operation: str | None = None) -> str:
    parts = [f"tags.{OPERATION_TAG} = '{_quote(operation)}'"] if operation else []
    if since is not None:
        parts.append(f"attributes.start_time >= {int(since.timestamp() * 1000)}")
    if until is not None:
        parts.append(f"attributes.start_time < {int(until.timestamp() * 1000)}")
    return " AND ".join(parts)


# -- runs ----------------------------------------------------------------------------------------
def iter_runs(
    feature: str | None = None,
    *,
    tracking_uri: str | None = None,
    filter_string: str = "",
    page_size: int = PAGE_SIZE,
    order_by: list[str] | None = None,
) -> Iterator[Any]:
    """Every active run of ``feature`` (all tracked features when ``None``), one page at a time."""
    from mlflow.entities import ViewType

    client = read_client(resolve_tracking_uri(tracking_uri))
    ids = _experiment_ids(client, feature)
    if not ids:
        return
    token = None
    while True:
        try:
            page = client.search_runs(
                ids,
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=page_size,
                order_by=order_by,
                page_token=token,
            )
        except Exception as exc:
            raise StoreUnavailableError(f"cannot search runs: {short_error(exc)}") from exc
        yield from page
        token = page.token
        if not token:
            return


def iter_records(
    feature: str | None = None,
    *,
    tracking_uri: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    operation: str | None = None,
    page_size: int = PAGE_SIZE,
) -> Iterator[Any]:
    """Every record of the window, each once: the runs, then the spans of our traces standing
    for records that are not runs (``traces`` and ``runs+traces`` modes), shaped as runs
    (``tracked_openai/mlflow/trace_reports.py``)."""
    seen: set[str] = set()
    window = time_filter(since, until, operation)
    for run in iter_runs(feature, tracking_uri=tracking_uri, filter_string=window, page_size=page_size):
        record_id = run.data.tags.get("record_id")
        if record_id:
            seen.add(record_id)
        yield run
    from ..mlflow.trace_reports import iter_trace_runs

    client = read_client(resolve_tracking_uri(tracking_uri))
    ids = _experiment_ids(client, feature)
    try:
        for span_run in iter_trace_runs(client, ids, since, until, operation, page_size):
            if span_run.data.tags.get("record_id") not in seen:
                yield span_run
    except Exception as exc:
        if isinstance(exc, NotImplementedError) or "not supported" in str(exc).lower():
            return  # a store without traces (a ./mlruns folder): runs are all there is
        raise StoreUnavailableError(f"cannot search traces: {short_error(exc)}") from exc


def _iso_ms(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


# Large and host-internal (file paths, source lines): kept in MLflow, left out of list rows.
_HIDDEN_TAGS = frozenset({"error_traceback"})


def run_row(run: Any) -> dict[str, Any]:
    """A run as the flat dict the AIFlow tracking API returned (``mlflow.search_runs`` column names).
    MLflow's own ``mlflow.*`` tags and the failure traceback are left out."""
    info = run.info
    row: dict[str, Any] = {
        "run_id": info.run_id,
        "experiment_id": info.experiment_id,
        "run_name": info.run_name,
        "status": info.status,
        "start_time": _iso_ms(info.start_time),
        "end_time": _iso_ms(info.end_time),
    }
    row.update({f"metrics.{k}": v for k, v in sorted(run.data.metrics.items())})
    row.update({f"params.{k}": v for k, v in sorted(run.data.params.items())})
    row.update(
        {
            f"tags.{k}": v
            for k, v in sorted(run.data.tags.items())
            if not k.startswith("mlflow.") and k not in _HIDDEN_TAGS
        }
    )
    for key in (f"metrics.{EXECUTION_TIME}", f"metrics.{CONFIDENCE}", f"tags.{STATUS_TAG}"):
        row.setdefault(key, None)
    return row


# Every run of a feature has no MLflow parent; the few without one that are not runs (calls
# written before their operation and not yet nested under it) are left out by ``is_run``.
_NO_MLFLOW_PARENT = f"tags.`{PARENT_TAG}` IS NULL"


def is_run(tags: Mapping[str, str]) -> bool:
    """A top-level run of its feature (see the module docstring)."""
    if PARENT_TAG not in tags and PARENT_RECORD_TAG not in tags:
        return True
    if tags.get(KIND_TAG) != "operation":
        return False  # a call inside an operation (always of the same feature)
    parent_feature = tags.get(PARENT_FEATURE_TAG)
    if parent_feature is not None:
        return parent_feature != tags.get(RUN_FEATURE_TAG)
    # Written before the tag existed: only an operation in another experiment has no MLflow parent.
    return PARENT_TAG not in tags


def recent_runs(
    feature: str | None = None,
    limit: int = 10,
    *,
    tracking_uri: str | None = None,
    include_calls: bool = False,
) -> list[dict[str, Any]]:
    """The newest ``limit`` runs of ``feature`` (all features when ``None``), newest first.

    By default only the runs reports count (operations with no enclosing operation of the same
    feature, calls outside any operation); with ``include_calls`` every record, nested ones too,
    calls written only as spans of a trace (``traces``, ``runs+traces`` modes) included.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    runs = iter_runs(
        feature,
        tracking_uri=tracking_uri,
        filter_string="" if include_calls else _NO_MLFLOW_PARENT,
        page_size=min(limit, PAGE_SIZE),
        order_by=["attributes.start_time DESC"],
    )
    chosen: list[Any] = []
    for run in runs:
        if not include_calls and not is_run(run.data.tags):
            continue
        chosen.append(run)
        if len(chosen) >= limit:
            break
    if include_calls:
        chosen = _with_span_calls(chosen, feature, tracking_uri, limit)
    return [run_row(run) for run in chosen]


def _with_span_calls(runs: list[Any], feature: str | None, tracking_uri: str | None, limit: int) -> list[Any]:
    """``runs`` (the newest ``limit``) merged with the newest calls written only as spans
    (``traces``, ``runs+traces`` modes), newest first, each record once."""
    from ..mlflow.trace_reports import newest_span_runs

    client = read_client(resolve_tracking_uri(tracking_uri))
    seen = {run.data.tags.get("record_id") for run in runs}
    try:
        spans = newest_span_runs(client, _experiment_ids(client, feature), limit)
    except Exception as exc:
        if isinstance(exc, NotImplementedError) or "not supported" in str(exc).lower():
            return runs  # a store without traces (a ./mlruns folder): runs are all there is
        raise StoreUnavailableError(f"cannot search traces: {short_error(exc)}") from exc
    merged = runs + [s for s in spans if s.data.tags.get("record_id") not in seen]
    merged.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    return merged[:limit]

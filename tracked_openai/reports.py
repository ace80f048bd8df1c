"""Reports over what tracked-openai wrote to MLflow: per-feature cost, latency and reliability.

Everything here reads the tracking store with :class:`mlflow.MlflowClient` (the same store the
MLflow sink writes), page by page, so a report over 100k runs never holds 100k runs in memory:
each page is folded into running sums and dropped. Only one float per run is kept, for the
latency percentiles.

The rule (docs/reports.md, "What is counted"): **every call belongs to its innermost operation and
that operation's feature**, and is counted once, there. An operation's own MLflow run rolls up every
call made inside it, nested operations' calls included, but a report never adds those roll-ups:

* A **run** (``total_runs``, ``success_rate``, ``avg_execution_time``, latency percentiles,
  ``avg_confidence``) is a top-level run of its feature: an operation with no enclosing operation
  or whose enclosing operation is in another feature (tag ``parent_feature``), or a call made
  outside any operation. Operations nested in an operation of the same feature, and calls made
  inside operations, are children, not runs.
* **Calls, tokens and cost** are summed over call runs, each under its own feature, operation,
  model and day. So ``track("fraud_check")`` inside ``track("checkout")``: the fraud check's calls
  and cost are fraud_check's, the rest checkout's, and the all-features total has each call once.
  The cost an operation's run carries itself (``cost_usd``) is added only when no call is rolled
  up into it: a cost logged by hand (``mlflow_tracker.log_experiment_result``).
"""

from __future__ import annotations

import math
import os
import urllib.error
import urllib.request
from array import array
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "BREAKDOWNS",
    "DEFAULT_FEATURES",
    "FEATURE_TAG",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "UnknownFeatureError",
    "check_store",
    "display_uri",
    "experiment_name",
    "experiments",
    "feature_metrics",
    "iter_runs",
    "parse_when",
    "recent_runs",
    "resolve_tracking_uri",
]

FEATURE_TAG = "tracked_openai.feature"
PARENT_TAG = "mlflow.parentRunId"
# Set on every run that has an enclosing operation (the link that survives across experiments,
# which MLflow cannot nest).
PARENT_RECORD_TAG = "parent_record_id"
# Set on an operation nested in another: the enclosing operation's feature.
PARENT_FEATURE_TAG = "parent_feature"
BREAKDOWNS = ("model", "operation", "day", "feature")

# The seed system's features; used until (or unless) the feature registry module is importable.
DEFAULT_FEATURES: dict[str, str] = {
    "pid_verification": "P&ID Design Verification",
    "pfd_conversion": "PFD to P&ID Conversion",
    "crs_analysis": "CRS Document Analysis",
    "visual_generation": "Visual Diagram Generation",
}

# Runs per search_runs page. Measured (benchmarks/reports.py, 10k runs): 5,000 is ~15% faster
# than 1,000 but holds ~140 MB more at the peak (MLflow builds every run of a page as objects).
_PAGE_SIZE = 1_000
_TOKEN_METRICS = {
    "prompt_tokens": "prompt_tokens",
    "completion_tokens": "completion_tokens",
    "cached_tokens": "cached_tokens",
    "reasoning_tokens": "reasoning_tokens",
    "total_tokens": "total_tokens",
}


class StoreUnavailableError(RuntimeError):
    """The tracking store could not be reached or read (CLI exit code 3, HTTP 503)."""


class StoreNotFoundError(StoreUnavailableError):
    """No MLflow store at the URI (a missing file, folder or database schema). Reading never
    creates one; the message names the URI that was tried."""


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


# -- store access ------------------------------------------------------------------------------
def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The store a report reads: the argument, else ``MLFLOW_TRACKING_URI``, else MLflow's default
    (an embedded SQLite file ``mlflow.db`` in the current folder)."""
    if tracking_uri:
        return tracking_uri
    import mlflow

    return str(mlflow.get_tracking_uri())


def display_uri(uri: str) -> str:
    """``uri`` without credentials (``https://user:token@host`` → ``https://host``), for messages,
    report headers and API responses."""
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def check_store(tracking_uri: str | None = None, timeout: float = 3.0, *, create: bool = False) -> str:
    """Raise :class:`StoreUnavailableError` unless the store is there and answers; return the
    resolved URI.

    Reading never creates a store: a SQLite file, a store folder or a database without MLflow's
    tables that is missing raises :class:`StoreNotFoundError` (MLflow itself would create it).
    ``create=True`` is for writers (the demo): a missing local store is fine, the sink creates it.
    For an HTTP server this asks ``/health`` with a short timeout, because MlflowClient would
    otherwise retry with backoff for minutes before giving up.
    """
    from urllib.parse import urlparse

    uri = resolve_tracking_uri(tracking_uri)
    scheme = urlparse(uri).scheme.lower()
    engine = scheme.split("+", 1)[0]
    if scheme in ("http", "https"):
        _probe_server(uri, timeout)
    elif create or uri in ("databricks", "databricks-uc", "uc"):
        pass
    elif engine == "sqlite":
        _check_sqlite(uri)
    elif engine in _DB_SCHEMES:
        _check_database(uri, timeout)
    elif scheme in ("", "file"):
        _check_folder(uri)
    # Other schemes (Databricks, plugins) are left to MLflow.
    return uri


def _probe_server(uri: str, timeout: float) -> None:
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri.rstrip("/") + "/health")
    shown = display_uri(uri)
    request = urllib.request.Request(
        urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    )
    if parts.username is not None:
        # urllib does not take credentials from the URL; MLflow's client sends them as basic auth.
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        raise StoreUnavailableError(f"tracking server {shown} answered HTTP {exc.code}") from exc
    except (OSError, ValueError) as exc:
        raise StoreUnavailableError(f"tracking server {shown} is unreachable: {exc}") from exc


def _missing(uri: str, what: str) -> StoreNotFoundError:
    return StoreNotFoundError(
        f"no MLflow store at {display_uri(uri)}: {what} (reports never create one: name the store "
        "your application writes with --tracking-uri or MLFLOW_TRACKING_URI)"
    )


def _check_sqlite(uri: str) -> None:
    import sqlite3

    from sqlalchemy.engine import make_url

    try:
        database = make_url(uri).database
    except Exception as exc:
        raise StoreUnavailableError(f"tracking URI {display_uri(uri)} is invalid: {_short(exc)}") from exc
    if not database or database == ":memory:" or database.startswith("file:"):
        return  # in-memory or a SQLite URI filename: nothing on disk to find
    path = Path(database).absolute()
    if not path.exists():
        raise _missing(uri, f"{path} does not exist")
    if not path.is_file():
        raise _missing(uri, f"{path} is not a file")
    try:
        # Read-only: opening it the usual way would turn any file into an (empty) SQLite database.
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        raise _missing(uri, f"{path} is not a SQLite database ({exc})") from exc
    if "experiments" not in tables:
        raise _missing(uri, f"{path} has no MLflow tables")


def _check_database(uri: str, timeout: float) -> None:
    from sqlalchemy import create_engine, inspect

    scheme = uri.partition(":")[0].lower()
    connect_args: dict[str, Any] = {}
    if scheme.startswith(("postgresql", "mysql")):
        connect_args["connect_timeout"] = max(1, math.ceil(timeout))
    try:
        engine = create_engine(uri, connect_args=connect_args)
    except Exception as exc:
        raise StoreUnavailableError(f"tracking URI {display_uri(uri)} is invalid: {_short(exc)}") from exc
    try:
        with engine.connect() as conn:
            found = inspect(conn).has_table("experiments")
    except Exception as exc:
        raise StoreUnavailableError(
            f"tracking database {display_uri(uri)} is unreachable: {_short(exc)}"
        ) from exc
    finally:
        engine.dispose()
    if not found:
        raise _missing(uri, "the database has no MLflow tables")


def _check_folder(uri: str) -> None:
    from urllib.parse import unquote, urlparse

    path = Path(unquote(urlparse(uri).path) if uri.startswith("file:") else uri).absolute()
    if not path.is_dir():
        raise _missing(uri, f"folder {path} does not exist")
    # MLflow's file store keeps a `.trash` folder and one `<id>/meta.yaml` per experiment.
    if not (path / ".trash").is_dir() and not any(path.glob("*/meta.yaml")):
        raise _missing(uri, f"folder {path} is not an MLflow store (no experiments in it)")


def _client(uri: str) -> Any:
    # Check first: MlflowClient would create a missing store, or retry an unreachable server for
    # minutes.
    check_store(uri)
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        # Touch the store now so a broken URI fails here, with a clear message.
        client.search_experiments(max_results=1)
    except Exception as exc:
        raise StoreUnavailableError(
            f"tracking store {display_uri(uri)} cannot be read: {_short(exc)}"
        ) from exc
    return client


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# -- features and experiments ------------------------------------------------------------------
def _registry() -> dict[str, str]:
    """``{feature key: experiment name}`` from the feature registry, or the seed defaults."""
    try:
        from . import _features  # type: ignore[attr-defined,unused-ignore]

        return {str(k): str(v) for k, v in dict(_features.features()).items()}
    except Exception:
        # The registry is optional for reading: an older install or a partial checkout still reports.
        return dict(DEFAULT_FEATURES)


def experiment_name(feature: str) -> str:
    """The experiment name the sink uses for ``feature`` (unknown keys map to themselves)."""
    try:
        from . import _features  # type: ignore[attr-defined,unused-ignore]

        return str(_features.experiment_name(feature))
    except Exception:
        return DEFAULT_FEATURES.get(feature, feature)


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

    Lists the registered features (the four seed features by default) and every feature found in
    the store (tagged ``tracked_openai.feature``), registered or not.
    """
    client = _client(resolve_tracking_uri(tracking_uri))
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
        raise StoreUnavailableError(f"cannot list experiments: {_short(exc)}") from exc
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
    try:
        from ._runtime import settings

        known.add(str(settings.default_feature))
    except Exception:
        known.add("default")
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


def _time_filter(since: datetime | None, until: datetime | None, operation: str | None = None) -> str:
    parts = [f"tags.operation = '{_quote(operation)}'"] if operation else []
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
    page_size: int = _PAGE_SIZE,
    order_by: list[str] | None = None,
) -> Iterator[Any]:
    """Every active run of ``feature`` (all tracked features when ``None``), one page at a time."""
    from mlflow.entities import ViewType

    client = _client(resolve_tracking_uri(tracking_uri))
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
            raise StoreUnavailableError(f"cannot search runs: {_short(exc)}") from exc
        yield from page
        token = page.token
        if not token:
            return


def _iso_ms(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


# Large and host-internal (file paths, source lines): kept in MLflow, left out of list rows.
_HIDDEN_TAGS = frozenset({"error_traceback"})


def run_row(run: Any) -> dict[str, Any]:
    """A run as the flat dict the seed's API returned (``mlflow.search_runs`` column names).
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
    for key in ("metrics.execution_time", "metrics.confidence_score", "tags.status"):
        row.setdefault(key, None)
    return row


# Every run of a feature has no MLflow parent; the few without one that are not runs (calls
# written before their operation and not yet nested under it) are left out by ``_is_run``.
_NO_MLFLOW_PARENT = f"tags.`{PARENT_TAG}` IS NULL"


def _is_run(tags: Mapping[str, str]) -> bool:
    """A top-level run of its feature (see the module docstring)."""
    if PARENT_TAG not in tags and PARENT_RECORD_TAG not in tags:
        return True
    if tags.get("kind") != "operation":
        return False  # a call inside an operation (always of the same feature)
    parent_feature = tags.get(PARENT_FEATURE_TAG)
    if parent_feature is not None:
        return parent_feature != tags.get("feature")
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
    feature, calls outside any operation); with ``include_calls`` every run, nested ones too.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    runs = iter_runs(
        feature,
        tracking_uri=tracking_uri,
        filter_string="" if include_calls else _NO_MLFLOW_PARENT,
        page_size=min(limit, _PAGE_SIZE),
        order_by=["attributes.start_time DESC"],
    )
    rows = []
    for run in runs:
        if not include_calls and not _is_run(run.data.tags):
            continue
        rows.append(run_row(run))
        if len(rows) >= limit:
            break
    return rows


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
    call_cost: float = 0.0
    call_cost_n: int = 0
    call_exec_sum: float = 0.0
    call_exec_n: int = 0
    call_latencies: array[float] = field(default_factory=lambda: array("d"))
    unpriced_calls: int = 0
    tokens: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_TOKEN_METRICS, 0.0))

    def add_run(self, ok: bool, metrics: Mapping[str, float]) -> None:
        self.runs += 1
        self.successes += ok
        t = metrics.get("execution_time")
        if t is not None:
            self.exec_sum += t
            self.exec_n += 1
            self.latencies.append(t)
        c = metrics.get("confidence_score")
        if c is not None:
            self.conf_sum += c
            self.conf_n += 1

    def add_cost(self, cost: float) -> None:
        self.cost += cost

    def add_call(self, ok: bool, metrics: Mapping[str, float], unpriced: bool) -> None:
        self.calls += 1
        self.call_errors += not ok
        self.unpriced_calls += unpriced
        t = metrics.get("execution_time")
        if t is not None:
            self.call_exec_sum += t
            self.call_exec_n += 1
            self.call_latencies.append(t)
        cost = metrics.get("cost_usd")
        if cost is not None:
            self.call_cost += cost
            self.call_cost_n += 1
            self.cost += cost
        for name, metric in _TOKEN_METRICS.items():
            value = metrics.get(metric)
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
            "unpriced_calls": self.unpriced_calls,
            "prompt_tokens": int(self.tokens["prompt_tokens"]),
            "completion_tokens": int(self.tokens["completion_tokens"]),
        }


def _is_ok(run: Any) -> bool:
    status = run.data.tags.get("status")
    if status is not None:
        return bool(status == "success")
    return bool(run.info.status == "FINISHED")


def _is_unpriced(tags: Mapping[str, str], metrics: Mapping[str, float]) -> bool:
    """A call that should have a price and has none (same rule as an operation's roll-up):
    no ``cost_usd`` and either it succeeded or it reported usage. A failed call that never
    reached the model costs nothing and is not "unpriced"."""
    if "cost_usd" in metrics:
        return False
    if tags.get("cost_status") == "unpriced":
        return True
    return tags.get("status") == "success" or tags.get("usage_source", "none") != "none"


def _hand_logged_cost(tags: Mapping[str, str], metrics: Mapping[str, float]) -> float | None:
    """The ``cost_usd`` of a run that is not a call and has no calls rolled up into it (a cost
    logged by hand). An operation with calls carries their roll-up, counted with the calls."""
    if tags.get("kind") == "call" or metrics.get("call_count"):
        return None
    return metrics.get("cost_usd")


def _runs_then_traces(
    feature: str | None,
    tracking_uri: str | None,
    start: datetime | None,
    end: datetime | None,
    operation: str | None,
    page_size: int,
) -> Iterator[Any]:
    """The runs of the window, then the spans of our traces standing for records that are not
    runs (``traces`` and ``runs+traces`` modes, ``tracked_openai/mlflow/trace_reports.py``):
    each record once."""
    seen: set[str] = set()
    window = _time_filter(start, end, operation)
    for run in iter_runs(feature, tracking_uri=tracking_uri, filter_string=window, page_size=page_size):
        record_id = run.data.tags.get("record_id")
        if record_id:
            seen.add(record_id)
        yield run
    from .mlflow.trace_reports import iter_trace_runs

    client = _client(resolve_tracking_uri(tracking_uri))
    ids = _experiment_ids(client, feature)
    try:
        for span_run in iter_trace_runs(client, ids, start, end, operation, page_size):
            if span_run.data.tags.get("record_id") not in seen:
                yield span_run
    except Exception as exc:
        if "not supported" in str(exc).lower() or isinstance(exc, NotImplementedError):
            return  # a store without traces (a ./mlruns folder): runs are all there is
        raise StoreUnavailableError(f"cannot search traces: {_short(exc)}") from exc


def feature_metrics(
    feature: str | None = None,
    since: str | date | datetime | None = None,
    until: str | date | datetime | None = None,
    *,
    operation: str | None = None,
    tracking_uri: str | None = None,
    page_size: int = _PAGE_SIZE,
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
        The seed's fields ``total_runs``, ``avg_execution_time`` (s), ``success_rate`` (percent),
        ``avg_confidence``, ``total_cost`` (USD), plus ``total_calls``, ``failed_calls``,
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

    for run in _runs_then_traces(feature, tracking_uri, start, end, operation, page_size):
        tags = run.data.tags
        metrics = run.data.metrics
        ok = _is_ok(run)
        day = datetime.fromtimestamp((run.info.start_time or 0) / 1000, tz=UTC).date().isoformat()
        keys = {
            "operation": tags.get("operation") or "(none)",
            "day": day,
            "feature": tags.get("feature") or "(none)",
        }
        if _is_run(tags):
            total.add_run(ok, metrics)
            for dim, key in keys.items():
                group(dim, key).add_run(ok, metrics)
        hand_cost = _hand_logged_cost(tags, metrics)
        if hand_cost is not None:
            total.add_cost(hand_cost)
            for dim, key in keys.items():
                group(dim, key).add_cost(hand_cost)
        if tags.get("kind") == "call":
            unpriced = _is_unpriced(tags, metrics)
            total.add_call(ok, metrics, unpriced)
            for dim, key in keys.items():
                group(dim, key).add_call(ok, metrics, unpriced)
            model = tags.get("response_model") or tags.get("model") or run.data.params.get("model")
            group("model", model or "(unknown)").add_call(ok, metrics, unpriced)

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
        items = sorted(slices[dim].items()) if dim == "day" else sorted(
            slices[dim].items(), key=lambda kv: (-kv[1].cost, -kv[1].runs, kv[0])
        )
        result[f"by_{dim}"] = [{"key": k, **g.slice_row()} for k, g in items if g.runs or g.calls or g.cost]
    return result


def tracking_enabled() -> bool:
    """Whether tracking is on in this process (``MLFLOW_ENABLED`` / ``TRACKED_OPENAI_ENABLED``)."""
    try:
        from ._runtime import settings

        return bool(settings.enabled)
    except Exception:
        return os.environ.get("MLFLOW_ENABLED", "true").lower() not in ("0", "false", "no", "off")

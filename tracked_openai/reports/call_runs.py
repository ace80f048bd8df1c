"""Stored call records for repricing and reconciling: every call record once, whether the
store holds it as a run (``runs`` mode; calls outside operations in ``runs+traces``), as a span
of a trace (``traces``; calls inside operations in ``runs+traces``) or as both (calls outside
operations and late calls in ``runs+traces``): :class:`CallRecords`. Read fast (straight from
MLflow's tables on a SQL store, else ``search_runs`` / ``search_traces``), rebuilt as the
:class:`~tracked_openai.records.CallRecord` they were written from, and new figures written
beside the old ones.

Runs and spans are read in one order, ``(start ms, 0 for a run | 1 for a span, run id | span
key)``, so the place reached is one position a repricing can save and resume from. A record
stored both ways has the same start time on both (its span's may be 1 ms earlier: nanoseconds
cut to milliseconds against rounded), so the record ids of the last few milliseconds are enough
to count it once; they are part of the saved position."""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from ..mlflow.names import TOOL_CALLS_PREFIX, TOOL_USAGE_TAG
from ..mlflow.store import StoreUnavailableError, read_client, short_error
from ..mlflow.trace_reports import TraceRun
from ..records import CallRecord, Usage
from .call_spans import iter_call_spans
from .query import _experiment_ids, iter_runs

__all__ = [
    "CallRecords",
    "Figures",
    "Position",
    "call_from_run",
    "call_runs",
    "is_span",
    "ms",
    "sql_store",
    "write_figures",
]


# Usage metrics as the MLflow sink writes them (docs/mlflow-mapping.md) -> Usage fields.
_USAGE_METRICS = {
    "prompt_tokens": "input_tokens",
    "completion_tokens": "output_tokens",
    "cached_tokens": "cached_input_tokens",
    "reasoning_tokens": "reasoning_tokens",
    "audio_input_tokens": "audio_input_tokens",
    "audio_output_tokens": "audio_output_tokens",
    "image_input_tokens": "image_input_tokens",
    "image_output_tokens": "image_output_tokens",
    "images": "images",
    "characters": "characters",
    "cache_write_tokens": "cache_write_tokens",  # spans keep them; runs do not
}


# -- a stored run back into a call record ------------------------------------------------------
def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def call_from_run(run: Any) -> CallRecord:
    """The :class:`CallRecord` a call run was written from, as far as pricing needs it."""
    tags = run.data.tags
    metrics = run.data.metrics
    params: dict[str, Any] = dict(run.data.params)
    n = params.get("n")
    if isinstance(n, str) and n.isdigit():
        params["n"] = int(n)
    counts: dict[str, Any] = {f: _int(metrics.get(m)) for m, f in _USAGE_METRICS.items()}
    usage = Usage(**counts)
    usage.seconds = metrics.get("seconds")
    _tools_from_run(usage, tags, metrics)
    source = tags.get("usage_source", "response")
    return CallRecord(
        record_id=tags.get("record_id", run.info.run_id),
        started_at=(run.info.start_time or 0) / 1000,
        feature=tags.get("feature", "default"),
        endpoint=tags.get("endpoint", ""),
        provider=tags.get("provider", "openai"),
        model=tags.get("model") or params.get("model"),
        response_model=tags.get("response_model"),
        params=params,
        usage=usage,
        usage_source=source if source in ("response", "estimated", "none") else "response",
        service_tier=tags.get("service_tier"),
        status="error" if tags.get("status") == "error" else "success",
    )


def _tools_from_run(usage: Usage, tags: Mapping[str, str], metrics: Mapping[str, float]) -> None:
    """The hosted tools a call run used: its ``tool_usage`` tag, else the ``tool_calls_<kind>``
    metrics (counts only: a fee that depends on more is then left unpriced, never guessed)."""
    try:
        stored = json.loads(tags.get(TOOL_USAGE_TAG) or "null")
    except ValueError:
        stored = None
    if isinstance(stored, dict) and isinstance(stored.get("tool_calls"), dict):
        usage.tool_calls = {str(k): int(v) for k, v in stored["tool_calls"].items()}
        details = stored.get("tool_details")
        usage.tool_details = details if isinstance(details, dict) else {}
        return
    counts = {
        name.removeprefix(TOOL_CALLS_PREFIX): int(value)
        for name, value in metrics.items()
        if name.startswith(TOOL_CALLS_PREFIX) and value
    }
    if counts:
        usage.tool_calls = counts


# -- reading ------------------------------------------------------------------------------------
class _Info:
    __slots__ = ("end_time", "run_id", "start_time")

    def __init__(self, run_id: str, start_time: int | None, end_time: int | None) -> None:
        self.run_id, self.start_time, self.end_time = run_id, start_time, end_time


class _Data:
    __slots__ = ("metrics", "params", "tags")

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.metrics: dict[str, float] = {}
        self.params: dict[str, str] = {}


class _Run:
    """The parts of an ``mlflow.entities.Run`` repricing reads."""

    __slots__ = ("data", "info")

    def __init__(self, run_id: str, start_time: int | None, end_time: int | None) -> None:
        self.info = _Info(run_id, start_time, end_time)
        self.data = _Data()


def ms(when: datetime | None) -> int | None:
    return None if when is None else round(when.timestamp() * 1000)


def call_runs(
    uri: str,
    feature: str | None,
    since_ms: int | None,
    until_ms: int | None,
    page_size: int,
    after: tuple[int, str] | None = None,
) -> Iterator[Any]:
    """Active call runs started in ``[since_ms, until_ms)`` (and after ``after``, the
    ``(start ms, run id)`` of a run already read), in order of start time then run id: straight
    from MLflow's tables through its own ORM models on a SQL store, else through
    ``MlflowClient.search_runs``."""
    client = read_client(uri)
    store = sql_store(client)
    if store is None:
        lower = since_ms if after is None or (since_ms is not None and since_ms > after[0]) else after[0]
        parts = ["tags.kind = 'call'"]
        if lower is not None:
            parts.append(f"attributes.start_time >= {lower}")
        if until_ms is not None:
            parts.append(f"attributes.start_time < {until_ms}")
        runs = iter_runs(
            feature,
            tracking_uri=uri,
            filter_string=" AND ".join(parts),
            page_size=page_size,
            order_by=["attributes.start_time ASC"],
        )
        for run in _by_id_within_ms(runs):
            if after is None or ((run.info.start_time or 0), run.info.run_id) > after:
                yield run
        return
    ids = _experiment_ids(client, feature)
    if ids:
        yield from _sql_call_runs(store, ids, since_ms, until_ms, page_size, after)


def _by_id_within_ms(runs: Iterable[Any]) -> Iterator[Any]:
    """Runs ordered by start time (``search_runs``' order) reordered by run id within each
    millisecond, the order a saved position compares with."""
    group: list[Any] = []
    for run in runs:
        if group and (run.info.start_time or 0) != (group[0].info.start_time or 0):
            yield from sorted(group, key=lambda r: r.info.run_id)
            group = []
        group.append(run)
    yield from sorted(group, key=lambda r: r.info.run_id)


def _sql_call_runs(
    store: Any,
    experiment_ids: list[str],
    since_ms: int | None,
    until_ms: int | None,
    page_size: int,
    after: tuple[int, str] | None = None,
) -> Iterator[_Run]:
    """Keyset-paged reads of runs and their tags, latest metrics and params.

    ``search_runs`` builds full ORM objects for every run, tag, metric and param (profiled: over
    90% of a repricing's time); four plain queries per page read the same rows several times
    faster.
    """
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlRun, SqlTag
    from sqlalchemy import and_, or_, select

    is_call: Any = select(SqlTag.run_uuid).where(SqlTag.key == "kind", SqlTag.value == "call")
    base = [
        SqlRun.experiment_id.in_([int(i) for i in experiment_ids]),
        SqlRun.lifecycle_stage == "active",
        SqlRun.run_uuid.in_(is_call),
    ]
    if since_ms is not None:
        base.append(SqlRun.start_time >= since_ms)
    if until_ms is not None:
        base.append(SqlRun.start_time < until_ms)
    while True:
        where = list(base)
        if after is not None:
            where.append(
                or_(
                    SqlRun.start_time > after[0],
                    and_(SqlRun.start_time == after[0], SqlRun.run_uuid > after[1]),
                )
            )
        with store.ManagedSessionMaker() as session:
            rows = session.execute(
                select(SqlRun.run_uuid, SqlRun.start_time, SqlRun.end_time)
                .where(*where)
                .order_by(SqlRun.start_time, SqlRun.run_uuid)
                .limit(page_size)
            ).all()
            if not rows:
                return
            runs = {r[0]: _Run(r[0], r[1], r[2]) for r in rows}
            ids = list(runs)
            for key, value, run_id in session.execute(
                select(SqlTag.key, SqlTag.value, SqlTag.run_uuid).where(SqlTag.run_uuid.in_(ids))
            ):
                runs[run_id].data.tags[key] = value
            for key, value, run_id in session.execute(
                select(SqlLatestMetric.key, SqlLatestMetric.value, SqlLatestMetric.run_uuid).where(
                    SqlLatestMetric.run_uuid.in_(ids)
                )
            ):
                runs[run_id].data.metrics[key] = value
            for key, value, run_id in session.execute(
                select(SqlParam.key, SqlParam.value, SqlParam.run_uuid).where(SqlParam.run_uuid.in_(ids))
            ):
                runs[run_id].data.params[key] = value
        yield from runs.values()
        after = (rows[-1][1] or 0, rows[-1][0])


# -- runs and spans, each record once -------------------------------------------------------------
Position = tuple[int, int, str]  # (start ms, 0 run | 1 span, run id | span key)
_RUN, _SPAN = 0, 1
# How far apart (ms) the run and the span of one record can start (see the module docstring).
_SAME_RECORD_MS = 2


def is_span(run: Any) -> bool:
    """A call read from a trace's span (its new figures go to trace tags, not run metrics)."""
    return isinstance(run, TraceRun)


class CallRecords:
    """Every call record started in ``[since_ms, until_ms)`` once, runs and spans, in one order.

    Iterate it for the run-like records (spans as :class:`~tracked_openai.mlflow.trace_reports.TraceRun`).
    :meth:`state` is the place reached (JSON-able); a reader built with ``resume=state`` goes on
    after it. A store without traces (a ``./mlruns`` folder) has runs only.
    """

    def __init__(
        self,
        uri: str,
        feature: str | None,
        since_ms: int | None,
        until_ms: int | None,
        page_size: int = 1_000,
        *,
        resume: Mapping[str, Any] | None = None,
    ) -> None:
        self.uri, self.feature = uri, feature
        self.since_ms, self.until_ms, self.page_size = since_ms, until_ms, page_size
        self.position: Position | None = None
        self.recent: dict[str, int] = {}
        if resume:
            ms_, source, sub = resume["position"]
            self.position = (int(ms_), int(source), str(sub))
            self.recent = {str(k): int(v) for k, v in resume.get("recent", {}).items()}
        self._start = self.position

    def state(self) -> dict[str, Any]:
        return {"position": list(self.position) if self.position else None, "recent": dict(self.recent)}

    def _runs(self) -> Iterator[tuple[int, int, str, Any]]:
        since, after = self.since_ms, None
        if self._start is not None:
            ms_, source, sub = self._start
            if source == _RUN:
                after = (ms_, sub)
            elif since is None or ms_ + 1 > since:
                since = ms_ + 1  # runs of that millisecond come before its spans: all done
        for run in call_runs(self.uri, self.feature, since, self.until_ms, self.page_size, after):
            yield run.info.start_time or 0, _RUN, run.info.run_id, run

    def _spans(self) -> Iterator[tuple[int, int, str, Any]]:
        since, after = self.since_ms, None
        if self._start is not None:
            ms_, source, sub = self._start
            if source == _SPAN:
                after = (ms_, sub)
            elif since is None or ms_ > since:
                since = ms_
        try:
            client = read_client(self.uri)
            ids = _experiment_ids(client, self.feature)
            store = sql_store(client)
            spans = iter_call_spans(client, store, ids, since, self.until_ms, after, self.page_size)
            for ms_, key, run in spans:
                yield ms_, _SPAN, key, run
        except StoreUnavailableError:
            raise
        except Exception as exc:
            if isinstance(exc, NotImplementedError) or "not supported" in str(exc).lower():
                return  # a store without traces: runs are all there is
            raise StoreUnavailableError(f"cannot read traces: {short_error(exc)}") from exc

    def __iter__(self) -> Iterator[Any]:
        pruned_at: int | None = None
        for ms_, source, sub, run in heapq.merge(self._runs(), self._spans(), key=lambda item: item[:3]):
            self.position = (ms_, source, sub)
            if pruned_at != ms_:
                pruned_at = ms_
                self.recent = {k: v for k, v in self.recent.items() if v >= ms_ - _SAME_RECORD_MS}
            record_id = run.data.tags.get("record_id") or sub
            if record_id in self.recent:
                continue  # the same record's run or span, already read
            self.recent[record_id] = ms_
            yield run


def sql_store(client: Any) -> Any | None:
    """MLflow's own SQLAlchemy store behind ``client`` (SQLite, PostgreSQL, MySQL), if it is one."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store
    except Exception:
        return None
    return store if isinstance(store, SqlAlchemyStore) and hasattr(store, "ManagedSessionMaker") else None


Figures = tuple[list[tuple[str, float]], list[tuple[str, str]]]


def _write_sql(store: Any, todo: list[tuple[Any, Figures]], keys: Mapping[str, str]) -> None:
    """One transaction per page into MLflow's tables (through its own ORM table definitions).

    MLflow's ``log_batch`` makes three commits per run (measured: ~12 runs/s on embedded SQLite
    on a busy 2-core machine). Here a page is one commit of three multi-row inserts. A run is here
    because it has no ``cost_status`` of this version; rows of this version's keys left by an
    interrupted write through the MLflow client are replaced, nothing else is touched.
    """
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlTag
    from sqlalchemy import delete, insert

    ids = [run.info.run_id for run, _ in todo]
    ours = list(keys.values())
    metric_rows: list[dict[str, Any]] = []
    tag_rows: list[dict[str, Any]] = []
    for run, (metrics, tags) in todo:
        ts = run.info.end_time or run.info.start_time or 0
        run_id = run.info.run_id
        metric_rows.extend(
            {"key": k, "value": v, "timestamp": ts, "step": 0, "is_nan": False, "run_uuid": run_id}
            for k, v in metrics
        )
        tag_rows.extend({"key": k, "value": v, "run_uuid": run_id} for k, v in tags)
    try:
        # MLflow 3.x routes sessions marked as writes to the primary database.
        managed = store.ManagedSessionMaker(read_only=False)
    except TypeError:  # older MLflow: one kind of session
        managed = store.ManagedSessionMaker()
    with managed as session:
        for model in (SqlMetric, SqlLatestMetric, SqlTag):
            table = model.__table__
            session.execute(delete(table).where(table.c.run_uuid.in_(ids), table.c.key.in_(ours)))
        if metric_rows:
            session.execute(insert(SqlMetric.__table__), metric_rows)
            session.execute(insert(SqlLatestMetric.__table__), metric_rows)
        session.execute(insert(SqlTag.__table__), tag_rows)


def _write_client(client: Any, todo: list[tuple[Any, Figures]]) -> None:
    """Through ``MlflowClient.log_batch`` (a tracking server, or any other store), a few at once:
    over HTTP the time goes in per-request latency."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.entities import Metric, RunTag

    def one(item: tuple[Any, Figures]) -> None:
        run, (metrics, tags) = item
        ts = run.info.end_time or run.info.start_time or 0
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, v, ts, 0) for k, v in metrics],
            tags=[RunTag(k, v) for k, v in tags],
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in pool.map(one, todo):
            pass


def write_figures(client: Any, todo: list[tuple[Any, Figures]], keys: Mapping[str, str]) -> None:
    """Add each run's new metrics and tags: one SQL transaction on a SQL store, else log_batch."""
    store = sql_store(client)
    if store is not None:
        _write_sql(store, todo, keys)
    else:
        _write_client(client, todo)

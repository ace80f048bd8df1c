"""Stored call spans for repricing and reconciling: our call spans (``traces`` and
``runs+traces`` modes) read in start-time order, as the runs they stand for
(:func:`tracked_openai.mlflow.trace_reports.span_run`), and a repricing's figures written
beside them as trace tags (span attributes cannot be changed once written).

Each span comes with its place in the order, ``(start ms, span key)``: the span key is
``<start ns, 20 digits>/<trace id>/<span id>``, so comparing keys as text compares the spans'
order. On MLflow's SQL store the spans are read straight from its ``spans`` table (indexed by
experiment and start time) and their trace's ``repriced/`` tags from ``trace_tags``; elsewhere
(an ``mlflow server``) through ``search_traces``, traces oldest first, each span held back
until no trace still to come can hold an earlier one.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..mlflow.trace_reports import REPRICED_PREFIX, TraceRun, span_run

__all__ = ["SLACK_MS", "SpanItem", "iter_call_spans", "write_trace_tags"]

# A call starts after its operation's trace: traces are searched from this much before the
# first span wanted (as reports do), each span then kept by its own start time.
SLACK_MS = 6 * 3600 * 1000
_TRACE_PAGE = 500  # search_traces' largest page

SpanItem = tuple[int, str, TraceRun]  # (start ms, span key, the span as a run)


@dataclass(slots=True)
class _Span:
    """The parts of an MLflow span :func:`span_run` reads, from a ``spans`` table row."""

    trace_id: str
    span_id: str
    name: str
    start_time_ns: int
    end_time_ns: int | None
    attributes: dict[str, Any]


def _key(start_ns: int, trace_id: str, span_id: str) -> str:
    return f"{start_ns:020d}/{trace_id}/{span_id}"


# The attributes span_run reads (others, such as captured prompts, are not decoded at all).
_READ_PREFIXES = ("tracked_openai.", "mlflow.traceTag.")
_READ_KEYS = frozenset(
    {
        "mlflow.spanType",
        "mlflow.chat.tokenUsage",
        "mlflow.llm.cost",
        "mlflow.llm.provider",
        "gen_ai.request.model",
        "gen_ai.response.model",
    }
)


def _decoded(content: str) -> dict[str, Any]:
    """A stored span's attributes: MLflow keeps each value JSON-encoded inside the span's JSON.
    Decoding is most of the time a span takes to read (profiled): only what is read is."""
    raw = json.loads(content).get("attributes") or {}
    attrs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _READ_KEYS and not key.startswith(_READ_PREFIXES):
            continue
        if not isinstance(value, str):
            attrs[key] = value
        elif len(value) > 1 and value[0] == '"' == value[-1] and "\\" not in value:
            attrs[key] = value[1:-1]  # a plain string, the usual case
        else:
            try:
                attrs[key] = json.loads(value)
            except ValueError:
                attrs[key] = value
    return attrs


def iter_call_spans(
    client: Any,
    store: Any | None,
    experiment_ids: Sequence[str],
    since_ms: int | None,
    until_ms: int | None,
    after: tuple[int, str] | None,
    page_size: int,
) -> Iterator[SpanItem]:
    """Our call spans started in ``[since_ms, until_ms)`` and after ``after`` (the place
    ``(start ms, span key)`` of a span already read), in order. ``store``: MLflow's SQL store
    behind ``client``, if any."""
    if not experiment_ids:
        return
    if store is not None:
        # One ordered stream per experiment (each an index range scan on experiment and start
        # time, where one query over several experiments sorts them all on every page), merged.
        streams = [_sql_spans(store, e, since_ms, until_ms, after, page_size) for e in experiment_ids]
        yield from heapq.merge(*streams, key=lambda item: item[:2])
    else:
        yield from _searched_spans(client, experiment_ids, since_ms, until_ms, after)


def _sql_spans(
    store: Any,
    experiment_id: str,
    since_ms: int | None,
    until_ms: int | None,
    after: tuple[int, str] | None,
    page_size: int,
) -> Iterator[SpanItem]:
    """Keyset-paged reads of the spans table; operation (``CHAIN``) spans are left out in SQL,
    spans that are not ours (no record id) when mapped."""
    from mlflow.store.tracking.dbmodels.models import SqlSpan, SqlTraceTag
    from sqlalchemy import and_, or_, select

    base: list[Any] = [
        SqlSpan.experiment_id == int(experiment_id),
        or_(SqlSpan.type.is_(None), SqlSpan.type != "CHAIN"),
    ]
    if since_ms is not None:
        base.append(SqlSpan.start_time_unix_nano >= since_ms * 1_000_000)
    if until_ms is not None:
        base.append(SqlSpan.start_time_unix_nano < until_ms * 1_000_000)
    cursor: tuple[int, str, str] | None = None
    if after is not None:
        ns, trace_id, span_id = after[1].split("/", 2)
        cursor = (int(ns), trace_id, span_id)
    while True:
        where = list(base)
        if cursor is not None:
            ns, trace_id, span_id = cursor
            where.append(
                or_(
                    SqlSpan.start_time_unix_nano > ns,
                    and_(
                        SqlSpan.start_time_unix_nano == ns,
                        or_(
                            SqlSpan.trace_id > trace_id,
                            and_(SqlSpan.trace_id == trace_id, SqlSpan.span_id > span_id),
                        ),
                    ),
                )
            )
        with store.ManagedSessionMaker() as session:
            rows = session.execute(
                select(
                    SqlSpan.trace_id,
                    SqlSpan.span_id,
                    SqlSpan.experiment_id,
                    SqlSpan.name,
                    SqlSpan.start_time_unix_nano,
                    SqlSpan.end_time_unix_nano,
                    SqlSpan.content,
                )
                .where(*where)
                .order_by(SqlSpan.start_time_unix_nano, SqlSpan.trace_id, SqlSpan.span_id)
                .limit(page_size)
            ).all()
            if not rows:
                return
            trace_ids = list({r[0] for r in rows})
            tags: dict[str, dict[str, str]] = {}
            for request_id, key, value in session.execute(
                select(SqlTraceTag.request_id, SqlTraceTag.key, SqlTraceTag.value).where(
                    SqlTraceTag.request_id.in_(trace_ids), SqlTraceTag.key.like(REPRICED_PREFIX + "%")
                )
            ):
                tags.setdefault(request_id, {})[key] = value
        for trace_id, span_id, exp_id, name, start_ns, end_ns, content in rows:
            span = _Span(trace_id, span_id, name or "", start_ns, end_ns, _decoded(content))
            run = span_run(span, str(exp_id), tags.get(trace_id))
            if run is not None and run.data.tags.get("kind") == "call":
                yield start_ns // 1_000_000, _key(start_ns, trace_id, span_id), run
        last = rows[-1]
        cursor = (last[4], last[0], last[1])


def _searched_spans(
    client: Any,
    experiment_ids: Sequence[str],
    since_ms: int | None,
    until_ms: int | None,
    after: tuple[int, str] | None,
) -> Iterator[SpanItem]:
    """Through ``search_traces``: each experiment's spans in order, merged."""
    streams = [_experiment_spans(client, e, since_ms, until_ms, after) for e in experiment_ids]
    for ms, key, _, run in heapq.merge(*streams):
        yield ms, key, run


def _experiment_spans(
    client: Any,
    experiment_id: str,
    since_ms: int | None,
    until_ms: int | None,
    after: tuple[int, str] | None,
) -> Iterator[tuple[int, str, int, TraceRun]]:
    """One experiment's traces oldest first; a span is let out once the traces still to come
    start later than it (a trace starts no later than any of its spans)."""
    lower = since_ms
    if after is not None and (lower is None or after[0] > lower):
        lower = after[0]
    parts = []
    if lower is not None:
        parts.append(f"trace.timestamp_ms >= {lower - SLACK_MS}")
    if until_ms is not None:
        parts.append(f"trace.timestamp_ms < {until_ms}")
    held: list[tuple[int, str, int, TraceRun]] = []
    n = 0  # breaks ties in the heap without comparing runs
    token: str | None = None
    while True:
        page = client.search_traces(
            locations=[experiment_id],
            filter_string=" AND ".join(parts) or None,
            max_results=_TRACE_PAGE,
            order_by=["timestamp_ms ASC"],
            page_token=token,
        )
        for trace in page:
            start = trace.info.request_time
            while held and held[0][0] < start:
                yield heapq.heappop(held)
            tags: Mapping[str, str] = trace.info.tags or {}
            for span in trace.data.spans:
                run = span_run(span, experiment_id, tags)
                if run is None or run.data.tags.get("kind") != "call":
                    continue
                ms = span.start_time_ns // 1_000_000
                key = _key(span.start_time_ns, trace.info.trace_id, span.span_id)
                if since_ms is not None and ms < since_ms:
                    continue
                if until_ms is not None and ms >= until_ms:
                    continue
                if after is not None and (ms, key) <= after:
                    continue
                n += 1
                heapq.heappush(held, (ms, key, n, run))
        token = page.token
        if not token:
            break
    while held:
        yield heapq.heappop(held)


def write_trace_tags(client: Any, store: Any | None, todo: Sequence[tuple[str, str, str]]) -> None:
    """Set ``(trace id, key, value)`` trace tags: one transaction on MLflow's SQL store, else
    ``set_trace_tag`` a few at a time (over HTTP the time goes in per-request latency)."""
    if not todo:
        return
    if store is not None:
        from mlflow.store.tracking.dbmodels.models import SqlTraceTag
        from sqlalchemy import delete, insert, tuple_

        try:
            managed = store.ManagedSessionMaker(read_only=False)
        except TypeError:  # older MLflow: one kind of session
            managed = store.ManagedSessionMaker()
        with managed as session:
            table = SqlTraceTag.__table__
            pairs = [(trace_id, key) for trace_id, key, _ in todo]
            session.execute(delete(table).where(tuple_(table.c.request_id, table.c.key).in_(pairs)))
            session.execute(insert(table), [{"request_id": t, "key": k, "value": v} for t, k, v in todo])
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in pool.map(lambda item: client.set_trace_tag(*item), todo):
            pass

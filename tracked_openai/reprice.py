"""Recompute the cost of stored call records under another price table.

A call run keeps everything its price depends on: the usage (token, image, second and character
metrics), the models (``model``/``response_model`` tags), the endpoint, the service tier, the
request parameters (``size``, ``quality``, ``n``) and its start time. :func:`reprice` rebuilds
each call record from its run, prices it with another :class:`~tracked_openai.pricing.PriceBook`
(exactly as the exporter priced it then, history periods included), and sums the old and the new
cost by feature, model and day.

With ``write=True`` the new figures are stored **beside** the original, never over it, under
keys named after the new table's version (``<slug>`` is the version with characters MLflow
rejects in keys replaced by ``_``)::

    metrics  repriced/<slug>/cost_usd, repriced/<slug>/input_cost_usd, repriced/<slug>/output_cost_usd
    tags     repriced/<slug>/pricing_version (the version as written), repriced/<slug>/cost_status,
             repriced/<slug>/pricing_rule

A run that already carries ``repriced/<slug>/cost_status`` is not written again, so running the
same repricing twice writes nothing the second time. The original ``cost_usd``,
``pricing_version`` and ``cost_status`` stay as they were.

Runs are read oldest first, one page at a time; after each page the position (the start time
reached, and the runs already seen at that instant) and the running sums are saved to a small
JSON state file when one is given. An interrupted repricing started again with the same
arguments and state file goes on from there, and its final table covers every record.

Operation runs keep their rolled-up ``cost_usd``: only call runs are repriced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import reports
from .mlflow.names import TOOL_CALLS_PREFIX, TOOL_USAGE_TAG
from .mlflow.store import read_client
from .pricing import PriceBook, PricingError, load_price_book, price_record
from .records import CallRecord, Usage
from .reports.query import _experiment_ids

__all__ = [
    "RepriceResult",
    "Totals",
    "load_target_book",
    "repriced_keys",
    "reprice",
    "version_slug",
]

_BAD_KEY = re.compile(r"[^\w\-. /]")
_STATE_FORMAT = 1
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
}


def version_slug(version: str) -> str:
    """``version`` as it appears in metric and tag keys (MLflow allows ``\\w - . / space``)."""
    return _BAD_KEY.sub("_", version)[:150] or "_"


def repriced_keys(version: str) -> dict[str, str]:
    """The metric and tag keys a repricing to ``version`` writes, by role."""
    base = f"repriced/{version_slug(version)}"
    return {
        "cost_usd": f"{base}/cost_usd",
        "input_cost_usd": f"{base}/input_cost_usd",
        "output_cost_usd": f"{base}/output_cost_usd",
        "pricing_version": f"{base}/pricing_version",
        "cost_status": f"{base}/cost_status",
        "pricing_rule": f"{base}/pricing_rule",
    }


def load_target_book(spec: str | Path | PriceBook) -> PriceBook:
    """The price book to reprice with.

    ``spec`` is a built :class:`PriceBook`; ``shipped`` (or the version string of the shipped
    table) for the tables this installation ships; or a YAML price file or folder, applied over
    the shipped tables as ``TRACKED_OPENAI_PRICING`` would be. Raises :class:`PricingError`.
    """
    if isinstance(spec, PriceBook):
        return spec
    text = str(spec)
    shipped = load_price_book()
    if text in ("shipped", shipped.version):
        return shipped
    path = Path(text).expanduser()
    if not path.exists():
        raise PricingError(
            f"{text}: neither a price file or folder nor a known price table version "
            f"(known: shipped = {shipped.version})"
        )
    return load_price_book(path)


@dataclass
class Totals:
    """Old and new cost of a set of call records (USD, exact ``Decimal``)."""

    records: int = 0
    before_usd: Decimal = Decimal(0)
    after_usd: Decimal = Decimal(0)
    # Records with a cost before / after (a record without one adds nothing to the sums).
    priced_before: int = 0
    priced_after: int = 0
    changed: int = 0

    def add(self, before: Decimal | None, after: Decimal | None) -> None:
        self.records += 1
        if before is not None:
            self.before_usd += before
            self.priced_before += 1
        if after is not None:
            self.after_usd += after
            self.priced_after += 1
        if not _same(before, after):
            self.changed += 1

    @property
    def difference_usd(self) -> Decimal:
        return self.after_usd - self.before_usd

    @property
    def difference_pct(self) -> float | None:
        if not self.before_usd:
            return None
        return float(self.difference_usd / self.before_usd * 100)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "before_usd": str(self.before_usd),
            "after_usd": str(self.after_usd),
            "difference_usd": str(self.difference_usd),
            "difference_pct": self.difference_pct,
            "priced_before": self.priced_before,
            "priced_after": self.priced_after,
            "changed": self.changed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Totals:
        return cls(
            records=int(data["records"]),
            before_usd=Decimal(str(data["before_usd"])),
            after_usd=Decimal(str(data["after_usd"])),
            priced_before=int(data["priced_before"]),
            priced_after=int(data["priced_after"]),
            changed=int(data["changed"]),
        )


_DIMENSIONS = ("feature", "model", "day")


@dataclass
class RepriceResult:
    """What a repricing found (and wrote)."""

    pricing_version: str
    total: Totals = field(default_factory=Totals)
    by: dict[str, dict[str, Totals]] = field(default_factory=lambda: {d: {} for d in _DIMENSIONS})
    written: int = 0
    already_written: int = 0
    # Runs whose stored figures for this version differ from a fresh computation: the price
    # file changed without its version changing. Left as they are.
    conflicting: int = 0
    resumed: bool = False
    as_model: str | None = None

    def add(self, keys: Mapping[str, str], before: Decimal | None, after: Decimal | None) -> None:
        self.total.add(before, after)
        for dim, key in keys.items():
            table = self.by[dim]
            totals = table.get(key)
            if totals is None:
                totals = table[key] = Totals()
            totals.add(before, after)

    def rows(self, dim: str) -> list[dict[str, Any]]:
        """One row per key of ``dim`` (``feature``, ``model`` or ``day``)."""
        items = self.by[dim].items()
        ordered = (
            sorted(items)
            if dim == "day"
            else sorted(items, key=lambda kv: (-abs(kv[1].difference_usd), kv[0]))
        )
        return [{"key": k, **t.to_dict()} for k, t in ordered]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pricing_version": self.pricing_version,
            "as_model": self.as_model,
            **self.total.to_dict(),
            "written": self.written,
            "already_written": self.already_written,
            "conflicting": self.conflicting,
            "resumed": self.resumed,
            **{f"by_{dim}": self.rows(dim) for dim in _DIMENSIONS},
        }

    def _state(self) -> dict[str, Any]:
        return {
            "total": self.total.to_dict(),
            "by": {d: {k: t.to_dict() for k, t in table.items()} for d, table in self.by.items()},
            "written": self.written,
            "already_written": self.already_written,
            "conflicting": self.conflicting,
        }

    def _restore(self, data: Mapping[str, Any]) -> None:
        self.total = Totals.from_dict(data["total"])
        self.by = {d: {k: Totals.from_dict(t) for k, t in data["by"].get(d, {}).items()} for d in _DIMENSIONS}
        self.written = int(data["written"])
        self.already_written = int(data["already_written"])
        self.conflicting = int(data["conflicting"])
        self.resumed = True


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


def _before(metrics: Mapping[str, float]) -> Decimal | None:
    value = metrics.get("cost_usd")
    return None if value is None else Decimal(repr(value))


def _same(stored: float | Decimal | None, fresh: Decimal | None) -> bool:
    """Equal but for the rounding of a cost stored as a float metric."""
    if stored is None or fresh is None:
        return stored is None and fresh is None
    old = stored if isinstance(stored, Decimal) else Decimal(repr(stored))
    return abs(old - fresh) <= abs(fresh) * Decimal("1e-9") + Decimal("1e-15")


# -- the position of an interrupted run --------------------------------------------------------
def _state_key(uri: str, version: str, filters: Mapping[str, Any]) -> str:
    text = json.dumps({"uri": uri, "version": version, **filters}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_state(path: Path, key: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != _STATE_FORMAT or data.get("key") != key:
        return None  # another repricing's state: start from the beginning
    return data


def _save_state(path: Path, data: dict[str, Any]) -> None:
    # Written whole, then renamed: a kill mid-write leaves the previous position, never half of one.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


# -- repricing ---------------------------------------------------------------------------------
Progress = Callable[[int], None]


def reprice(
    pricing: str | Path | PriceBook,
    *,
    since: str | date | datetime | None = None,
    until: str | date | datetime | None = None,
    feature: str | None = None,
    model: str | None = None,
    as_model: str | None = None,
    write: bool = False,
    tracking_uri: str | None = None,
    state_path: str | Path | None = None,
    progress: Progress | None = None,
    page_size: int = 1_000,
) -> RepriceResult:
    """Recompute the cost of stored call runs under ``pricing`` and sum old and new cost.

    Args:
        pricing: A price file or folder (over the shipped tables), ``shipped``, the shipped
            table's version, or a :class:`PriceBook`.
        since: Only calls started at or after this (``YYYY-MM-DD``, ISO datetime, ``today``, ``7d``).
        until: Only calls started before this; a bare date includes that whole day.
        feature: Only this feature's calls.
        model: Only calls whose requested or served model is this name.
        as_model: Price every call as if this model had served it (what would these calls have
            cost on gpt-4.1-mini?). Not stored: cannot be combined with ``write``.
        write: Store the new figures beside the original ones (see the module docstring).
        tracking_uri: Store to read (default: ``MLFLOW_TRACKING_URI`` or MLflow's default).
        state_path: Where to keep the position and running sums between pages; a repricing
            with the same arguments and an existing state file resumes from it. Removed when the
            repricing completes.
        progress: Called with the number of records done after each page.
        page_size: Runs read per query.

    Raises:
        PricingError: ``pricing`` cannot be loaded.
        ValueError: bad dates, or ``as_model`` with ``write``.
        reports.StoreUnavailableError, reports.UnknownFeatureError: as for reports.
    """
    if as_model and write:
        raise ValueError("--as-model is a what-if: its figures are not stored (drop --write)")
    book = load_target_book(pricing)
    start = reports.parse_when(since)
    end = reports.parse_when(until, end=True)
    if start is not None and end is not None and start >= end:
        raise ValueError("since must be before until")
    uri = reports.resolve_tracking_uri(tracking_uri)
    keys = repriced_keys(book.version)
    result = RepriceResult(pricing_version=book.version, as_model=as_model)

    filters = {
        "since": start,
        "until": end,
        "feature": feature,
        "model": model,
        "as_model": as_model,
        "write": write,
    }
    state_file = Path(state_path) if state_path is not None else None
    state_key = _state_key(reports.display_uri(uri), book.version, filters)
    position_ms: int | None = None
    seen_at_position: set[str] = set()
    if state_file is not None:
        state = _load_state(state_file, state_key)
        if state is not None:
            result._restore(state["result"])
            position_ms = int(state["position_ms"])
            seen_at_position = set(state["seen_at_position"])
    if progress is not None and result.total.records:
        progress(result.total.records)

    # Bounds in whole milliseconds, as MLflow stores start times: the resumed position is the
    # exact start time of the last run done.
    lower_ms = _ms(start)
    if position_ms is not None and (lower_ms is None or position_ms > lower_ms):
        lower_ms = position_ms
    upper_ms = _ms(end)
    client: Any = None
    if write:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)

    page: list[Any] = []

    def finish_page() -> None:
        nonlocal position_ms, seen_at_position
        if not page:
            return
        if write:
            _write_page(client, page, keys, result)
        last = page[-1][0].info.start_time or 0
        ids_at_last = {run.info.run_id for run, *_ in page if (run.info.start_time or 0) == last}
        seen_at_position = (seen_at_position | ids_at_last) if last == position_ms else ids_at_last
        position_ms = last
        page.clear()
        if state_file is not None:
            _save_state(
                state_file,
                {
                    "format": _STATE_FORMAT,
                    "key": state_key,
                    "position_ms": position_ms,
                    "seen_at_position": sorted(seen_at_position),
                    "result": result._state(),
                },
            )
        if progress is not None:
            progress(result.total.records)

    for run in _call_runs(uri, feature, lower_ms, upper_ms, page_size):
        if (
            position_ms is not None
            and (run.info.start_time or 0) == position_ms
            and run.info.run_id in seen_at_position
        ):
            continue  # done before the interruption
        tags = run.data.tags
        if model is not None and model not in (tags.get("model"), tags.get("response_model")):
            continue
        record = call_from_run(run)
        shown_model = record.response_model or record.model or "(unknown)"
        if as_model:
            record.model = record.response_model = as_model
        price_record(record, book)
        before = _before(run.data.metrics)
        after = record.cost.total_usd if record.cost is not None else None
        day = datetime.fromtimestamp(record.started_at, tz=UTC).date().isoformat()
        result.add({"feature": record.feature, "model": shown_model, "day": day}, before, after)
        page.append((run, record))
        if len(page) >= page_size:
            finish_page()
    finish_page()
    if state_file is not None:
        state_file.unlink(missing_ok=True)
    return result


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


def _ms(when: datetime | None) -> int | None:
    return None if when is None else round(when.timestamp() * 1000)


def _call_runs(
    uri: str, feature: str | None, since_ms: int | None, until_ms: int | None, page_size: int
) -> Iterator[Any]:
    """Active call runs started in ``[since_ms, until_ms)``, oldest first: straight from MLflow's
    tables through its own ORM models on a SQL store, else through ``MlflowClient.search_runs``."""
    client = read_client(uri)
    store = _sql_store(client)
    if store is None:
        parts = ["tags.kind = 'call'"]
        if since_ms is not None:
            parts.append(f"attributes.start_time >= {since_ms}")
        if until_ms is not None:
            parts.append(f"attributes.start_time < {until_ms}")
        yield from reports.iter_runs(
            feature, tracking_uri=uri, filter_string=" AND ".join(parts), page_size=page_size,
            order_by=["attributes.start_time ASC"],
        )
        return
    ids = _experiment_ids(client, feature)
    if ids:
        yield from _sql_call_runs(store, ids, since_ms, until_ms, page_size)


def _sql_call_runs(
    store: Any, experiment_ids: list[str], since_ms: int | None, until_ms: int | None, page_size: int
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
    after: tuple[int, str] | None = None
    while True:
        where = list(base)
        if after is not None:
            where.append(or_(SqlRun.start_time > after[0],
                             and_(SqlRun.start_time == after[0], SqlRun.run_uuid > after[1])))
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


def _new_figures(
    run: Any, record: CallRecord, keys: Mapping[str, str], result: RepriceResult
) -> tuple[list[tuple[str, float]], list[tuple[str, str]]] | None:
    """The metrics and tags to add to ``run``, or ``None`` when it already has them."""
    stored = run.data.tags.get(keys["cost_status"])
    if stored is not None:
        fresh = record.cost.total_usd if record.cost is not None else None
        if stored == record.cost_status and _same(run.data.metrics.get(keys["cost_usd"]), fresh):
            result.already_written += 1
        else:
            result.conflicting += 1
        return None
    metrics: list[tuple[str, float]] = []
    if record.cost is not None:
        metrics = [
            (keys["cost_usd"], float(record.cost.total_usd)),
            (keys["input_cost_usd"], float(record.cost.input_usd)),
            (keys["output_cost_usd"], float(record.cost.output_usd)),
        ]
    tags = [(keys["pricing_version"], record.pricing_version or "")]
    if record.pricing_rule:
        tags.append((keys["pricing_rule"], record.pricing_rule[:8000]))
    # The status tag is what marks a run done: written last (MLflow's log_batch writes tags
    # after metrics), so a run interrupted half-way is written again, never skipped.
    tags.append((keys["cost_status"], record.cost_status))
    return metrics, tags


def _sql_store(client: Any) -> Any | None:
    """MLflow's own SQLAlchemy store behind ``client`` (SQLite, PostgreSQL, MySQL), if it is one."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store
    except Exception:
        return None
    return store if isinstance(store, SqlAlchemyStore) and hasattr(store, "ManagedSessionMaker") else None


def _write_page(
    client: Any, page: list[tuple[Any, CallRecord]], keys: Mapping[str, str], result: RepriceResult
) -> None:
    todo = []
    for run, record in page:
        figures = _new_figures(run, record, keys, result)
        if figures is not None:
            todo.append((run, figures))
    if not todo:
        return
    store = _sql_store(client)
    if store is not None:
        _write_sql(store, todo, keys)
    else:
        _write_client(client, todo)
    result.written += len(todo)


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

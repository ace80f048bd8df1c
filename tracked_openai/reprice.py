"""Recompute the cost of stored call records under another price table.

A call record keeps everything its price depends on, as a run (``runs`` mode) or as a span of a
trace (``traces`` mode; calls inside operations in the default ``runs+traces``): the usage
(token, image, second and character counts), the models, the endpoint, the service tier, the
request parameters (``size``, ``quality``, ``n``), the hosted tools used and its start time.
:func:`reprice` reads every call record once whatever the mode
(:class:`~tracked_openai.reports.call_runs.CallRecords`), rebuilds it, prices it with another
:class:`~tracked_openai.pricing.PriceBook` (exactly as the exporter priced it then, history
periods included), and sums the old and the new cost by feature, model and day.

With ``write=True`` the new figures are stored **beside** the original, never over it, under
keys named after the new table's version (``<slug>`` is the version with characters MLflow
rejects in keys replaced by ``_``). On a call run::

    metrics  repriced/<slug>/cost_usd, repriced/<slug>/input_cost_usd, repriced/<slug>/output_cost_usd
    tags     repriced/<slug>/pricing_version (the version as written), repriced/<slug>/cost_status,
             repriced/<slug>/pricing_rule

A span's attributes cannot be changed once written, so a call span's figures go to one tag of
its trace: ``repriced/<slug>/<record id>`` = ``{"cost_usd": ..., "input_cost_usd": ...,
"output_cost_usd": ..., "cost_status": ..., "pricing_version": ..., "pricing_rule": ...}``
(compact JSON, the rule cut to 1,000 characters: well under MLflow's 8,000 per trace tag value,
whatever the number of calls in the trace). Reports read it back as the run keys above.

A record that already carries ``repriced/<slug>/cost_status`` is not written again, so running
the same repricing twice writes nothing the second time. The original ``cost_usd``,
``pricing_version`` and ``cost_status`` (and span attributes) stay as they were.

Records are read oldest first, one page at a time; after each page the position (the place
reached in the one order of runs and spans) and the running sums are saved to a small JSON
state file when one is given. An interrupted repricing started again with the same arguments
and state file goes on from there, and its final table covers every record.

Operation runs and spans keep their rolled-up ``cost_usd``: only call records are repriced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import reports
from .mlflow.trace_reports import repriced_tag_key
from .pricing import PriceBook, PricingError, load_price_book, price_record
from .records import CallRecord
from .reports.call_runs import CallRecords, call_from_run, is_span, ms, sql_store, write_figures
from .reports.call_spans import write_trace_tags

__all__ = [
    "RepriceResult",
    "Totals",
    "load_target_book",
    "repriced_keys",
    "reprice",
    "version_slug",
]

_BAD_KEY = re.compile(r"[^\w\-. /]")
# 2: one position in the order of runs and spans (1 held a start time and the runs seen at it).
_STATE_FORMAT = 2
_MAX_SPAN_RULE = 1_000


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
    """Recompute the cost of stored call records (runs and trace spans, each once) under
    ``pricing`` and sum old and new cost.

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
        page_size: Records (runs, spans) read per query and per saved position.

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
    resume: dict[str, Any] | None = None
    if state_file is not None:
        state = _load_state(state_file, state_key)
        if state is not None:
            result._restore(state["result"])
            resume = state["reader"]
    if progress is not None and result.total.records:
        progress(result.total.records)

    client: Any = None
    if write:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
    reader = CallRecords(uri, feature, ms(start), ms(end), page_size, resume=resume)
    page: list[Any] = []

    def finish_page() -> None:
        if not page:
            return
        if write:
            _write_page(client, page, book.version, keys, result)
        page.clear()
        if state_file is not None:
            _save_state(
                state_file,
                {
                    "format": _STATE_FORMAT,
                    "key": state_key,
                    "reader": reader.state(),
                    "result": result._state(),
                },
            )
        if progress is not None:
            progress(result.total.records)

    for run in reader:
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


def _span_tag(record: CallRecord) -> str:
    """A call span's new figures as the value of its trace tag (see the module docstring)."""
    figures: dict[str, Any] = {
        "cost_status": record.cost_status,
        "pricing_version": record.pricing_version or "",
    }
    if record.cost is not None:
        figures["cost_usd"] = float(record.cost.total_usd)
        figures["input_cost_usd"] = float(record.cost.input_usd)
        figures["output_cost_usd"] = float(record.cost.output_usd)
    if record.pricing_rule:
        figures["pricing_rule"] = record.pricing_rule[:_MAX_SPAN_RULE]
    return json.dumps(figures, separators=(",", ":"))


def _write_page(
    client: Any,
    page: list[tuple[Any, CallRecord]],
    version: str,
    keys: Mapping[str, str],
    result: RepriceResult,
) -> None:
    runs, tags = [], []
    slug = version_slug(version)
    for run, record in page:
        figures = _new_figures(run, record, keys, result)
        if figures is None:
            continue
        if is_span(run):
            record_id = run.data.tags.get("record_id", "")
            tags.append((run.info.run_id, repriced_tag_key(slug, record_id), _span_tag(record)))
        else:
            runs.append((run, figures))
    if runs:
        write_figures(client, runs, keys)
    if tags:
        write_trace_tags(client, sql_store(client), tags)
    result.written += len(runs) + len(tags)

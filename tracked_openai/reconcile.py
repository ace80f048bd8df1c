"""Compare what tracked-openai recorded with what OpenAI counted and billed.

OpenAI's organization **Usage API** (``/v1/organization/usage/<kind>``) counts requests, tokens,
images, seconds and characters per day and model; its **Costs API** (``/v1/organization/costs``)
gives the billed USD per day and line item, and is the one that matches the invoice. Both need an
admin key (``OPENAI_ADMIN_KEY``; an ordinary API key is refused). Reference: OpenAI's API
reference, "Usage" and "Costs" (https://platform.openai.com/docs/api-reference/usage); the
documented bodies are in ``tests/fixtures/admin_api``.

:func:`reconcile` reads both for a date range, one page after another (``next_page``), reads our
call records for the same range (runs and trace spans, each once, whatever the ``mlflow_mode``
they were written in), and puts them side by side per UTC day x model: requests, tokens
(input + output) and USD, with the difference in percent. A row beyond the tolerance is a
problem, with the usual causes named (:data:`CAUSES`).

Models are matched by the name the response carried (``response_model``, e.g.
``gpt-4o-mini-2024-07-18``, which is the name OpenAI's usage carries), else the requested one;
a name without its date suffix on one side is matched to the one dated name of the same base on
the other. Costs line items read ``"<model>, <what>"`` (``gpt-4o-2024-08-06, input``); those that
name no model (``Image models``, tool fees) are rows of their own.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from . import reports
from .reports.aggregate import _is_unpriced

__all__ = [
    "CAUSES",
    "AdminAPIError",
    "Reconciliation",
    "Row",
    "Side",
    "fetch_costs",
    "fetch_usage",
    "reconcile",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# The usage kinds that are per-model calls a tracked client makes (vector store bytes and code
# interpreter sessions are not calls; moderations are free and not recorded).
USAGE_KINDS = ("completions", "embeddings", "images", "audio_speeches", "audio_transcriptions")
_GROUP_BY = {"completions": ("model", "project_id", "batch")}
_DAY = 86_400
_DATED = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
_MODEL_LIKE = re.compile(r"[A-Za-z0-9][\w.:/-]*")

CAUSES = {
    "missing_day": "no tracked call at all that day: tracking was off (MLFLOW_ENABLED=false), the "
    "store was unreachable and the spool not yet replayed, or the application did not run",
    "untracked": "calls made outside tracked clients: another service or script using a plain "
    "`openai` client with a key of this organization, the Playground, evals or fine-tuning jobs",
    "ours_only": "calls of another project or organization (narrow OpenAI's side with --project), "
    "or usage OpenAI has not reported yet (it can arrive hours late: compare closed days)",
    "fewer_theirs": "OpenAI counted less than we did: calls of another project under the same "
    "model, or usage not reported yet for a recent day",
    "more_theirs": "OpenAI counted more than we did: some calls of this model went through plain "
    "clients, or records were dropped (see the exporter's dropped counters and the spool)",
    "usd": "tokens agree but dollars do not: a price missing or out of date in our table (see "
    "`tracked-openai pricing show MODEL`), negotiated discounts or credits, or fees we do not "
    "price per call (hosted tools, Batch API jobs)",
    "unpriced": "some of our calls are unpriced (unknown model or missing rate): their cost is not "
    "in our total",
    "batch": "OpenAI's usage includes Batch API requests: we record them when their output is read "
    "through a tracked client or collected (`tracked-openai batches collect`)",
    "late": "a recent day: OpenAI's usage for it may still be arriving",
}


class AdminAPIError(RuntimeError):
    """The admin API refused or could not be reached (the message says which and why)."""


# -- OpenAI's side -----------------------------------------------------------------------------
Fetch = Callable[[str, dict[str, Any]], dict[str, Any]]


def http_fetch(admin_key: str, base_url: str = DEFAULT_BASE_URL, timeout: float = 30.0) -> Fetch:
    """A ``fetch(path, query)`` that GETs ``base_url + path`` with the admin key, retrying 429 and
    5xx answers three times (honouring ``Retry-After``)."""
    root = base_url.rstrip("/")

    def fetch(path: str, query: dict[str, Any]) -> dict[str, Any]:
        url = f"{root}{path}?{urllib.parse.urlencode(query, doseq=True)}"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {admin_key}"})
        for attempt in range(4):
            try:
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                if not isinstance(data, dict):
                    raise AdminAPIError(f"GET {path}: the answer is not a JSON object")
                return data
            except urllib.error.HTTPError as exc:
                if exc.code in (429, 500, 502, 503, 504) and attempt < 3:
                    wait = exc.headers.get("Retry-After") if exc.headers else None
                    time.sleep(min(float(wait) if wait and wait.isdigit() else 2.0**attempt, 30.0))
                    continue
                detail = _error_message(exc)
                hint = " (an admin key is needed: OPENAI_ADMIN_KEY)" if exc.code in (401, 403) else ""
                raise AdminAPIError(f"GET {path}: HTTP {exc.code}{hint}: {detail}") from None
            except (OSError, ValueError) as exc:
                if attempt < 3 and isinstance(exc, (TimeoutError, ConnectionError)):
                    time.sleep(2.0**attempt)
                    continue
                raise AdminAPIError(f"GET {path}: {type(exc).__name__}: {exc}") from None
        raise AdminAPIError(f"GET {path}: no answer after 4 attempts")  # pragma: no cover

    return fetch


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read().decode("utf-8"))
        return str(body.get("error", {}).get("message") or body)[:300]
    except Exception:
        return str(exc.reason)[:300]


def _pages(fetch: Fetch, path: str, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every bucket of every page (``has_more`` / ``next_page``)."""
    query = dict(query)
    seen: set[str] = set()
    while True:
        page = fetch(path, query)
        yield from page.get("data") or []
        cursor = page.get("next_page")
        if not page.get("has_more") or not cursor or cursor in seen:
            return
        seen.add(cursor)  # a server repeating a cursor must not loop us forever
        query["page"] = cursor


def _window(since: datetime, until: datetime, project: str | None) -> dict[str, Any]:
    query: dict[str, Any] = {
        "start_time": int(since.timestamp()),
        "end_time": int(until.timestamp()),
        "bucket_width": "1d",
    }
    if project:
        query["project_ids"] = [project]
    return query


def fetch_usage(
    fetch: Fetch, kind: str, since: datetime, until: datetime, project: str | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(UTC day, result)`` for every result of ``/organization/usage/<kind>``, by model."""
    query = _window(since, until, project)
    query["group_by"] = list(_GROUP_BY.get(kind, ("model", "project_id")))
    query["limit"] = 31
    for bucket in _pages(fetch, f"/organization/usage/{kind}", query):
        day = _day(bucket.get("start_time"))
        for result in bucket.get("results") or []:
            yield day, result


def fetch_costs(
    fetch: Fetch, since: datetime, until: datetime, project: str | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(UTC day, result)`` for every result of ``/organization/costs``, by line item."""
    query = _window(since, until, project)
    query["group_by"] = ["line_item", "project_id"]
    query["limit"] = 180
    for bucket in _pages(fetch, "/organization/costs", query):
        day = _day(bucket.get("start_time"))
        for result in bucket.get("results") or []:
            yield day, result


def _day(ts: Any) -> str:
    return datetime.fromtimestamp(int(ts or 0), tz=UTC).date().isoformat()


def _n(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


# -- the comparison ----------------------------------------------------------------------------
@dataclass
class Side:
    """What one side counted for a day and model."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    seconds: float = 0.0
    characters: int = 0
    usd: Decimal = Decimal(0)
    has_usd: bool = False
    unpriced: int = 0
    batch_requests: int = 0
    present: bool = False

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add_usd(self, amount: Decimal) -> None:
        self.usd += amount
        self.has_usd = True

    def merge(self, other: Side) -> None:
        for name in ("requests", "input_tokens", "output_tokens", "images", "seconds", "characters",
                     "unpriced", "batch_requests"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.usd += other.usd
        self.has_usd = self.has_usd or other.has_usd
        self.present = self.present or other.present

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "images": self.images,
            "seconds": self.seconds,
            "characters": self.characters,
            "usd": str(self.usd) if self.has_usd else None,
            "unpriced": self.unpriced,
            "batch_requests": self.batch_requests,
        }


def pct(ours: float | Decimal, theirs: float | Decimal) -> float | None:
    """How far ours is from theirs, in % of theirs (``None`` when both are 0; ``inf`` when
    OpenAI counted nothing and we did)."""
    if not theirs:
        return None if not ours else float("inf")
    return float((Decimal(str(ours)) - Decimal(str(theirs))) / Decimal(str(theirs)) * 100)


@dataclass
class Row:
    """One UTC day and model, both sides."""

    day: str
    model: str
    ours: Side = field(default_factory=Side)
    theirs: Side = field(default_factory=Side)
    causes: list[str] = field(default_factory=list)

    def unit(self) -> tuple[str, float, float]:
        """What this model's usage is counted in (tokens; images, seconds or characters where
        OpenAI counts those), and both sides' amounts."""
        for side in (self.theirs, self.ours):
            for name in ("tokens", "images", "seconds", "characters"):
                if getattr(side, name):
                    return name, getattr(self.ours, name), getattr(self.theirs, name)
        return "tokens", 0, 0

    def differences(self) -> dict[str, float | None]:
        _, ours, theirs = self.unit()
        out = {
            "requests": pct(self.ours.requests, self.theirs.requests),
            "usage": pct(ours, theirs),
        }
        # Dollars only where OpenAI's costs name this model (else there is nothing to compare).
        out["usd"] = pct(self.ours.usd, self.theirs.usd) if self.theirs.has_usd else None
        return out

    def beyond(self, tolerance: float) -> bool:
        return any(v is not None and abs(v) > tolerance for v in self.differences().values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "model": self.model,
            "ours": self.ours.to_dict(),
            "theirs": self.theirs.to_dict(),
            "unit": self.unit()[0],
            "difference_pct": self.differences(),
            "causes": list(self.causes),
        }


@dataclass
class Reconciliation:
    since: datetime
    until: datetime
    project: str | None
    tolerance: float
    rows: list[Row]
    # Per day: our total cost vs OpenAI's Costs API total (every line item).
    days: dict[str, tuple[Decimal, Decimal | None]]

    @property
    def problems(self) -> list[Row]:
        return [r for r in self.rows if r.beyond(self.tolerance)]

    @property
    def day_problems(self) -> list[str]:
        out = []
        for day, (ours, theirs) in sorted(self.days.items()):
            d = pct(ours, theirs) if theirs is not None else None
            if d is not None and abs(d) > self.tolerance:
                out.append(day)
        return out

    @property
    def ok(self) -> bool:
        return not self.problems and not self.day_problems

    def totals(self) -> tuple[Side, Side]:
        ours, theirs = Side(), Side()
        for row in self.rows:
            ours.merge(row.ours)
            theirs.merge(row.theirs)
        return ours, theirs

    def to_dict(self) -> dict[str, Any]:
        ours, theirs = self.totals()
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "project": self.project,
            "tolerance_pct": self.tolerance,
            "ok": self.ok,
            "ours": ours.to_dict(),
            "theirs": theirs.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
            "days": {
                d: {"ours_usd": str(o), "theirs_usd": None if t is None else str(t),
                    "difference_pct": None if t is None else pct(o, t)}
                for d, (o, t) in sorted(self.days.items())
            },
            "causes": {key: CAUSES[key] for key in sorted({c for r in self.rows for c in r.causes})},
        }


def _ours(
    since: datetime, until: datetime, tracking_uri: str | None, feature: str | None = None
) -> dict[tuple[str, str], Side]:
    from .reports.call_runs import CallRecords, ms

    sides: dict[tuple[str, str], Side] = {}
    uri = reports.resolve_tracking_uri(tracking_uri)
    # Runs and spans, each call once whatever the mlflow_mode it was written in.
    for run in CallRecords(uri, feature, ms(since), ms(until)):
        tags, metrics = run.data.tags, run.data.metrics
        used = tags.get("status") == "success" or tags.get("usage_source", "none") != "none"
        if not used:
            continue  # a failed call that never reached a model: OpenAI counts no request either
        day = datetime.fromtimestamp((run.info.start_time or 0) / 1000, tz=UTC).date().isoformat()
        model = tags.get("response_model") or tags.get("model") or run.data.params.get("model") or "(unknown)"
        side = sides.get((day, model))
        if side is None:
            side = sides[(day, model)] = Side(present=True)
        side.requests += 1
        side.input_tokens += int(metrics.get("prompt_tokens", 0))
        side.output_tokens += int(metrics.get("completion_tokens", 0))
        side.images += int(metrics.get("images", 0))
        side.seconds += float(metrics.get("seconds", 0.0))
        side.characters += int(metrics.get("characters", 0))
        cost = metrics.get("cost_usd")
        if cost is not None:
            side.add_usd(Decimal(repr(cost)))
        elif _is_unpriced(tags, metrics):
            side.unpriced += 1
    return sides


def _theirs(
    fetch: Fetch, since: datetime, until: datetime, project: str | None
) -> tuple[dict[tuple[str, str], Side], dict[tuple[str, str], Decimal], dict[str, Decimal]]:
    usage: dict[tuple[str, str], Side] = {}

    def side(day: str, model: str) -> Side:
        s = usage.get((day, model))
        if s is None:
            s = usage[(day, model)] = Side(present=True)
        return s

    for kind in USAGE_KINDS:
        for day, r in fetch_usage(fetch, kind, since, until, project):
            s = side(day, str(r.get("model") or f"({kind})"))
            requests = _n(r.get("num_model_requests"))
            s.requests += requests
            if r.get("batch") is True:
                s.batch_requests += requests
            if kind == "images":
                s.images += _n(r.get("images"))
            elif kind == "audio_speeches":
                s.characters += _n(r.get("characters"))
            elif kind == "audio_transcriptions":
                s.seconds += float(r.get("seconds") or 0)
            else:
                s.input_tokens += _n(r.get("input_tokens"))
                s.output_tokens += _n(r.get("output_tokens"))
    line_usd: dict[tuple[str, str], Decimal] = {}
    day_usd: dict[str, Decimal] = {}
    for day, r in fetch_costs(fetch, since, until, project):
        amount = r.get("amount") or {}
        value = Decimal(str(amount.get("value") or 0))
        item = str(r.get("line_item") or "(all line items)")
        name = item.split(",", 1)[0].strip()
        key = name if "," in item and _MODEL_LIKE.fullmatch(name) else item
        line_usd[(day, key)] = line_usd.get((day, key), Decimal(0)) + value
        day_usd[day] = day_usd.get(day, Decimal(0)) + value
    return usage, line_usd, day_usd


def _base(model: str) -> str:
    m = _DATED.match(model)
    return m.group("base") if m else model


def _match(ours: dict[tuple[str, str], Side], names: set[tuple[str, str]]) -> dict[tuple[str, str], Side]:
    """Our keys renamed to OpenAI's dated name where only the date suffix differs."""
    by_base: dict[tuple[str, str], list[str]] = {}
    for day, model in names:
        by_base.setdefault((day, _base(model)), []).append(model)
    out: dict[tuple[str, str], Side] = {}
    for (day, model), s in ours.items():
        key = (day, model)
        if key not in names:
            candidates = by_base.get((day, _base(model)), [])
            if len(candidates) == 1:
                key = (day, candidates[0])
        if key in out:
            out[key].merge(s)
        else:
            out[key] = s
    return out


def reconcile(
    since: str | date | datetime | None = None,
    until: str | date | datetime | None = None,
    *,
    fetch: Fetch,
    project: str | None = None,
    tolerance: float = 1.0,
    tracking_uri: str | None = None,
    today: date | None = None,
) -> Reconciliation:
    """Our records against OpenAI's Usage and Costs APIs, per UTC day x model.

    Args:
        since: First day (default: 7 days ago). Days are whole UTC days (OpenAI's buckets).
        until: Last day, included (default: yesterday, the last closed day).
        fetch: How to reach the admin API (:func:`http_fetch`, or a fake in tests).
        project: Only this OpenAI project's usage and costs (``proj_...``). Our records are not
            tagged by project: name the project your tracked application uses.
        tolerance: Largest difference, in percent, that is not a problem.
        tracking_uri: Our store (default: ``MLFLOW_TRACKING_URI`` or MLflow's default).
        today: The current UTC day (tests), for telling recent days apart.
    """
    today = today or datetime.now(UTC).date()
    start = reports.parse_when(since) or reports.parse_when(today - timedelta(days=7))
    end = reports.parse_when(until, end=True) or reports.parse_when(today)
    assert start is not None and end is not None
    # OpenAI's buckets are whole UTC days.
    start = start.replace(hour=0, minute=0, second=0, microsecond=0)
    if end != end.replace(hour=0, minute=0, second=0, microsecond=0):
        end = end.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    if start >= end:
        raise ValueError("since must be before until")

    usage, line_usd, day_usd = _theirs(fetch, start, end, project)
    ours = _match(_ours(start, end, tracking_uri), set(usage) | set(line_usd))
    keys = set(usage) | set(line_usd) | set(ours)
    rows = []
    for day, model in sorted(keys):
        row = Row(day, model, ours.get((day, model)) or Side(), usage.get((day, model)) or Side())
        if (day, model) in line_usd:
            row.theirs.add_usd(line_usd[(day, model)])
            row.theirs.present = True
        rows.append(row)
    our_days = {day for day, _ in ours}
    recent = (today - timedelta(days=1)).isoformat()
    for row in rows:
        if row.theirs.batch_requests:
            row.causes.append("batch")
        if row.ours.unpriced:
            row.causes.append("unpriced")
        if not row.beyond(tolerance):
            continue
        if not row.ours.present:
            row.causes.append("untracked" if row.day in our_days else "missing_day")
        elif not row.theirs.present:
            row.causes.append("ours_only")
        else:
            d = row.differences()
            counts = [v for v in (d["requests"], d["usage"]) if v is not None]
            if any(abs(v) > tolerance for v in counts):
                row.causes.append("fewer_theirs" if max(counts) > 0 else "more_theirs")
            elif d["usd"] is not None and abs(d["usd"]) > tolerance and "unpriced" not in row.causes:
                row.causes.append("usd")
        if row.day >= recent and "ours_only" in row.causes:
            row.causes.append("late")
    days: dict[str, tuple[Decimal, Decimal | None]] = {}
    for day in sorted({r.day for r in rows} | set(day_usd)):
        ours_usd = sum((r.ours.usd for r in rows if r.day == day), Decimal(0))
        days[day] = (ours_usd, day_usd.get(day))
    return Reconciliation(start, end, project, tolerance, rows, days)


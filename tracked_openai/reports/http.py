"""The REST endpoints, framework-free: each returns ``(http status, JSON body)``.

The FastAPI router (:mod:`tracked_openai.contrib.fastapi`) and the Django views
(:mod:`tracked_openai.contrib.django.views`) are thin adapters over these, so both serve the
same shapes (the field names of the AIFlow tracking API) and the same errors: 400 for a bad
query value, 404 for an unknown feature (with the known ones), 503 when the store is missing or
cannot be read (reading never creates a store). No stack trace ever reaches a response.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import reports
from .._config import settings
from .._errors import logger
from ..export.runtime import stats
from ..export.spool import Spool
from ..mlflow.store import StoreNotFoundError, StoreUnavailableError
from .query import UnknownFeatureError

__all__ = ["MAX_LIMIT", "experiments", "health", "metrics", "runs", "totals"]

MAX_LIMIT = 1000
Payload = tuple[int, dict[str, Any]]


def _unavailable(uri: str | None, exc: Exception) -> Payload:
    return 503, {
        "error": "store_not_found" if isinstance(exc, StoreNotFoundError) else "store_unavailable",
        "detail": str(exc),
        "tracking_uri": _safe_uri(uri),
    }


def _unknown_feature(exc: UnknownFeatureError) -> Payload:
    return 404, {
        "error": "unknown_feature",
        "detail": str(exc),
        "feature": exc.feature,
        "known_features": exc.known,
    }


def _bad_request(message: str) -> Payload:
    return 400, {"error": "bad_request", "detail": message}


def _safe_uri(uri: str | None) -> str:
    """The tracking URI without credentials (``https://user:token@host`` → ``https://host``)."""
    try:
        resolved = reports.resolve_tracking_uri(uri)
    except Exception:
        resolved = uri or ""
    return reports.display_uri(resolved)


def _guard(uri: str | None, fn: Any) -> Payload:
    try:
        return 200, fn()
    except StoreUnavailableError as exc:
        return _unavailable(uri, exc)
    except UnknownFeatureError as exc:
        return _unknown_feature(exc)
    except ValueError as exc:
        return _bad_request(str(exc))
    except Exception as exc:
        # A report bug must not turn into a traceback page; log it for the operator instead.
        logger.exception("tracked_openai: report endpoint failed")
        return 500, {"error": "internal_error", "detail": type(exc).__name__}


def experiments(uri: str | None = None) -> Payload:
    """``GET experiments/``: ``enabled``, ``tracking_uri``, ``experiments[key, name, experiment_id]``."""

    def body() -> dict[str, Any]:
        rows = reports.experiments(tracking_uri=reports.check_store(uri))
        return {"enabled": reports.tracking_enabled(), "tracking_uri": _safe_uri(uri), "experiments": rows}

    return _guard(uri, body)


def parse_limit(raw: Any, default: int = 10) -> int:
    """``limit`` from a query string (Django): an integer in 1..MAX_LIMIT or ``ValueError``."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"limit must be an integer, got {raw!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {value}")
    return value


def runs(uri: str | None = None, feature: str | None = None, limit: int = 10) -> Payload:
    """``GET runs/?feature=&limit=``: the newest top-level runs, AIFlow column names."""

    def body() -> dict[str, Any]:
        rows = reports.recent_runs(feature or None, limit, tracking_uri=reports.check_store(uri))
        return {"feature": feature or None, "tracking_uri": _safe_uri(uri), "count": len(rows), "runs": rows}

    return _guard(uri, body)


def metrics(
    uri: str | None = None, feature: str | None = None, since: str | None = None, until: str | None = None
) -> Payload:
    """``GET metrics/?feature=&since=&until=``: the AIFlow envelope ``{"feature", "metrics"}``;
    ``metrics`` is ``feature_metrics`` (the AIFlow fields first, then ours and the breakdowns)."""

    def body() -> dict[str, Any]:
        reports.parse_when(since)
        reports.parse_when(until, end=True)
        found = reports.feature_metrics(
            feature or None, since or None, until or None, tracking_uri=reports.check_store(uri)
        )
        return {"feature": feature or None, "tracking_uri": _safe_uri(uri), "metrics": found}

    return _guard(uri, body)


def totals(
    uri: str | None = None,
    feature: str | None = None,
    since: str | None = None,
    until: str | None = None,
    method: str | None = None,
) -> Payload:
    """``GET totals/?feature=&since=&until=&method=``: ``call_totals`` (calls, cost, tokens;
    ``by_feature``, ``by_model``, ``by_day``; ``method`` and ``fallback_reason``) plus
    ``tracking_uri``: the body of ``tracked-openai report --totals --format json``."""

    def body() -> dict[str, Any]:
        # Every query value is checked before the store is read: a bad one is a 400 either way.
        chosen = reports.parse_method(method)
        reports.parse_when(since)
        reports.parse_when(until, end=True)
        found = reports.call_totals(
            feature or None,
            since or None,
            until or None,
            tracking_uri=reports.check_store(uri),
            method=chosen,
        )
        return {"tracking_uri": _safe_uri(uri), **found}

    return _guard(uri, body)


def _spool() -> dict[str, Any]:
    try:
        spool = Spool(settings.spool_dir)
        files = spool.files()
        size = 0
        for path in files:
            try:
                size += Path(path).stat().st_size
            except OSError:
                pass
        return {"directory": str(spool.directory), "files": len(files), "bytes": size}
    except Exception as exc:
        return {"available": False, "detail": type(exc).__name__}


def health(uri: str | None = None) -> Payload:
    """``GET health/``: store reachable or not, exporter counters, spool size. 503 when the
    store is unreachable (so load balancers and probes see it), 200 otherwise."""
    store: dict[str, Any] = {"reachable": True, "detail": None}
    try:
        reports.check_store(uri)
    except StoreUnavailableError as exc:
        store = {"reachable": False, "detail": str(exc)}
    except Exception as exc:
        store = {"reachable": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    body = {
        "status": "ok" if store["reachable"] else "unavailable",
        "enabled": reports.tracking_enabled(),
        "tracking_uri": _safe_uri(uri),
        "store": store,
        "exporter": stats(),
        "spool": _spool(),
    }
    return (200 if store["reachable"] else 503), body

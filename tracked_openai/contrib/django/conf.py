"""``settings.TRACKED_OPENAI``: every ``tracked_openai.configure(...)`` option plus the Django
integration's own, checked by Django's system checks (``checks.py``) and applied by the app's
``ready()``.

A bad value never stops the host: ``manage.py check`` (and ``runserver``/``migrate``) report it
with its key and an id, and at start the value is left out (the library keeps its default, or the
environment's) with a log line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..._config import NUMBERS

__all__ = [
    "API_PERMISSIONS",
    "CONFIGURE_KEYS",
    "DJANGO_KEYS",
    "Problem",
    "configure_kwargs",
    "option",
    "problems",
    "raw_config",
    "tracking_uri",
]

# Options passed on to tracked_openai.configure() (see its docstring).
_BOOLS = ("enabled", "inject_stream_usage", "capture_content", "journal")
_STRINGS = ("default_feature", "experiment_prefix")
_PATHS = ("pricing", "spool_dir")
_BUDGET_KEYS = ("budgets", "ledger_url", "on_budget_alert", "budget_webhooks")
CONFIGURE_KEYS = frozenset(
    {*_BOOLS, *_STRINGS, *_PATHS, "features", "overflow", *NUMBERS, "mlflow_mode", *_BUDGET_KEYS}
)

API_PERMISSIONS = ("staff", "superuser", "authenticated", "any")
_USER_MODES = ("id", "hashed")

# The Django integration's own options and their defaults.
DJANGO_KEYS: dict[str, Any] = {
    "tracking_uri": None,  # the MLflow store (else MLFLOW_TRACKING_URI); views and commands read it too
    "start": True,  # start the exporter in AppConfig.ready (off the request path)
    "views": {},  # {url name pattern: feature | {"feature": ..., "operation": ...}}
    "request_id_header": "X-Request-ID",
    "user": None,  # None: no user tag; "id": the user's primary key; "hashed": a keyed hash of it
    "api_permission": "staff",  # who may read the REST views: see API_PERMISSIONS, or a callable
}
# Accepted for forward compatibility, not applied by this version.
_FUTURE_KEYS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Problem:
    """One finding about ``TRACKED_OPENAI``: ``level`` is ``"error"`` or ``"warning"``."""

    level: str
    id: str
    key: str | None
    message: str
    hint: str | None = None


def raw_config() -> Mapping[str, Any]:
    """``settings.TRACKED_OPENAI`` as given (``{}`` when unset or not a mapping)."""
    from django.conf import settings

    value = getattr(settings, "TRACKED_OPENAI", None)
    return value if isinstance(value, Mapping) else {}


def option(name: str) -> Any:
    """A Django-side option's value, its default when missing or invalid."""
    default = DJANGO_KEYS[name]
    config = raw_config()
    if name not in config:
        return default
    value = config[name]
    return default if _check(name, value) else value


def tracking_uri() -> str | None:
    """The store the views and commands read: ``TRACKED_OPENAI["tracking_uri"]``, else the older
    ``settings.TRACKED_OPENAI_TRACKING_URI``, else ``None`` (MLflow's own default)."""
    from django.conf import settings

    value = option("tracking_uri") or getattr(settings, "TRACKED_OPENAI_TRACKING_URI", None)
    return str(value) if value else None


def _number_problem(name: str, value: Any) -> str | None:
    spec = NUMBERS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, not {type(value).__name__}"
    if not math.isfinite(value):
        return "must be a finite number"
    if spec.kind is int and value != int(value):
        return "must be a whole number"
    if value < spec.low or (value == spec.low and not spec.low_inclusive) or value > spec.high:
        return f"is out of range ({spec.describe()})"
    return None


def _is_str_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _view_target_problem(target: Any) -> str | None:
    if isinstance(target, str) and target:
        return None
    if isinstance(target, Mapping) and isinstance(target.get("feature"), str) and target["feature"]:
        extra = set(target) - {"feature", "operation"}
        if extra:
            return f"has unknown keys {sorted(extra)} (feature, operation)"
        if "operation" in target and not isinstance(target["operation"], str):
            return "has an operation that is not a string"
        return None
    return "must be a feature name or {'feature': ..., 'operation': ...}"


def _check(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for option ``name`` (``None``: nothing)."""
    if name in _BOOLS or name == "start":
        return None if isinstance(value, bool) else f"must be True or False, not {value!r}"
    if name in _STRINGS:
        if not isinstance(value, str) or (name == "default_feature" and not value.strip()):
            return f"must be a{' non-empty' if name == 'default_feature' else ''} string, not {value!r}"
        return None
    if name in _PATHS:
        if value is None:
            return None
        if not isinstance(value, (str, os.PathLike)):
            return f"must be a path, not {type(value).__name__}"
        if name == "pricing" and not os.path.exists(value):
            return f"{os.fspath(value)!r} does not exist"
        return None
    if name in NUMBERS:
        return _number_problem(name, value)
    if name == "features":
        return None if _is_str_map(value) else "must be a dict of {feature key: experiment name} strings"
    if name == "overflow":
        return None if value in ("spool", "drop") else f"must be 'spool' or 'drop', not {value!r}"
    if name == "budgets":
        return _budgets_problem(value)
    if name == "ledger_url":
        return None if isinstance(value, str) and "://" in value else "must be a database URL string"
    if name == "on_budget_alert":
        return None if value is None or callable(value) else "must be a callable(alert)"
    if name == "budget_webhooks":
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, (str, Mapping)) for v in value)
        return None if ok else "must be a list of URLs or {url, slack, timeout} dicts"
    if name == "mlflow_mode":
        return (
            None
            if value in ("runs", "traces", "runs+traces")
            else (f"must be 'runs', 'traces' or 'runs+traces', not {value!r}")
        )
    if name in ("tracking_uri",):
        return None if value is None or (isinstance(value, str) and value) else "must be a URI string"
    if name == "request_id_header":
        return None if isinstance(value, str) and value.strip() else "must be a header name"
    if name == "user":
        return (
            None
            if value is None or value in _USER_MODES
            else f"must be None, 'id' or 'hashed', not {value!r}"
        )
    if name == "api_permission":
        if value in API_PERMISSIONS or callable(value):
            return None
        return f"must be one of {', '.join(API_PERMISSIONS)} or a callable(request) -> bool, not {value!r}"
    if name == "views":
        if not isinstance(value, Mapping):
            return "must be a dict of {url name pattern: feature}"
        for pattern, target in value.items():
            if not isinstance(pattern, str) or not pattern:
                return f"has a pattern that is not a string: {pattern!r}"
            problem = _view_target_problem(target)
            if problem is not None:
                return f"entry {pattern!r} {problem}"
        return None
    return None


def _budgets_problem(value: Any) -> str | None:
    """A budgets file is read now, so ``manage.py check`` shows its file:line errors."""
    if isinstance(value, (str, os.PathLike)):
        from ...budgets import BudgetsFileError, load_budgets_file

        try:
            load_budgets_file(os.fspath(value))
        except BudgetsFileError as exc:
            return f"is not a valid budgets file:\n{exc}"
        return None
    from ...budgets import Budget

    if isinstance(value, (list, tuple)) and all(isinstance(b, Budget) for b in value):
        return None
    return "must be a budgets file path or a list of tracked_openai.Budget"


def problems() -> list[Problem]:
    """Everything wrong with ``settings.TRACKED_OPENAI`` (ids ``tracked_openai.E00n``/``W00n``)."""
    from django.conf import settings

    config = getattr(settings, "TRACKED_OPENAI", None)
    if config is None:
        return []
    if not isinstance(config, Mapping):
        return [
            Problem(
                "error",
                "tracked_openai.E001",
                None,
                f"TRACKED_OPENAI must be a dict, not {type(config).__name__}",
            )
        ]
    found: list[Problem] = []
    known = CONFIGURE_KEYS | set(DJANGO_KEYS)
    for key, value in config.items():
        if key in _FUTURE_KEYS:
            found.append(
                Problem(
                    "warning",
                    "tracked_openai.W002",
                    key,
                    f"TRACKED_OPENAI[{key!r}] is not supported by this version of tracked-openai; ignored",
                )
            )
            continue
        if key not in known:
            found.append(
                Problem(
                    "warning",
                    "tracked_openai.W001",
                    str(key),
                    f"TRACKED_OPENAI has an unknown key {key!r}; ignored",
                    hint=f"Known keys: {', '.join(sorted(known))}",
                )
            )
            continue
        problem = _check(key, value)
        if problem is not None:
            found.append(Problem("error", "tracked_openai.E002", key, f"TRACKED_OPENAI[{key!r}] {problem}"))
    return found


def configure_kwargs(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The valid ``configure()`` options of ``config`` (default: ``settings.TRACKED_OPENAI``)."""
    config = raw_config() if config is None else config
    return {k: v for k, v in config.items() if k in CONFIGURE_KEYS and _check(k, v) is None}

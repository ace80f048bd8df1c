"""Settings read from the environment, overridable with :func:`tracked_openai.configure`.

A bad value (not a number, not finite, out of range, not a boolean) is logged and the default
used, whether it comes from the environment or from ``configure()``: configuration must never
stop the host application from starting, nor leave the exporter with a ``nan`` interval.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from ._errors import logger

__all__ = [
    "MLFLOW_MODES",
    "NUMBERS",
    "Settings",
    "check_mlflow_mode",
    "check_option",
    "load_settings",
    "settings",
]

_FALSE = {"0", "false", "no", "off", "disabled"}
_TRUE = {"1", "true", "yes", "on", "enabled"}

_DEFAULT_QUEUE_SIZE = 10_000
_DEFAULT_BATCH_SIZE = 256
_DEFAULT_FLUSH_INTERVAL = 1.0
_DEFAULT_EXIT_TIMEOUT = 5.0
_DEFAULT_RETRY_ATTEMPTS = 5
_DEFAULT_RETRY_INITIAL = 0.5
_DEFAULT_RETRY_MAX = 10.0
_DEFAULT_MLFLOW_TIMEOUT = 15.0
# What the default sinks write (tracked_openai/sinks/modes.py): runs, traces, or both.
MLFLOW_MODES = ("runs", "traces", "runs+traces")
_DEFAULT_MLFLOW_MODE = "runs+traces"


@dataclass(frozen=True)
class _Number:
    """One numeric setting: its type, default and accepted range (``low`` excluded unless
    ``low_inclusive``; the upper bounds keep waits below ``threading.TIMEOUT_MAX`` and retries
    finite)."""

    kind: type[int] | type[float]
    default: float
    low: float
    high: float
    low_inclusive: bool = False

    def describe(self) -> str:
        if self.low_inclusive:
            return f"{self.low:g} to {self.high:g}"
        return f"above {self.low:g}, up to {self.high:g}"


NUMBERS: dict[str, _Number] = {
    "queue_size": _Number(int, _DEFAULT_QUEUE_SIZE, 1, 10_000_000, low_inclusive=True),
    "batch_size": _Number(int, _DEFAULT_BATCH_SIZE, 1, 100_000, low_inclusive=True),
    "flush_interval": _Number(float, _DEFAULT_FLUSH_INTERVAL, 0, 3600),
    "exit_timeout": _Number(float, _DEFAULT_EXIT_TIMEOUT, 0, 3600, low_inclusive=True),
    "retry_attempts": _Number(int, _DEFAULT_RETRY_ATTEMPTS, 1, 100, low_inclusive=True),
    "retry_initial": _Number(float, _DEFAULT_RETRY_INITIAL, 0, 3600),
    "retry_max": _Number(float, _DEFAULT_RETRY_MAX, 0, 86_400),
    "mlflow_timeout": _Number(float, _DEFAULT_MLFLOW_TIMEOUT, 0, 3600),
}


@dataclass
class Settings:
    """Everything configurable. See the README's configuration table."""

    enabled: bool = True
    default_feature: str = "default"
    inject_stream_usage: bool = True
    capture_content: bool = False
    queue_size: int = _DEFAULT_QUEUE_SIZE
    batch_size: int = _DEFAULT_BATCH_SIZE
    flush_interval: float = _DEFAULT_FLUSH_INTERVAL
    exit_timeout: float = _DEFAULT_EXIT_TIMEOUT
    spool_dir: str | None = None
    retry_attempts: int = _DEFAULT_RETRY_ATTEMPTS
    retry_initial: float = _DEFAULT_RETRY_INITIAL
    retry_max: float = _DEFAULT_RETRY_MAX
    overflow: str = "spool"  # "spool" (never drop) | "drop" (drop and count when the queue is full)
    # Journal records on disk as the exporter takes them (see export/journal.py): a SIGKILL
    # then loses only what it had not taken yet.
    journal: bool = False
    pricing: str | None = None
    experiment_prefix: str = ""
    # Per-request timeout of the MLflow sink's own requests (ours only; see sinks/mlflow.py).
    mlflow_timeout: float = _DEFAULT_MLFLOW_TIMEOUT
    mlflow_mode: str = _DEFAULT_MLFLOW_MODE
    features: dict[str, str] = field(default_factory=dict)


def _number(label: str, raw: Any, spec: _Number) -> float:
    """``raw`` as a valid number for ``spec``, or its default (logged)."""
    default = spec.kind(spec.default)
    problem = None
    value: float | None = None
    if isinstance(raw, bool):
        problem = "is not a number"
    elif isinstance(raw, (int, float)):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip()
        try:
            value = int(text) if spec.kind is int else float(text)
        except ValueError:
            problem = "is not a whole number" if spec.kind is int else "is not a number"
    else:
        problem = "is not a number"
    if value is not None:
        if not math.isfinite(value):
            problem = "is not a finite number"
        elif spec.kind is int and value != int(value):
            problem = "is not a whole number"
        elif value < spec.low or (value == spec.low and not spec.low_inclusive) or value > spec.high:
            problem = f"is out of range ({spec.describe()})"
    if problem is not None or value is None:
        logger.warning("tracked_openai: %s %s; using the default %s", label, problem, default)
        return default
    return spec.kind(value)


def check_mlflow_mode(value: Any, label: str) -> str:
    """``value`` as one of :data:`MLFLOW_MODES` (``both`` = ``runs+traces``), else the default,
    logged."""
    text = str(value).strip().lower().replace(" ", "") if value is not None else ""
    if text in ("both", "traces+runs"):
        text = "runs+traces"
    if text in MLFLOW_MODES:
        return text
    logger.warning(
        "tracked_openai: %s is not one of %s; using %s", label, ", ".join(MLFLOW_MODES), _DEFAULT_MLFLOW_MODE
    )
    return _DEFAULT_MLFLOW_MODE


def check_option(name: str, value: Any) -> Any:
    """A ``configure()`` value for setting ``name``, checked like its environment variable."""
    spec = NUMBERS.get(name)
    if spec is not None:
        return _number(f"configure({name}={value!r})", value, spec)
    if name == "overflow":
        text = str(value).strip().lower()
        if text in ("spool", "drop"):
            return text
        logger.warning("tracked_openai: configure(overflow=%r) is not 'spool' or 'drop'; using spool", value)
        return "spool"
    if name == "mlflow_mode":
        return check_mlflow_mode(value, f"configure(mlflow_mode={value!r})")
    if name == "spool_dir":
        if value is None or isinstance(value, (str, os.PathLike)):
            return None if value is None else os.fspath(value)
        logger.warning("tracked_openai: configure(spool_dir=%r) is not a path; using the default", value)
        return None
    if name == "journal":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        logger.warning("tracked_openai: configure(journal=%r) is not a boolean; using off", value)
        return False
    if name == "experiment_prefix" and not isinstance(value, str):
        logger.warning("tracked_openai: configure(experiment_prefix=%r) is not a string; ignoring it", value)
        return ""
    return value


def _env_bool(name: str) -> tuple[bool | None, str | None]:
    """``(value, raw)``: ``value`` is ``None`` when unset or not a boolean (then ``raw`` says
    what was given, for the caller's message)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None, None
    value = raw.strip().lower()
    if value in _FALSE:
        return False, None
    if value in _TRUE:
        return True, None
    return None, raw


def _warn_not_bool(name: str, raw: str, outcome: str) -> None:
    logger.warning("tracked_openai: %s=%r is not a boolean (true/false); %s", name, raw, outcome)


def _env_number(name: str, setting: str) -> Any:
    raw = os.environ.get(name)
    spec = NUMBERS[setting]
    if raw is None or raw.strip() == "":
        return spec.kind(spec.default)
    return _number(f"{name}={raw!r}", raw, spec)


def load_settings() -> Settings:
    """Build settings from ``TRACKED_OPENAI_*`` and the AIFlow tracking API's ``MLFLOW_ENABLED``."""
    enabled = True
    bad_switches: list[tuple[str, str]] = []
    # Either switch turns tracking off; TRACKED_OPENAI_ENABLED wins when both are set.
    for name in ("MLFLOW_ENABLED", "TRACKED_OPENAI_ENABLED"):
        value, raw = _env_bool(name)
        if value is not None:
            enabled = value
        elif raw is not None:
            bad_switches.append((name, raw))
    for name, raw in bad_switches:
        _warn_not_bool(name, raw, f"ignoring it: tracking stays {'on' if enabled else 'off'}")
    flags: dict[str, bool] = {}
    for name, setting, default in (
        ("TRACKED_OPENAI_INJECT_STREAM_USAGE", "inject_stream_usage", True),
        ("TRACKED_OPENAI_CAPTURE_CONTENT", "capture_content", False),
        ("TRACKED_OPENAI_JOURNAL", "journal", False),
    ):
        value, raw = _env_bool(name)
        if raw is not None:
            _warn_not_bool(name, raw, f"using the default ({str(default).lower()})")
        flags[setting] = default if value is None else value
    raw_overflow = os.environ.get("TRACKED_OPENAI_OVERFLOW") or "spool"
    overflow = raw_overflow.strip().lower()
    if overflow not in ("spool", "drop"):
        logger.warning(
            "tracked_openai: TRACKED_OPENAI_OVERFLOW=%r is not 'spool' or 'drop'; using spool", raw_overflow
        )
        overflow = "spool"
    return Settings(
        enabled=enabled,
        default_feature=os.environ.get("TRACKED_OPENAI_DEFAULT_FEATURE") or "default",
        inject_stream_usage=flags["inject_stream_usage"],
        capture_content=flags["capture_content"],
        queue_size=_env_number("TRACKED_OPENAI_QUEUE_SIZE", "queue_size"),
        batch_size=_env_number("TRACKED_OPENAI_BATCH_SIZE", "batch_size"),
        flush_interval=_env_number("TRACKED_OPENAI_FLUSH_INTERVAL", "flush_interval"),
        exit_timeout=_env_number("TRACKED_OPENAI_EXIT_TIMEOUT", "exit_timeout"),
        spool_dir=os.environ.get("TRACKED_OPENAI_SPOOL_DIR") or None,
        retry_attempts=_env_number("TRACKED_OPENAI_RETRY_ATTEMPTS", "retry_attempts"),
        retry_initial=_env_number("TRACKED_OPENAI_RETRY_INITIAL", "retry_initial"),
        retry_max=_env_number("TRACKED_OPENAI_RETRY_MAX", "retry_max"),
        overflow=overflow,
        journal=flags["journal"],
        pricing=os.environ.get("TRACKED_OPENAI_PRICING") or None,
        experiment_prefix=os.environ.get("TRACKED_OPENAI_EXPERIMENT_PREFIX") or "",
        mlflow_timeout=_env_number("TRACKED_OPENAI_MLFLOW_TIMEOUT", "mlflow_timeout"),
        mlflow_mode=_env_mode(),
    )


def _env_mode() -> str:
    raw = os.environ.get("TRACKED_OPENAI_MLFLOW_MODE")
    if raw is None or not raw.strip():
        return _DEFAULT_MLFLOW_MODE
    return check_mlflow_mode(raw, f"TRACKED_OPENAI_MLFLOW_MODE={raw!r}")


# The process's settings: read by every layer, so this module imports nothing of ours but the
# logger (``configure()`` in ``export.runtime`` changes them in place).
settings: Settings = load_settings()

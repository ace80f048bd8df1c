"""Settings read from the environment, overridable with :func:`tracked_openai.configure`.

A bad environment value is logged and the default used: configuration must never stop the host
application from starting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ._errors import logger

__all__ = ["Settings", "load_settings"]

_FALSE = {"0", "false", "no", "off", "disabled"}
_TRUE = {"1", "true", "yes", "on", "enabled"}

_DEFAULT_QUEUE_SIZE = 10_000
_DEFAULT_BATCH_SIZE = 256
_DEFAULT_FLUSH_INTERVAL = 1.0
_DEFAULT_EXIT_TIMEOUT = 5.0
_DEFAULT_RETRY_ATTEMPTS = 5
_DEFAULT_RETRY_INITIAL = 0.5
_DEFAULT_RETRY_MAX = 10.0


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
    pricing: str | None = None
    experiment_prefix: str = ""
    features: dict[str, str] = field(default_factory=dict)


def _env_bool(name: str) -> bool | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip().lower()
    if value in _FALSE:
        return False
    if value in _TRUE:
        return True
    logger.warning("%s=%r is not a boolean; ignoring it", name, raw)
    return None


def _env_number(name: str, default: float, kind: type[int] | type[float]) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        logger.warning("%s=%r is not a number; defaulting to %s", name, raw, default)
        return default
    if value <= 0:
        logger.warning("%s=%r must be positive; defaulting to %s", name, raw, default)
        return default
    return value


def load_settings() -> Settings:
    """Build settings from ``TRACKED_OPENAI_*`` and the seed's ``MLFLOW_ENABLED``."""
    enabled = True
    # Either switch turns tracking off; TRACKED_OPENAI_ENABLED wins when both are set.
    for name in ("MLFLOW_ENABLED", "TRACKED_OPENAI_ENABLED"):
        value = _env_bool(name)
        if value is not None:
            enabled = value
    inject = _env_bool("TRACKED_OPENAI_INJECT_STREAM_USAGE")
    capture = _env_bool("TRACKED_OPENAI_CAPTURE_CONTENT")
    overflow = (os.environ.get("TRACKED_OPENAI_OVERFLOW") or "spool").strip().lower()
    if overflow not in ("spool", "drop"):
        logger.warning("TRACKED_OPENAI_OVERFLOW=%r is not 'spool' or 'drop'; defaulting to spool", overflow)
        overflow = "spool"
    return Settings(
        enabled=enabled,
        default_feature=os.environ.get("TRACKED_OPENAI_DEFAULT_FEATURE") or "default",
        inject_stream_usage=True if inject is None else inject,
        capture_content=bool(capture),
        queue_size=int(_env_number("TRACKED_OPENAI_QUEUE_SIZE", _DEFAULT_QUEUE_SIZE, int)),
        batch_size=int(_env_number("TRACKED_OPENAI_BATCH_SIZE", _DEFAULT_BATCH_SIZE, int)),
        flush_interval=_env_number("TRACKED_OPENAI_FLUSH_INTERVAL", _DEFAULT_FLUSH_INTERVAL, float),
        exit_timeout=_env_number("TRACKED_OPENAI_EXIT_TIMEOUT", _DEFAULT_EXIT_TIMEOUT, float),
        spool_dir=os.environ.get("TRACKED_OPENAI_SPOOL_DIR") or None,
        retry_attempts=int(_env_number("TRACKED_OPENAI_RETRY_ATTEMPTS", _DEFAULT_RETRY_ATTEMPTS, int)),
        retry_initial=_env_number("TRACKED_OPENAI_RETRY_INITIAL", _DEFAULT_RETRY_INITIAL, float),
        retry_max=_env_number("TRACKED_OPENAI_RETRY_MAX", _DEFAULT_RETRY_MAX, float),
        overflow=overflow,
        pricing=os.environ.get("TRACKED_OPENAI_PRICING") or None,
        experiment_prefix=os.environ.get("TRACKED_OPENAI_EXPERIMENT_PREFIX") or "",
    )

"""Feature registry: feature key → MLflow experiment name.

The four features of the AIFlow tracking decorators/API are registered by default.
``register_feature(key, name)`` (or ``tracked_openai.configure(features={...})``) adds or renames
one; a key nobody registered still works and gets an experiment named after the key (plugin
style: a new feature needs no setup).
"""

from __future__ import annotations

import threading

from .._config import settings

__all__ = ["DEFAULT_FEATURES", "experiment_name", "features", "register_feature"]

DEFAULT_FEATURES: dict[str, str] = {
    "pid_verification": "P&ID Design Verification",
    "pfd_conversion": "PFD to P&ID Conversion",
    "crs_analysis": "CRS Document Analysis",
    "visual_generation": "Visual Diagram Generation",
}

_registry: dict[str, str] = dict(DEFAULT_FEATURES)
_lock = threading.Lock()


def register_feature(key: str, name: str) -> None:
    """Map feature ``key`` to the experiment ``name`` (replaces an earlier mapping)."""
    if not key or not name:
        raise ValueError("register_feature() needs a non-empty key and name")
    with _lock:
        _registry[str(key)] = str(name)


def features() -> dict[str, str]:
    """Every known feature key and its experiment name (registry, then ``configure(features=)``)."""
    with _lock:
        merged = dict(_registry)
    merged.update(settings.features)
    return merged


def experiment_name(feature: str, prefix: str | None = None) -> str:
    """The experiment a feature's runs go to: registered name (or the key), with the prefix.

    ``prefix`` defaults to ``settings.experiment_prefix``; it is joined with ``/`` unless it
    already ends with a separator (``/``, ``-``, ``_``, ``:``, `` ``).
    """
    name = settings.features.get(feature)
    if name is None:
        with _lock:
            name = _registry.get(feature, feature)
    if prefix is None:
        prefix = settings.experiment_prefix
    if not prefix:
        return name
    return f"{prefix}{name}" if prefix[-1] in "/-_: " else f"{prefix}/{name}"

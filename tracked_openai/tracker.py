"""The AIFlow tracking API's ``mlflow_tracker`` object, kept for code that uses it directly.

``mlflow_tracker.log_experiment_result(...)`` builds an :class:`OperationRecord` and submits it
through the exporter like every other record: it returns at once, never raises, and the run
appears in the feature's experiment when the exporter writes it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from ._config import settings
from ._errors import internal_errors
from .export import runtime
from .mlflow.names import experiment_name, features, numeric_metrics
from .records import OperationRecord, tag_value

__all__ = ["MlflowTracker", "mlflow_tracker"]


class MlflowTracker:
    """AIFlow-compatible facade over the exporter and the MLflow sink settings."""

    @property
    def enabled(self) -> bool:
        """``False`` when ``MLFLOW_ENABLED``/``TRACKED_OPENAI_ENABLED`` (or ``configure``) says so."""
        return settings.enabled

    @property
    def tracking_uri(self) -> str | None:
        """The tracking URI of the configured MLflow sink, else MLflow's resolved default."""
        with internal_errors("tracker.tracking_uri"):
            sinks = runtime.configured_sinks()
            if sinks is not None:
                for sink in sinks:
                    uri = getattr(sink, "tracking_uri", None)
                    if isinstance(uri, str):
                        return uri
            import mlflow

            return str(mlflow.get_tracking_uri())
        return None

    @property
    def experiments(self) -> dict[str, str]:
        """Feature key → experiment name (defaults, registered and configured features)."""
        return {key: experiment_name(key) for key in features()}

    def log_experiment_result(
        self,
        feature: str,
        operation: str,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one manual result as an operation run in ``feature``'s experiment.

        ``confidence`` is stored as ``confidence_score`` (the AIFlow metric name); non-numeric
        metrics are ignored, as MLflow would reject them.
        """
        if not settings.enabled:
            return
        with internal_errors("tracker.log_experiment_result"):
            frame = sys._getframe(1)
            function = frame.f_code.co_qualname
            numeric = numeric_metrics(metrics or {})
            record = OperationRecord(
                started_at=time.time(),
                duration_s=None,  # a manual result has no measured duration of its own
                feature=feature,
                operation=operation,
                function=None if function == "<module>" else function,
                tags={str(k): tag_value(v) for k, v in (tags or {}).items()},
                params=dict(params or {}),
                metrics=numeric,
            )
            record.tags.setdefault("tracking_type", "manual")
            runtime.submit(record)


mlflow_tracker = MlflowTracker()

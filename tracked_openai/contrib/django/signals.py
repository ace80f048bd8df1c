"""``track_model_saves``: one operation record per saved model instance, via ``post_save``.

The AIFlow tracking API recorded its P&ID reports, PFD conversions and CRS documents this way (issue
count, confidence, processing time); here the numbers come from a ``metrics`` callable and the
record goes through the exporter like every other record (MLflow run in the feature's
experiment, never blocking the save).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from django.db.models.signals import post_save

from ..._config import settings
from ..._errors import internal_errors
from ...export import runtime
from ...mlflow.names import numeric_metrics
from ...records import OperationRecord, new_record_id, tag_value

__all__ = ["track_model_saves"]

MetricsFn = Callable[[Any], Mapping[str, Any]]
# Metric names that carry the processing time of the saved object (seconds).
_DURATION_KEYS = ("execution_time", "processing_time")


def track_model_saves(
    model: type[Any],
    feature: str,
    operation: str | None = None,
    metrics: MetricsFn | None = None,
    *,
    created_only: bool = False,
    tags: Mapping[str, str] | None = None,
) -> Callable[[], bool]:
    """Record one operation per save of ``model`` instances.

    Args:
        model: The Django model class.
        feature: Feature key the records belong to (``"pid_verification"``).
        operation: Operation name (default ``"<app_label>.<model>.save"``).
        metrics: ``instance -> {name: number}``; non-numbers are skipped, ``confidence`` is
            stored as ``confidence_score``, ``processing_time``/``execution_time`` also becomes
            the record's duration. A raising callable is logged, never breaks the save.
        created_only: Record only the first save (creation) of each instance.
        tags: Extra tags for every record.

    Returns:
        A function that disconnects the receiver.
    """
    label = f"{model._meta.app_label}.{model._meta.model_name}"
    op_name = operation or f"{label}.save"
    extra_tags = {str(k): tag_value(v) for k, v in (tags or {}).items()}

    def receiver(sender: type[Any], instance: Any, created: bool, **kwargs: Any) -> None:
        if not settings.enabled or (created_only and not created):
            return
        with internal_errors("django.track_model_saves"):
            values = numeric_metrics(dict(metrics(instance)), parse=True) if metrics is not None else {}
            duration = next((values[k] for k in _DURATION_KEYS if k in values), 0.0)
            record = OperationRecord(
                record_id=new_record_id(),
                started_at=time.time() - duration,
                duration_s=duration,
                feature=feature,
                operation=op_name,
                function=f"{model.__module__}.{model.__qualname__}.save",
                tags={
                    **extra_tags,
                    "django_model": label,
                    "object_pk": str(instance.pk),
                    "created": "true" if created else "false",
                    "tracking_type": "django_model_save",
                },
                metrics=values,
            )
            runtime.submit(record)

    uid = f"tracked_openai:{label}:{feature}:{op_name}"
    post_save.connect(receiver, sender=model, weak=False, dispatch_uid=uid)

    def disconnect() -> bool:
        return bool(post_save.disconnect(sender=model, dispatch_uid=uid))

    return disconnect

"""Django integration (extra ``tracked-openai[django]``).

- Add ``"tracked_openai.contrib.django"`` to ``INSTALLED_APPS`` (optional: only needed for the
  app label) and mount the REST endpoints::

      path("api/v1/mlflow/tracking/", include("tracked_openai.contrib.django.urls"))

  ``settings.TRACKED_OPENAI_TRACKING_URI`` picks the store (default: ``MLFLOW_TRACKING_URI``).
- Track saves of your models (one operation record per save)::

      from tracked_openai.contrib.django import track_model_saves
      track_model_saves(PidReport, "pid_verification", operation="report_saved",
                        metrics=lambda r: {"issue_count": r.issue_count, "confidence": r.confidence})
"""

from __future__ import annotations

from typing import Any

__all__ = ["track_model_saves"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (e.g. from settings.py) must not import Django's signal
    # machinery before Django is configured.
    if name == "track_model_saves":
        from .signals import track_model_saves

        return track_model_saves
    raise AttributeError(name)

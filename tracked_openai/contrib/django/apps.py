"""Django app config for ``tracked_openai.contrib.django``: applies ``settings.TRACKED_OPENAI``
and starts the exporter at start-up, so no request pays for it."""

from __future__ import annotations

import os

from django.apps import AppConfig
from django.core import checks


class TrackedOpenAIConfig(AppConfig):
    name = "tracked_openai.contrib.django"
    label = "tracked_openai"
    verbose_name = "tracked-openai"

    def ready(self) -> None:
        from ... import _runtime
        from ..._errors import internal_errors, logger
        from . import conf
        from .checks import check_settings

        checks.register(check_settings, "tracked_openai")
        with internal_errors("django.ready"):
            for problem in conf.problems():
                # Reported in full by `manage.py check`; the app starts with the default.
                logger.warning("tracked_openai: %s (%s)", problem.message, problem.id)
            uri = conf.option("tracking_uri")
            if uri:
                # The default MLflow sink, and MLflow itself, read the store from the environment.
                os.environ["MLFLOW_TRACKING_URI"] = str(uri)
            kwargs = conf.configure_kwargs()
            if kwargs:
                _runtime.configure(**kwargs)
            if conf.option("start"):
                _runtime.start(wait=False)

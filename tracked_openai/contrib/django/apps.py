"""Django app config for ``tracked_openai.contrib.django``: applies ``settings.TRACKED_OPENAI``
and starts the exporter at start-up, so no request pays for it."""

from __future__ import annotations

import os
import time

from django.apps import AppConfig
from django.core import checks

# Longest the forks of a process wait, all together, for the exporter's start-up (see
# _wait_for_start_before_fork): a store that can't be reached doesn't slow every fork.
FORK_WAIT_S = 30.0
_fork_hook = False
_fork_budget = FORK_WAIT_S


def _before_fork() -> None:
    from ..._errors import internal_errors
    from ...export import runtime

    global _fork_budget
    if _fork_budget <= 0:
        return
    with internal_errors("django.before_fork"):
        t0 = time.monotonic()
        runtime.start(wait=True, timeout=_fork_budget)
        _fork_budget -= time.monotonic() - t0


def _wait_for_start_before_fork() -> None:
    """Servers that load the app and then fork (gunicorn --preload, uWSGI, Celery's prefork
    pool) must not fork while the exporter's thread is importing MLflow: the child would inherit
    half-imported modules whose import lock belongs to a thread it doesn't have. A fork waits
    for the start-up to end (at once when it has, as it usually has by then)."""
    global _fork_hook
    if not _fork_hook:
        _fork_hook = True
        os.register_at_fork(before=_before_fork)


class TrackedOpenAIConfig(AppConfig):
    name = "tracked_openai.contrib.django"
    label = "tracked_openai"
    verbose_name = "tracked-openai"

    def ready(self) -> None:
        from ..._config import settings
        from ..._errors import internal_errors, logger
        from ...export import runtime
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
                runtime.configure(**kwargs)
            if conf.option("start") and settings.enabled:
                runtime.start(wait=False)
                _wait_for_start_before_fork()

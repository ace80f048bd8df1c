"""Django system checks for ``settings.TRACKED_OPENAI`` (``manage.py check``).

Ids: ``tracked_openai.E001`` not a dict, ``E002`` a bad value (the message names its key),
``W001`` an unknown key, ``W002`` a key this version does not apply yet.
"""

from __future__ import annotations

from typing import Any

from django.core import checks

from . import conf

__all__ = ["check_settings"]


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for problem in conf.problems():
        kind = checks.Error if problem.level == "error" else checks.Warning
        messages.append(
            kind(problem.message, hint=problem.hint, obj="settings.TRACKED_OPENAI", id=problem.id)
        )
    return messages

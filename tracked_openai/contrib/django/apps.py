"""Django app config for ``tracked_openai.contrib.django``."""

from __future__ import annotations

from django.apps import AppConfig


class TrackedOpenAIConfig(AppConfig):
    name = "tracked_openai.contrib.django"
    label = "tracked_openai"
    verbose_name = "tracked-openai"

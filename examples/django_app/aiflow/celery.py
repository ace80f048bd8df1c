"""Celery for the project: ``celery -A aiflow worker``. ``install()`` makes tasks keep the
feature of the request that queued them."""

import os

from celery import Celery

from tracked_openai.contrib.celery import install

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aiflow.settings")

app = Celery("aiflow")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
install()

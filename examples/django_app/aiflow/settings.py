"""Settings of the example project: the tracked-openai parts are INSTALLED_APPS, MIDDLEWARE
and TRACKED_OPENAI."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "tracked_openai.contrib.django",  # settings checks, exporter started in ready(), manage.py tracked_openai
    "aiflow",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After authentication, so requests can be tagged with a (hashed) user id.
    "tracked_openai.contrib.django.middleware.TrackedOpenAIMiddleware",
]

ROOT_URLCONF = "aiflow.urls"
WSGI_APPLICATION = "aiflow.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("AIFLOW_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True

TRACKED_OPENAI = {
    # The MLflow store (MLFLOW_TRACKING_URI when set): the app, its workers and
    # `manage.py tracked_openai report` all use it.
    "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{BASE_DIR / 'mlflow.db'}"),
    "features": {"pid_verification": "P&ID Verification"},
    # Views declare their feature (see views.py); a mapping of URL names works too:
    # "views": {"reports:*": "crs_analysis"},
    "request_id_header": "X-Request-ID",
    "user": "hashed",
    "api_permission": "staff",  # the default: cost per feature is business data
}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
# `manage.py demo` runs tasks in-process (no broker needed); a real deployment runs a worker.
CELERY_TASK_ALWAYS_EAGER = os.environ.get("AIFLOW_CELERY_EAGER") == "1"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

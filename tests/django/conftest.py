"""Django settings for these tests only: configured here (not via DJANGO_SETTINGS_MODULE) so the
rest of the suite runs without Django. pytest-django then creates a real SQLite test database."""

from __future__ import annotations

import pytest

django = pytest.importorskip("django", reason="the Django integration needs the [django] extra")
pytest.importorskip("pytest_django", reason="Django tests need pytest-django")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "tracked_openai.contrib.django",
            "tests.django.testapp",
        ],
        # pytest-django creates (and drops) the real SQLite test database from this.
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "tracked-openai.sqlite3"}},
        ROOT_URLCONF="tests.django.urls",
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "tracked_openai.contrib.django.middleware.TrackedOpenAIMiddleware",
        ],
        # Tests route records themselves (the `records` fixture); nothing starts a default store.
        TRACKED_OPENAI={"start": False, "views": {"report_*": "pid_verification"}},
    )
    django.setup()

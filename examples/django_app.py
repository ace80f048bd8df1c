"""Django (extra ``tracked-openai[django]``): the four endpoints in your urls.py, and an
operation recorded for every save of a model (``post_save``), as the original system did for
its P&ID reports. One file here; in a project the pieces go to settings, models and urls.
"""

import json
import tempfile

import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "tracked_openai.contrib.django"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": f"{tempfile.mkdtemp()}/app.sqlite3"}},
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["testserver"],
    SECRET_KEY="example-only",
)
django.setup()

from django.db import connection, models  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import include, path  # noqa: E402

import tracked_openai  # noqa: E402
from tracked_openai.contrib.django import track_model_saves  # noqa: E402

# urls.py
urlpatterns = [path("api/v1/mlflow/tracking/", include("tracked_openai.contrib.django.urls"))]


# models.py
class PidReport(models.Model):
    name = models.CharField(max_length=100)
    issue_count = models.IntegerField(default=0)
    confidence = models.FloatField(default=0.0)
    processing_time = models.FloatField(default=0.0)

    class Meta:
        app_label = "tracked_openai"  # a real project uses its own app


# apps.py (ready()) or models.py
track_model_saves(
    PidReport,
    "pid_verification",
    operation="report_saved",
    metrics=lambda r: {"issue_count": r.issue_count, "confidence": r.confidence,
                       "processing_time": r.processing_time},
)

with connection.schema_editor() as editor:  # stands in for `manage.py migrate`
    editor.create_model(PidReport)

for n, issues in ((101, 3), (102, 0), (103, 5)):
    PidReport.objects.create(name=f"P&ID-{n}", issue_count=issues, confidence=0.9, processing_time=1.2)
tracked_openai.flush()

response = Client().get("/api/v1/mlflow/tracking/metrics/", {"feature": "pid_verification"})
body = json.loads(response.content)
metrics = body["metrics"]
print("status", response.status_code, "runs", metrics["total_runs"], "avg confidence", metrics["avg_confidence"])

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("api/v1/mlflow/tracking/", include("tracked_openai.contrib.django.urls")),
]

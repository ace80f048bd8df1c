"""``path("api/v1/mlflow/tracking/", include("tracked_openai.contrib.django.urls"))``."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "tracked_openai"

urlpatterns = [
    path("experiments/", views.experiments, name="experiments"),
    path("runs/", views.runs, name="runs"),
    path("metrics/", views.metrics, name="metrics"),
    path("totals/", views.totals, name="totals"),
    path("health/", views.health, name="health"),
    path("budgets/", views.budgets, name="budgets"),
]

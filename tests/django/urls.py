from __future__ import annotations

from django.urls import include, path

from . import views

urlpatterns = [
    path("api/v1/mlflow/tracking/", include("tracked_openai.contrib.django.urls")),
    path("decorated/", views.decorated, name="decorated"),
    path("class-based/", views.ClassBased.as_view(), name="class_based"),
    path("reports/<int:pk>/", views.mapped, name="report_detail"),
    path("undeclared/", views.undeclared, name="undeclared"),
    path("failing/", views.failing, name="failing"),
    path("streaming/", views.streaming, name="streaming"),
    path("async/", views.async_view, name="async_view"),
    path("async-streaming/", views.async_streaming, name="async_streaming"),
]

from django.urls import include, path

from . import views

urlpatterns = [
    path("diagrams/verify/", views.verify_diagram, name="verify_diagram"),
    path("specs/generate/", views.generate_spec, name="generate_spec"),
    # Staff only by default (TRACKED_OPENAI["api_permission"]).
    path("api/v1/mlflow/tracking/", include("tracked_openai.contrib.django.urls")),
]

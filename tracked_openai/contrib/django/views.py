"""The four REST endpoints as Django views (``JsonResponse``), same shapes as the FastAPI router."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from ...reports import http as _endpoints

__all__ = ["experiments", "health", "metrics", "runs"]


def _uri() -> str | None:
    # Read per request so settings overrides (and tests) take effect without a restart.
    value: Any = getattr(settings, "TRACKED_OPENAI_TRACKING_URI", None)
    return str(value) if value else None


def _json(payload: tuple[int, dict[str, Any]]) -> JsonResponse:
    status, body = payload
    return JsonResponse(body, status=status)


@require_GET
def experiments(request: HttpRequest) -> JsonResponse:
    return _json(_endpoints.experiments(_uri()))


@require_GET
def runs(request: HttpRequest) -> JsonResponse:
    try:
        limit = _endpoints.parse_limit(request.GET.get("limit"))
    except ValueError as exc:
        return JsonResponse({"error": "bad_request", "detail": str(exc)}, status=400)
    return _json(_endpoints.runs(_uri(), request.GET.get("feature"), limit))


@require_GET
def metrics(request: HttpRequest) -> JsonResponse:
    q = request.GET
    return _json(_endpoints.metrics(_uri(), q.get("feature"), q.get("since"), q.get("until")))


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return _json(_endpoints.health(_uri()))

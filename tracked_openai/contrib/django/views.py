"""The REST endpoints as Django views (``JsonResponse``), same shapes as the FastAPI router.

Cost per feature is business data: by default only staff users may read it
(``TRACKED_OPENAI["api_permission"]``: ``"staff"``, ``"superuser"``, ``"authenticated"``,
``"any"`` or a callable ``request -> bool``). An anonymous request gets 401, a signed-in user
without the permission 403. The user comes from ``AuthenticationMiddleware``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from ...reports import http as _endpoints
from . import conf

__all__ = ["budgets", "experiments", "health", "metrics", "runs", "totals"]

View = Callable[[HttpRequest], JsonResponse]


def _uri() -> str | None:
    # Read per request so settings overrides (and tests) take effect without a restart.
    return conf.tracking_uri()


def _json(payload: tuple[int, dict[str, Any]]) -> JsonResponse:
    status, body = payload
    return JsonResponse(body, status=status)


def _denied(request: HttpRequest) -> JsonResponse | None:
    """The 401/403 response for a request not allowed to read the numbers, else ``None``."""
    permission = conf.option("api_permission")
    if permission == "any":
        return None
    user = getattr(request, "user", None)
    authenticated = bool(getattr(user, "is_authenticated", False))
    active = authenticated and bool(getattr(user, "is_active", False))
    if callable(permission):
        allowed = bool(permission(request))
    elif permission == "staff":
        allowed = active and bool(getattr(user, "is_staff", False))
    elif permission == "superuser":
        allowed = active and bool(getattr(user, "is_superuser", False))
    else:  # "authenticated"
        allowed = active
    if allowed:
        return None
    if not authenticated:
        response = JsonResponse(
            {"error": "unauthorized", "detail": "sign in to read the numbers"}, status=401
        )
        # Session authentication: the only answer to the challenge is signing in.
        response["WWW-Authenticate"] = 'Session realm="tracked-openai"'
        return response
    return JsonResponse({"error": "forbidden", "detail": "this user may not read the numbers"}, status=403)


def _guarded(view: View) -> View:
    @functools.wraps(view)
    def wrapper(request: HttpRequest) -> JsonResponse:
        denied = _denied(request)
        return denied if denied is not None else view(request)

    guarded: View = require_GET(wrapper)
    return guarded


@_guarded
def experiments(request: HttpRequest) -> JsonResponse:
    return _json(_endpoints.experiments(_uri()))


@_guarded
def runs(request: HttpRequest) -> JsonResponse:
    try:
        limit = _endpoints.parse_limit(request.GET.get("limit"))
    except ValueError as exc:
        return JsonResponse({"error": "bad_request", "detail": str(exc)}, status=400)
    return _json(_endpoints.runs(_uri(), request.GET.get("feature"), limit))


@_guarded
def metrics(request: HttpRequest) -> JsonResponse:
    from ...budgets import http as budgets_http

    q = request.GET
    # With budgets: each feature and operation row's budgets and blocked calls.
    return _json(
        budgets_http.with_budget_columns(
            _endpoints.metrics(_uri(), q.get("feature"), q.get("since"), q.get("until"))
        )
    )


@_guarded
def totals(request: HttpRequest) -> JsonResponse:
    q = request.GET
    return _json(_endpoints.totals(_uri(), q.get("feature"), q.get("since"), q.get("until"), q.get("method")))


@_guarded
def health(request: HttpRequest) -> JsonResponse:
    return _json(_endpoints.health(_uri()))


@_guarded
def budgets(request: HttpRequest) -> JsonResponse:
    from ...budgets import http as budgets_http

    return _json(budgets_http.budgets())

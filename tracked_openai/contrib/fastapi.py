"""REST API over the reports (extra ``tracked-openai[api]``): a FastAPI router to mount in any
app, and a ready app for ``tracked-openai serve``.

```python
from fastapi import FastAPI
from tracked_openai.contrib.fastapi import create_router

app = FastAPI()
app.include_router(create_router())
# GET /api/v1/mlflow/tracking/{experiments,runs,metrics,totals,health,budgets}/
```

Cost per feature is business data: pass ``dependencies`` to guard the router with your app's own
auth (``create_router(dependencies=[Depends(current_staff_user)])``), or use
:func:`bearer_token` (``create_app(token=...)`` does: what ``tracked-openai serve --token`` runs).

Shapes keep the field names of the AIFlow tracking API. A bad query value answers 400 (FastAPI's own type
checks answer 422), an unknown ``feature`` 404 with the known ones, a missing or unreachable
tracking store 503 (reading never creates a store); all are JSON with ``error`` and ``detail``,
never a stack trace.

The app's docs page (``/api/docs/``) works offline: Swagger UI's files are served by the app
itself (from the ``fastapi-offline`` package of the ``api`` extra), or, without that package, a
plain page lists the endpoints.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse

from ..reports import METHODS
from ..reports import http as _endpoints

__all__ = ["PREFIX", "bearer_token", "create_app", "create_router", "router"]

PREFIX = "/api/v1/mlflow/tracking"


def _respond(payload: tuple[int, dict[str, Any]]) -> JSONResponse:
    status, body = payload
    return JSONResponse(body, status_code=status)


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad query value (`error`, `detail`)"},
    503: {"description": "Tracking store missing or unreachable (`error`, `detail`, `tracking_uri`)"},
}
_FEATURE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    404: {"description": "Unknown feature (`error`, `detail`, `feature`, `known_features`)"},
}


def bearer_token(token: str) -> Callable[..., None]:
    """A dependency admitting only ``Authorization: Bearer <token>`` (compared in constant time);
    anything else answers 401 with ``WWW-Authenticate: Bearer``."""
    if not token:
        raise ValueError("bearer_token() needs a non-empty token")
    expected = token.encode()

    def check(authorization: Annotated[str | None, Header(include_in_schema=False)] = None) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise HTTPException(
                status_code=401,
                detail="a bearer token is required to read the numbers",
                headers={"WWW-Authenticate": 'Bearer realm="tracked-openai"'},
            )

    return check


def create_router(
    tracking_uri: str | None = None,
    prefix: str = PREFIX,
    dependencies: Sequence[DependsParam] | None = None,
) -> APIRouter:
    """The endpoints under ``prefix``, reading ``tracking_uri`` (default: the environment's
    ``MLFLOW_TRACKING_URI``, read per request, else MLflow's default store). ``dependencies``
    run before every endpoint: the place for auth."""
    api = APIRouter(prefix=prefix, tags=["tracked-openai"], dependencies=list(dependencies or ()))

    @api.get("/experiments/", responses=_ERRORS, summary="Features and their MLflow experiments")
    def experiments() -> JSONResponse:
        return _respond(_endpoints.experiments(tracking_uri))

    @api.get("/runs/", responses=_FEATURE_ERRORS, summary="Most recent runs (operations and top-level calls)")
    def runs(
        feature: Annotated[str | None, Query(description="feature key; all features when omitted")] = None,
        limit: Annotated[int, Query(ge=1, le=_endpoints.MAX_LIMIT)] = 10,
    ) -> JSONResponse:
        return _respond(_endpoints.runs(tracking_uri, feature, limit))

    @api.get(
        "/metrics/", responses=_FEATURE_ERRORS, summary="Cost, latency and reliability totals and breakdowns"
    )
    def metrics(
        feature: Annotated[str | None, Query(description="feature key; all features when omitted")] = None,
        since: Annotated[str | None, Query(description="YYYY-MM-DD, ISO datetime, today or Nd")] = None,
        until: Annotated[str | None, Query(description="YYYY-MM-DD (inclusive) or ISO datetime")] = None,
    ) -> JSONResponse:
        from ..budgets import http as budgets_http

        # With budgets: each feature and operation row's budgets and blocked calls.
        return _respond(
            budgets_http.with_budget_columns(_endpoints.metrics(tracking_uri, feature, since, until))
        )

    @api.get(
        "/totals/",
        responses=_FEATURE_ERRORS,
        summary="Calls, cost and tokens, added up by the MLflow store itself when it can",
    )
    def totals(
        feature: Annotated[str | None, Query(description="feature key; all features when omitted")] = None,
        since: Annotated[str | None, Query(description="YYYY-MM-DD, ISO datetime, today or Nd")] = None,
        until: Annotated[str | None, Query(description="YYYY-MM-DD (inclusive) or ISO datetime")] = None,
        # Checked by the handler, not by FastAPI: a bad method is the same 400 as in Django.
        method: Annotated[
            str | None,
            Query(
                description="auto (the store's aggregation when exact, else paging), server "
                "(400 with the reason when the store cannot) or paging",
                json_schema_extra={"enum": list(METHODS)},
            ),
        ] = None,
    ) -> JSONResponse:
        return _respond(_endpoints.totals(tracking_uri, feature, since, until, method))

    @api.get(
        "/budgets/",
        responses={503: {"description": "Ledger unreachable or budgets file invalid"}},
        summary="Where each budget stands in its current window",
    )
    def budgets() -> JSONResponse:
        from ..budgets import http as budgets_http

        return _respond(budgets_http.budgets())

    @api.get("/health/", responses={503: _ERRORS[503]}, summary="Store reachability and exporter counters")
    def health() -> JSONResponse:
        return _respond(_endpoints.health(tracking_uri))

    return api


router = create_router()


DOCS_URL = "/api/docs/"
_DOCS_STATIC = "/api/docs/static"


def _new_app(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose docs page needs no network: Swagger UI's files come from the
    ``fastapi-offline`` package when it is installed, else :func:`_offline_docs` is mounted."""
    # FastAPI's default page loads Swagger UI from a CDN: blank offline, and a third party learns
    # who reads the docs. Swagger UI's online validator is a third party too: off.
    kwargs["swagger_ui_parameters"] = {"validatorUrl": None}
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        app = FastAPI(docs_url=None, redoc_url=None, **kwargs)
        _offline_docs(app)
        return app
    return FastAPIOffline(docs_url=DOCS_URL, redoc_url=None, static_url=_DOCS_STATIC, **kwargs)


def _offline_docs(app: FastAPI) -> None:
    """A self-contained docs page (no script, no external file): each endpoint, its summary and
    its query parameters, from the app's OpenAPI schema."""
    from html import escape

    from fastapi.responses import HTMLResponse

    @app.get(DOCS_URL, include_in_schema=False)
    def docs() -> HTMLResponse:
        schema = app.openapi()
        items = []
        for path, methods in schema.get("paths", {}).items():
            for method, op in methods.items():
                params = "".join(
                    f"<li><code>{escape(p['name'])}</code> {escape(p.get('description') or '')}</li>"
                    for p in op.get("parameters", [])
                )
                items.append(
                    f"<h2><code>{escape(method.upper())} {escape(path)}</code></h2>"
                    f"<p>{escape(op.get('summary') or '')}</p>" + (f"<ul>{params}</ul>" if params else "")
                )
        body = (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(app.title)} API</title>"
            "</head><body>"
            f"<h1>{escape(app.title)} API</h1><p>Schema: <a href='{escape(app.openapi_url or '')}'>"
            f"{escape(app.openapi_url or '')}</a> (install <code>fastapi-offline</code> for the "
            "interactive Swagger UI).</p>" + "".join(items) + "</body></html>"
        )
        return HTMLResponse(body)


def create_app(tracking_uri: str | None = None, token: str | None = None) -> FastAPI:
    """A FastAPI app serving the endpoints, with OpenAPI docs at ``/api/docs/`` (offline). With
    ``token``, every endpoint needs ``Authorization: Bearer <token>`` (the docs page does not)."""
    from fastapi.exceptions import HTTPException as FastAPIHTTPException
    from fastapi.exceptions import RequestValidationError
    from starlette.requests import Request

    app = _new_app(
        title="tracked-openai",
        summary="Cost, latency and reliability of your OpenAI calls, per feature.",
        openapi_url="/api/openapi.json",
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Same envelope as our own 400s, keeping FastAPI's per-field details and its 422 status.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return JSONResponse({"error": "validation_error", "detail": detail, "errors": errors}, 422)

    @app.exception_handler(FastAPIHTTPException)
    async def refused(request: Request, exc: FastAPIHTTPException) -> JSONResponse:
        # The same JSON envelope as every other answer of the API.
        error = "unauthorized" if exc.status_code == 401 else "http_error"
        return JSONResponse({"error": error, "detail": exc.detail}, exc.status_code, headers=exc.headers)

    guard = [Depends(bearer_token(token))] if token else None
    app.include_router(create_router(tracking_uri, dependencies=guard))
    _document_validation_errors(app)
    return app


# What ``create_app``'s 422 answers hold (its handler's envelope, not FastAPI's default body).
_VALIDATION_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error", "detail", "errors"],
    "properties": {
        "error": {"type": "string", "const": "validation_error"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array"},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}


def _document_validation_errors(app: FastAPI) -> None:
    """Make the schema's 422 responses describe the envelope the app sends (FastAPI documents
    its own default body, ``detail`` as a list, which the app never sends)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            for methods in build().get("paths", {}).values():
                for operation in methods.values():
                    answer = operation.get("responses", {}).get("422")
                    if answer is not None:
                        answer["content"] = {"application/json": {"schema": _VALIDATION_ERROR}}
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]

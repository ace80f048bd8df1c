"""REST API over the reports (extra ``tracked-openai[api]``): a FastAPI router to mount in any
app, and a ready app for ``tracked-openai serve``.

```python
from fastapi import FastAPI
from tracked_openai.api import create_router

app = FastAPI()
app.include_router(create_router())          # GET /api/v1/mlflow/tracking/{experiments,runs,metrics,health}/
```

Shapes keep the seed system's field names. A bad query value answers 400 (FastAPI's own type
checks answer 422), an unreachable tracking store 503; both are JSON with ``error`` and
``detail``, never a stack trace.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import JSONResponse

from .contrib import _endpoints

__all__ = ["PREFIX", "create_app", "create_router", "router"]

PREFIX = "/api/v1/mlflow/tracking"


def _respond(payload: tuple[int, dict[str, Any]]) -> JSONResponse:
    status, body = payload
    return JSONResponse(body, status_code=status)


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad query value (`error`, `detail`)"},
    503: {"description": "Tracking store unreachable (`error`, `detail`, `tracking_uri`)"},
}


def create_router(tracking_uri: str | None = None, prefix: str = PREFIX) -> APIRouter:
    """The four endpoints under ``prefix``, reading ``tracking_uri`` (default: the environment's
    ``MLFLOW_TRACKING_URI``, read per request, else MLflow's default store)."""
    api = APIRouter(prefix=prefix, tags=["tracked-openai"])

    @api.get("/experiments/", responses=_ERRORS, summary="Features and their MLflow experiments")
    def experiments() -> JSONResponse:
        return _respond(_endpoints.experiments(tracking_uri))

    @api.get("/runs/", responses=_ERRORS, summary="Most recent runs (operations and top-level calls)")
    def runs(
        feature: Annotated[str | None, Query(description="feature key; all features when omitted")] = None,
        limit: Annotated[int, Query(ge=1, le=_endpoints.MAX_LIMIT)] = 10,
    ) -> JSONResponse:
        return _respond(_endpoints.runs(tracking_uri, feature, limit))

    @api.get("/metrics/", responses=_ERRORS, summary="Cost, latency and reliability totals and breakdowns")
    def metrics(
        feature: Annotated[str | None, Query(description="feature key; all features when omitted")] = None,
        since: Annotated[str | None, Query(description="YYYY-MM-DD, ISO datetime, today or Nd")] = None,
        until: Annotated[str | None, Query(description="YYYY-MM-DD (inclusive) or ISO datetime")] = None,
    ) -> JSONResponse:
        return _respond(_endpoints.metrics(tracking_uri, feature, since, until))

    @api.get("/health/", responses={503: _ERRORS[503]}, summary="Store reachability and exporter counters")
    def health() -> JSONResponse:
        return _respond(_endpoints.health(tracking_uri))

    return api


router = create_router()


def create_app(tracking_uri: str | None = None) -> FastAPI:
    """A FastAPI app serving the endpoints, with OpenAPI docs at ``/api/docs/``."""
    from fastapi.exceptions import RequestValidationError
    from starlette.requests import Request

    app = FastAPI(
        title="tracked-openai",
        summary="Cost, latency and reliability of your OpenAI calls, per feature.",
        docs_url="/api/docs/",
        redoc_url=None,
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

    app.include_router(create_router(tracking_uri))
    return app

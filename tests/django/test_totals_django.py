"""``GET totals/`` through Django's test client: the same body as the framework-free handler
(and so as FastAPI and ``report --totals --format json``) for calls written through the library,
the store's aggregation in traces mode, paging with the reason in runs mode, and the same
errors (400, 404; 503 with the other endpoints in test_django.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fakeopenai import FakeOpenAI
from tests.helpers.totals import (
    settings_restored,  # noqa: F401 - fixture
    write_calls,
)
from tracked_openai import reports
from tracked_openai.reports import http as endpoints
from tracked_openai.testing import TrackedRecords

pytestmark = pytest.mark.usefixtures("settings_restored")

PREFIX = "/api/v1/mlflow/tracking"


@pytest.fixture
def web(admin_user: Any) -> Any:
    """Django's test client signed in as staff (the views require staff by default)."""
    from django.test import Client

    c = Client()
    c.force_login(admin_user)
    return c


@pytest.mark.parametrize("mode", ["traces", "runs"])
def test_same_totals_as_the_python_api(
    web: Any, settings: Any, mode: str, fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made = write_calls(mode, uri, fake, records, tmp_path, "shop")
    settings.TRACKED_OPENAI_TRACKING_URI = uri
    r = web.get(f"{PREFIX}/totals/")
    assert r.status_code == 200
    body = r.json()
    assert body == {"tracking_uri": uri, **reports.call_totals(tracking_uri=uri)}
    assert body == endpoints.totals(uri)[1]
    assert body["total_calls"] == len(made.calls) == 5
    if mode == "traces":
        assert (body["method"], body["fallback_reason"]) == ("server", None)
    else:
        assert body["method"] == "paging" and "calls are runs" in body["fallback_reason"]
        refused = web.get(f"{PREFIX}/totals/", {"method": "server"})
        assert refused.status_code == 400
        assert refused.json()["detail"].startswith("the store cannot add these up itself")
    one = web.get(f"{PREFIX}/totals/", {"feature": "shop", "method": "paging"}).json()
    assert (one["feature"], one["method"], one["total_calls"]) == ("shop", "paging", 4)


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [
        ({"method": "fast"}, 400, "bad_request"),
        ({"until": "soon"}, 400, "bad_request"),
        ({"feature": "nope"}, 404, "unknown_feature"),
    ],
)
def test_errors(
    web: Any, settings: Any, tmp_path: Path, query: dict[str, str], status: int, error: str
) -> None:
    from tests.helpers.reports import seed_contract_store

    settings.TRACKED_OPENAI_TRACKING_URI = seed_contract_store(f"sqlite:///{tmp_path / 'mlflow.db'}").uri
    r = web.get(f"{PREFIX}/totals/", query)
    assert r.status_code == status
    assert r.json()["error"] == error
    assert "Traceback" not in r.content.decode()

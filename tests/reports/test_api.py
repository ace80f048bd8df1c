"""REST API through the real FastAPI app (TestClient) against a real MLflow store."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the REST API needs the [api] extra")
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.helpers.reports import Seeded, seed_contract_store
from tracked_openai.contrib.fastapi import PREFIX, create_app, create_router

UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing listens on loopback port 9


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed_contract_store(f"sqlite:///{tmp_path_factory.mktemp('api') / 'mlflow.db'}")


@pytest.fixture(scope="module")
def api(seeded: Seeded) -> Iterator[TestClient]:
    with TestClient(create_app(tracking_uri=seeded.uri)) as client:
        yield client


class TestEndpoints:
    def test_experiments(self, api: TestClient, seeded: Seeded) -> None:
        r = api.get(f"{PREFIX}/experiments/")
        assert r.status_code == 200
        body = r.json()
        assert body["enabled"] is True
        assert body["tracking_uri"] == seeded.uri
        rows = {e["key"]: e for e in body["experiments"]}
        assert rows["pid_verification"]["name"] == "P&ID Design Verification"
        assert rows["pid_verification"]["experiment_id"]
        assert set(rows["crs_analysis"]) == {"key", "name", "experiment_id"}

    def test_runs(self, api: TestClient, seeded: Seeded) -> None:
        r = api.get(f"{PREFIX}/runs/", params={"feature": "pid_verification", "limit": 2})
        assert r.status_code == 200
        body = r.json()
        assert body["count"] == 2
        first = body["runs"][0]
        assert first["run_id"] == seeded.run_ids["D"]
        assert first["metrics.execution_time"] == 3.0
        assert first["metrics.confidence_score"] == 0.7
        assert first["tags.status"] == "success"

    def test_metrics_aiflow_shape(self, api: TestClient) -> None:
        """The AIFlow tracking API's shape: ``{"feature": X, "metrics": {total_runs,
        avg_execution_time, success_rate, avg_confidence, total_cost, ...}}``."""
        r = api.get(f"{PREFIX}/metrics/", params={"feature": "pid_verification"})
        assert r.status_code == 200
        body = r.json()
        assert body["feature"] == "pid_verification"
        m = body["metrics"]
        assert {"total_runs", "avg_execution_time", "success_rate", "avg_confidence", "total_cost"} <= set(m)
        assert m["total_runs"] == 4
        assert m["avg_execution_time"] == pytest.approx(1.6)
        assert m["success_rate"] == pytest.approx(75.0)
        assert m["avg_confidence"] == pytest.approx(0.8)
        assert m["total_cost"] == pytest.approx(0.037)
        assert m["total_calls"] == 6
        assert {row["key"] for row in m["by_model"]} == {"gpt-4o", "gpt-4o-mini", "mystery-model"}

    def test_metrics_all_features_and_dates(self, api: TestClient) -> None:
        body = api.get(f"{PREFIX}/metrics/").json()
        m = body["metrics"]
        assert body["feature"] is None
        assert (m["total_runs"], m["total_cost"]) == (5, pytest.approx(0.038))
        m = api.get(f"{PREFIX}/metrics/", params={"since": "2026-11-21"}).json()["metrics"]
        assert m["total_runs"] == 3

    def test_health(self, api: TestClient) -> None:
        r = api.get(f"{PREFIX}/health/")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok"
        assert body["store"]["reachable"] is True
        assert "exported" in body["exporter"] or "internal_errors" in body["exporter"]
        assert "spool" in body

    def test_openapi_docs(self, api: TestClient) -> None:
        assert api.get("/api/docs/").status_code == 200
        paths = api.get("/api/openapi.json").json()["paths"]
        names = ("experiments", "runs", "metrics", "totals", "health")
        assert {f"{PREFIX}/{name}/" for name in names} <= set(paths)
        # totals/'s method is documented with its values (checked by the handler: 400 otherwise).
        params = {p["name"]: p for p in paths[f"{PREFIX}/totals/"]["get"]["parameters"]}
        assert set(params) == {"feature", "since", "until", "method"}
        assert params["method"]["schema"]["enum"] == ["auto", "server", "paging"]

    def test_bodies_name_the_store(self, api: TestClient, seeded: Seeded) -> None:
        assert api.get(f"{PREFIX}/metrics/").json()["tracking_uri"] == seeded.uri
        assert api.get(f"{PREFIX}/runs/").json()["tracking_uri"] == seeded.uri


def _references(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)


class TestOfflineDocs:
    """`/api/docs/` works without network: every file the page loads comes from the app."""

    def test_swagger_ui_from_the_app_itself(self, api: TestClient) -> None:
        pytest.importorskip("fastapi_offline", reason="Swagger UI's files come with the [api] extra")
        page = api.get("/api/docs/")
        assert page.status_code == 200
        html = page.text
        assert "SwaggerUIBundle" in html
        assert not re.search(r"https?://|//cdn|unpkg|jsdelivr", html), "the page names an external URL"
        assert "url: '/api/openapi.json'" in html
        assert '"validatorUrl": null' in html  # Swagger UI's online validator is a third party
        refs = _references(html)
        names = {ref.rsplit("/", 1)[-1] for ref in refs}
        assert names == {"swagger-ui.css", "favicon.png", "swagger-ui-bundle.js"}
        for ref in refs:
            asset = api.get(ref)
            assert asset.status_code == 200, ref
            assert len(asset.content) > 1000, ref
            if ref.endswith(".css"):
                # No stylesheet imports or fonts from elsewhere either.
                assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", asset.text)
        assert api.get("/api/openapi.json").status_code == 200

    def test_plain_page_without_the_package(self, seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "fastapi_offline", None)  # import fails
        with TestClient(create_app(tracking_uri=seeded.uri)) as client:
            page = client.get("/api/docs/")
        assert page.status_code == 200
        html = page.text
        assert "<script" not in html
        assert not re.search(r"https?://", html)
        for name in ("experiments", "runs", "metrics", "totals", "health"):
            assert f"GET {PREFIX}/{name}/" in html
        assert "<code>feature</code> feature key; all features when omitted" in html
        assert _references(html) == ["/api/openapi.json"]


class TestErrors:
    @pytest.mark.parametrize("limit", ["0", "1001", "abc"])
    def test_bad_limit_is_422(self, api: TestClient, limit: str) -> None:
        r = api.get(f"{PREFIX}/runs/", params={"limit": limit})
        assert r.status_code == 422
        body = r.json()
        assert body["error"] == "validation_error"
        assert "limit" in body["detail"]

    def test_bad_date_is_400(self, api: TestClient) -> None:
        r = api.get(f"{PREFIX}/metrics/", params={"since": "last tuesday"})
        assert r.status_code == 400
        assert r.json() == {
            "error": "bad_request",
            "detail": "invalid date 'last tuesday': use YYYY-MM-DD, an ISO datetime, 'today' or Nd (e.g. 7d)",
        }

    @pytest.mark.parametrize("name", ["runs", "metrics", "totals"])
    def test_unknown_feature_is_404_with_the_known_ones(self, api: TestClient, name: str) -> None:
        r = api.get(f"{PREFIX}/{name}/", params={"feature": "pid_verfication"})
        assert r.status_code == 404
        body = r.json()
        known = body.pop("known_features")
        # The default AIFlow features, `default` and the store's (tests may register more).
        expected = {"crs_analysis", "default", "pfd_conversion", "pid_verification", "visual_generation"}
        assert expected <= set(known)
        assert body == {
            "error": "unknown_feature",
            "detail": f"unknown feature 'pid_verfication'; known features: {', '.join(known)}",
            "feature": "pid_verfication",
        }

    @pytest.mark.parametrize("name", ["experiments", "runs", "metrics", "totals", "health"])
    def test_missing_store_is_503_and_not_created(self, tmp_path: Path, name: str) -> None:
        uri = f"sqlite:///{tmp_path}/nope/mlflow.db"
        with TestClient(create_app(tracking_uri=uri), raise_server_exceptions=False) as client:
            r = client.get(f"{PREFIX}/{name}/")
        assert r.status_code == 503
        body = r.json()
        if name == "health":
            assert body["store"]["reachable"] is False
            detail = body["store"]["detail"]
        else:
            assert body["error"] == "store_not_found"
            assert body["tracking_uri"] == uri
            detail = body["detail"]
        assert detail.startswith(f"no MLflow store at {uri}: ")
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("name", ["experiments", "runs", "metrics", "totals", "health"])
    def test_unreachable_store_is_503_json(self, name: str) -> None:
        with TestClient(create_app(tracking_uri=UNREACHABLE), raise_server_exceptions=False) as client:
            r = client.get(f"{PREFIX}/{name}/")
        assert r.status_code == 503
        body = r.json()
        assert "Traceback" not in r.text
        if name == "health":
            assert body["store"]["reachable"] is False
            assert body["status"] == "unavailable"
        else:
            assert body["error"] == "store_unavailable"
            assert "unreachable" in body["detail"]


def test_router_mounts_in_any_app(seeded: Seeded) -> None:
    """The router is a plain APIRouter: it mounts into the user's own app, under any prefix."""
    app = FastAPI()
    app.include_router(create_router(tracking_uri=seeded.uri, prefix="/internal/llm"))
    with TestClient(app) as client:
        r = client.get("/internal/llm/metrics/", params={"feature": "crs_analysis"})
    assert r.status_code == 200
    assert r.json()["metrics"]["total_runs"] == 1


@pytest.fixture(scope="module")
def nested(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, float]]:
    """``track("fraud_check")`` inside ``track("checkout")``, written by the library itself."""
    pytest.importorskip("tracked_openai.sinks.mlflow", reason="needs the MLflow sink")
    from tests.helpers.reports import seed_nested_features

    uri = f"sqlite:///{tmp_path_factory.mktemp('nested') / 'mlflow.db'}"
    return uri, seed_nested_features(uri)


def test_metrics_count_a_nested_features_calls_under_it(nested: tuple[str, dict[str, float]]) -> None:
    """Each call is counted once, under its innermost feature: per feature and in the totals,
    through the REST API as through the Python reports (FastAPI and Django share the handlers)."""
    from tracked_openai import reports
    from tracked_openai.reports import http as _endpoints

    uri, costs = nested
    with TestClient(create_app(tracking_uri=uri)) as client:
        checkout_body = client.get(f"{PREFIX}/metrics/", params={"feature": "checkout"}).json()
        fraud_body = client.get(f"{PREFIX}/metrics/", params={"feature": "fraud_check"}).json()
        every = client.get(f"{PREFIX}/metrics/").json()["metrics"]
        fraud_runs = client.get(f"{PREFIX}/runs/", params={"feature": "fraud_check"}).json()
    checkout, fraud = checkout_body["metrics"], fraud_body["metrics"]
    assert (checkout["total_runs"], checkout["total_calls"]) == (1, 2)
    assert checkout["total_cost"] == pytest.approx(costs["checkout"])
    assert (fraud["total_runs"], fraud["total_calls"]) == (1, 1)
    assert fraud["total_cost"] == pytest.approx(costs["fraud_check"])
    assert (every["total_runs"], every["total_calls"]) == (2, 3)
    assert every["total_cost"] == pytest.approx(costs["checkout"] + costs["fraud_check"])
    assert sum(r["total_cost"] for r in every["by_feature"]) == pytest.approx(every["total_cost"])
    assert fraud_runs["count"] == 1 and fraud_runs["runs"][0]["tags.parent_feature"] == "checkout"
    # The same numbers as the Python API and the framework-free handlers Django serves.
    # (the REST body also names the feature and the store it read)
    assert (checkout_body["feature"], checkout_body["tracking_uri"]) == ("checkout", uri)
    assert checkout == reports.feature_metrics("checkout", tracking_uri=uri)
    status, body = _endpoints.metrics(uri, feature="fraud_check")
    assert status == 200 and body == fraud_body

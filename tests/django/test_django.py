"""Django integration: the four endpoints through Django's test client, and post_save tracking
against a real SQLite database (pytest-django)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.reports import Seeded, seed_contract_store
from tracked_openai.contrib.django import track_model_saves
from tracked_openai.testing import TrackedRecords

from .testapp.models import PidReport

PREFIX = "/api/v1/mlflow/tracking"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed_contract_store(f"sqlite:///{tmp_path_factory.mktemp('dj') / 'mlflow.db'}")


@pytest.fixture
def web(admin_user: Any) -> Any:
    """Django's test client signed in as staff (the suite's ``client`` fixture is the tracked
    OpenAI client); the views require staff by default."""
    from django.test import Client

    c = Client()
    c.force_login(admin_user)
    return c


@pytest.fixture
def store(settings: Any, seeded: Seeded) -> Seeded:
    settings.TRACKED_OPENAI_TRACKING_URI = seeded.uri
    return seeded


class TestEndpoints:
    def test_experiments(self, web: Any, store: Seeded) -> None:
        r = web.get(f"{PREFIX}/experiments/")
        assert r.status_code == 200
        body = r.json()
        assert body["enabled"] is True
        assert body["tracking_uri"] == store.uri
        assert {"pid_verification", "crs_analysis"} <= {e["key"] for e in body["experiments"]}

    def test_runs(self, web: Any, store: Seeded) -> None:
        r = web.get(f"{PREFIX}/runs/", {"feature": "pid_verification", "limit": "3"})
        assert r.status_code == 200
        rows = r.json()["runs"]
        assert len(rows) == 3
        assert rows[0]["run_id"] == store.run_ids["D"]
        assert rows[0]["metrics.execution_time"] == 3.0

    def test_metrics(self, web: Any, store: Seeded) -> None:
        body = web.get(f"{PREFIX}/metrics/", {"feature": "pid_verification"}).json()
        assert body["feature"] == "pid_verification"
        m = body["metrics"]
        assert {"total_runs", "avg_execution_time", "success_rate", "avg_confidence", "total_cost"} <= set(m)
        assert (m["total_runs"], m["total_calls"]) == (4, 6)
        assert m["success_rate"] == pytest.approx(75.0)
        assert m["total_cost"] == pytest.approx(0.037)

    def test_budgets(self, web: Any, store: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("TRACKED_OPENAI_BUDGETS", raising=False)
        r = web.get(f"{PREFIX}/budgets/")
        assert r.status_code == 200
        assert r.json() == {"configured": False, "budgets": []}

    def test_health(self, web: Any, store: Seeded) -> None:
        r = web.get(f"{PREFIX}/health/")
        assert r.status_code == 200
        assert r.json()["store"]["reachable"] is True

    @pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "x"}])
    def test_bad_limit_is_400(self, web: Any, store: Seeded, query: dict[str, str]) -> None:
        r = web.get(f"{PREFIX}/runs/", query)
        assert r.status_code == 400
        assert r.json()["error"] == "bad_request"

    def test_bad_date_is_400(self, web: Any, store: Seeded) -> None:
        r = web.get(f"{PREFIX}/metrics/", {"until": "soon"})
        assert r.status_code == 400

    def test_post_is_405(self, web: Any, store: Seeded) -> None:
        assert web.post(f"{PREFIX}/metrics/").status_code == 405

    @pytest.mark.parametrize("name", ["runs", "metrics", "totals"])
    def test_unknown_feature_is_404_with_the_known_ones(self, web: Any, store: Seeded, name: str) -> None:
        r = web.get(f"{PREFIX}/{name}/", {"feature": "nope"})
        assert r.status_code == 404
        body = r.json()
        assert (body["error"], body["feature"]) == ("unknown_feature", "nope")
        # The default AIFlow features, `default` and the store's (tests may register more).
        expected = {"crs_analysis", "default", "pfd_conversion", "pid_verification", "visual_generation"}
        assert expected <= set(body["known_features"])

    @pytest.mark.parametrize("name", ["experiments", "runs", "metrics", "totals", "health"])
    def test_missing_store_is_503_and_not_created(
        self, web: Any, settings: Any, tmp_path: Path, name: str
    ) -> None:
        uri = f"sqlite:///{tmp_path}/nope/mlflow.db"
        settings.TRACKED_OPENAI_TRACKING_URI = uri
        r = web.get(f"{PREFIX}/{name}/")
        assert r.status_code == 503
        body = r.json()
        detail = body["store"]["detail"] if name == "health" else body["detail"]
        assert detail.startswith(f"no MLflow store at {uri}: ")
        if name != "health":
            assert body["error"] == "store_not_found"
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("name", ["experiments", "runs", "metrics", "totals", "health"])
    def test_unreachable_store_is_503(self, web: Any, settings: Any, name: str) -> None:
        settings.TRACKED_OPENAI_TRACKING_URI = "http://127.0.0.1:9"
        r = web.get(f"{PREFIX}/{name}/")
        assert r.status_code == 503
        assert r["content-type"] == "application/json"


@pytest.fixture
def tracked_reports(records: TrackedRecords) -> Iterator[TrackedRecords]:
    disconnect = track_model_saves(
        PidReport,
        "pid_verification",
        operation="report_saved",
        metrics=lambda r: {
            "issue_count": r.issue_count,
            "confidence": r.confidence,
            "processing_time": r.processing_time,
            "status": r.status,  # not a number: skipped
        },
    )
    yield records
    assert disconnect() is True


@pytest.mark.django_db
class TestTrackModelSaves:
    def test_one_operation_per_save(self, tracked_reports: TrackedRecords) -> None:
        report = PidReport.objects.create(
            name="P&ID-101", issue_count=3, confidence=0.92, processing_time=1.5
        )
        report.issue_count = 4
        report.save()
        ops = tracked_reports.operations
        assert len(ops) == 2
        first, second = ops
        assert (first.feature, first.operation) == ("pid_verification", "report_saved")
        assert first.metrics == {"issue_count": 3.0, "confidence_score": 0.92, "processing_time": 1.5}
        assert first.duration_s == 1.5
        assert first.status == "success"
        assert first.tags["created"] == "true"
        assert first.tags["object_pk"] == str(report.pk)
        assert first.tags["django_model"] == "testapp.pidreport"
        assert second.tags["created"] == "false"
        assert second.metrics["issue_count"] == 4.0
        assert tracked_reports.calls == []

    def test_null_metric_skipped_and_created_only(self, records: TrackedRecords) -> None:
        disconnect = track_model_saves(PidReport, "crs_analysis", created_only=True)
        try:
            report = PidReport.objects.create(name="CRS-1")
            report.save()
        finally:
            disconnect()
        ops = records.operations
        assert len(ops) == 1
        assert ops[0].operation == "testapp.pidreport.save"
        assert ops[0].feature == "crs_analysis"

    def test_failing_metrics_callable_never_breaks_the_save(self, records: TrackedRecords) -> None:
        """The host's save succeeds; the swallowed error is reported through the internal-error hook."""

        def broken(_: Any) -> dict[str, float]:
            raise RuntimeError("metrics bug")

        disconnect = track_model_saves(PidReport, "pid_verification", metrics=broken)
        try:
            PidReport.objects.create(name="x")
        finally:
            disconnect()
        assert PidReport.objects.filter(name="x").exists()
        assert len(records.internal_errors) == 1
        records.internal_errors.clear()  # expected here; the fixture fails tests on any other


@pytest.mark.django_db
class TestWhoMayRead:
    """The numbers are business data: staff only by default (issue 21)."""

    @pytest.fixture
    def anonymous(self) -> Any:
        from django.test import Client

        return Client()

    @pytest.fixture
    def member(self, django_user_model: Any) -> Any:
        from django.test import Client

        c = Client()
        c.force_login(django_user_model.objects.create_user("member", password="x"))
        return c

    @pytest.mark.parametrize("name", ["experiments", "runs", "metrics", "totals", "health", "budgets"])
    def test_anonymous_is_401(self, anonymous: Any, store: Seeded, name: str) -> None:
        r = anonymous.get(f"{PREFIX}/{name}/")
        assert r.status_code == 401
        assert r.json()["error"] == "unauthorized"
        assert "WWW-Authenticate" in r
        assert "pid_verification" not in r.content.decode()

    @pytest.mark.parametrize("name", ["experiments", "runs", "metrics", "totals", "health", "budgets"])
    def test_signed_in_non_staff_is_403(self, member: Any, store: Seeded, name: str) -> None:
        r = member.get(f"{PREFIX}/{name}/")
        assert r.status_code == 403
        assert r.json()["error"] == "forbidden"

    def test_staff_is_200(self, web: Any, store: Seeded) -> None:
        assert web.get(f"{PREFIX}/metrics/", {"feature": "pid_verification"}).status_code == 200

    def test_inactive_staff_is_403(self, django_user_model: Any, store: Seeded) -> None:
        from django.test import Client

        user = django_user_model.objects.create_user("gone", password="x", is_staff=True)
        c = Client()
        c.force_login(user)
        user.is_active = False
        user.save()
        # Django's session backend drops inactive users: they are anonymous again.
        assert c.get(f"{PREFIX}/runs/").status_code in (401, 403)

    @pytest.mark.parametrize(
        ("permission", "anonymous_status", "member_status"),
        [("authenticated", 401, 200), ("any", 200, 200), ("superuser", 401, 403)],
    )
    def test_configurable(
        self,
        settings: Any,
        anonymous: Any,
        member: Any,
        store: Seeded,
        permission: str,
        anonymous_status: int,
        member_status: int,
    ) -> None:
        settings.TRACKED_OPENAI = {"start": False, "api_permission": permission}
        assert anonymous.get(f"{PREFIX}/health/").status_code == anonymous_status
        assert member.get(f"{PREFIX}/health/").status_code == member_status

    def test_callable_permission(self, settings: Any, anonymous: Any, store: Seeded) -> None:
        settings.TRACKED_OPENAI = {
            "start": False,
            "api_permission": lambda request: request.headers.get("X-Internal") == "yes",
        }
        assert anonymous.get(f"{PREFIX}/health/").status_code == 401
        assert anonymous.get(f"{PREFIX}/health/", headers={"X-Internal": "yes"}).status_code == 200

"""Reports over a seeded MLflow store, checked against aggregates computed by hand.

Data set (``tests.helpers.reports.seed_contract_store``), feature ``pid_verification``:

======  =========  ======  =====  ====  ======  ==============================================
run     kind       day     ok     time  cost    children
======  =========  ======  =====  ====  ======  ==============================================
A       operation  D1      yes    2.0   0.03    2 calls gpt-4o (100/50, 200/100+50 cached)
B       operation  D1      no     1.0   0.005   gpt-4o-mini ok (300/20), gpt-4o-mini failed
C       call       D2      yes    0.4   none    top-level, mystery-model, unpriced (10/5, 3 reas.)
D       operation  D2      yes    3.0   0.002   nested operation E -> 1 call gpt-4o-mini (40/10)
======  =========  ======  =====  ====  ======  ==============================================

plus ``crs_analysis``: one top-level gpt-4o call F (0.6 s, 0.001 USD, 5/5 tokens) on D2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.reports import Seeded, seed_contract_store
from tracked_openai import reports
from tracked_openai.reports import StoreNotFoundError, StoreUnavailableError, UnknownFeatureError


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    yield seed_contract_store(f"sqlite:///{path}")


DEFAULT_KNOWN = ["crs_analysis", "default", "pfd_conversion", "pid_verification", "visual_generation"]


def rounded(value: Any) -> Any:
    """``value`` with every float rounded to 9 decimals (sums in another order differ in the last bit)."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def by_key(rows: list[dict], key: str) -> dict:
    return {r["key"]: r for r in rows}[key]


class TestFeatureMetrics:
    def test_totals_count_each_call_once(self, seeded: Seeded) -> None:
        """Runs are top-level runs; cost sums top-level runs (operations already include calls)."""
        m = reports.feature_metrics("pid_verification", tracking_uri=seeded.uri)
        assert m["total_runs"] == 4
        assert m["success_rate"] == pytest.approx(75.0)
        assert m["avg_execution_time"] == pytest.approx(1.6)
        assert m["avg_confidence"] == pytest.approx(0.8)
        assert m["total_cost"] == pytest.approx(0.037)
        assert m["total_calls"] == 6
        assert m["failed_calls"] == 1
        assert m["unpriced_calls"] == 1
        assert m["prompt_tokens"] == 650
        assert m["completion_tokens"] == 185
        assert m["cached_tokens"] == 50
        assert m["reasoning_tokens"] == 3
        assert m["p50_execution_time"] == pytest.approx(1.5)
        assert m["p95_execution_time"] == pytest.approx(2.85)

    def test_by_model_from_calls(self, seeded: Seeded) -> None:
        m = reports.feature_metrics("pid_verification", tracking_uri=seeded.uri)
        gpt4o = by_key(m["by_model"], "gpt-4o")
        assert gpt4o["total_calls"] == 2
        assert gpt4o["total_cost"] == pytest.approx(0.03)
        assert gpt4o["prompt_tokens"] == 300
        assert gpt4o["avg_execution_time"] == pytest.approx(0.9)
        mini = by_key(m["by_model"], "gpt-4o-mini")
        assert mini["total_calls"] == 3
        assert mini["success_rate"] == pytest.approx(200 / 3)
        assert mini["total_cost"] == pytest.approx(0.007)
        mystery = by_key(m["by_model"], "mystery-model")
        assert mystery["unpriced_calls"] == 1
        assert mystery["total_cost"] == 0
        assert mystery["avg_cost_per_call"] is None
        # Ordered by cost, most expensive first.
        assert [r["key"] for r in m["by_model"]] == ["gpt-4o", "gpt-4o-mini", "mystery-model"]

    def test_by_operation_and_day(self, seeded: Seeded) -> None:
        m = reports.feature_metrics("pid_verification", tracking_uri=seeded.uri)
        img = by_key(m["by_operation"], "image_analysis")
        assert (img["total_runs"], img["total_calls"]) == (2, 4)
        assert img["success_rate"] == pytest.approx(50.0)
        assert img["total_cost"] == pytest.approx(0.035)
        # The nested operation is no run of its own, but its call is attributed to it.
        sub = by_key(m["by_operation"], "sub")
        assert (sub["total_runs"], sub["total_calls"]) == (0, 1)
        assert by_key(m["by_operation"], "(none)")["total_runs"] == 1
        days = m["by_day"]
        assert [d["key"] for d in days] == ["2026-11-20", "2026-11-21"]
        assert (days[0]["total_runs"], days[0]["total_cost"]) == (2, pytest.approx(0.035))
        assert (days[1]["total_runs"], days[1]["total_cost"]) == (2, pytest.approx(0.002))

    def test_all_features(self, seeded: Seeded) -> None:
        m = reports.feature_metrics(tracking_uri=seeded.uri)
        assert m["total_runs"] == 5
        assert m["total_calls"] == 7
        assert m["total_cost"] == pytest.approx(0.038)
        crs = by_key(m["by_feature"], "crs_analysis")
        assert (crs["total_runs"], crs["total_cost"]) == (1, pytest.approx(0.001))

    def test_since_until(self, seeded: Seeded) -> None:
        m = reports.feature_metrics("pid_verification", since="2026-11-21", tracking_uri=seeded.uri)
        assert (m["total_runs"], m["total_calls"]) == (2, 2)
        assert m["total_cost"] == pytest.approx(0.002)
        # A bare date as `until` includes that whole day.
        m = reports.feature_metrics("pid_verification", until="2026-11-20", tracking_uri=seeded.uri)
        assert (m["total_runs"], m["total_calls"]) == (2, 4)

    def test_small_pages_give_the_same_answer(self, seeded: Seeded) -> None:
        """Paging is invisible in the result (pages of 2 runs force many round trips)."""
        whole = reports.feature_metrics(tracking_uri=seeded.uri)
        paged = reports.feature_metrics(tracking_uri=seeded.uri, page_size=2)
        assert rounded(paged) == rounded(whole)

    def test_unknown_feature_says_so_and_lists_the_known_ones(self, seeded: Seeded) -> None:
        """A typo is an error, not a report of zeros."""
        with pytest.raises(UnknownFeatureError) as caught:
            reports.feature_metrics("pid_verfication", tracking_uri=seeded.uri)
        # Registered (the default AIFlow features; other tests in this process may register more),
        # the default feature, and what the store holds; sorted.
        known = caught.value.known
        assert set(DEFAULT_KNOWN) <= set(known) and known == sorted(known)
        assert "pid_verfication" not in known
        assert str(caught.value) == f"unknown feature 'pid_verfication'; known features: {', '.join(known)}"
        with pytest.raises(UnknownFeatureError):
            reports.recent_runs("pid_verfication", tracking_uri=seeded.uri)

    def test_registered_feature_without_runs_is_empty(self, seeded: Seeded) -> None:
        m = reports.feature_metrics("visual_generation", tracking_uri=seeded.uri)
        assert m["total_runs"] == 0
        assert m["success_rate"] is None
        assert m["total_cost"] == 0
        assert m["by_model"] == []

    def test_one_operation(self, seeded: Seeded) -> None:
        """``operation=``: that operation's runs and the calls made inside them, nothing else."""
        m = reports.feature_metrics("pid_verification", operation="image_analysis", tracking_uri=seeded.uri)
        assert (m["operation"], m["total_runs"], m["total_calls"]) == ("image_analysis", 2, 4)
        assert m["total_cost"] == pytest.approx(0.035)
        assert {r["key"] for r in m["by_model"]} == {"gpt-4o", "gpt-4o-mini"}

    def test_bad_dates(self, seeded: Seeded) -> None:
        with pytest.raises(ValueError, match="invalid date"):
            reports.feature_metrics(since="yesterday-ish", tracking_uri=seeded.uri)
        with pytest.raises(ValueError, match="before"):
            reports.feature_metrics(since="2026-11-22", until="2026-11-20", tracking_uri=seeded.uri)


class TestRecentRuns:
    def test_newest_top_level_first(self, seeded: Seeded) -> None:
        rows = reports.recent_runs("pid_verification", limit=10, tracking_uri=seeded.uri)
        assert [r["run_id"] for r in rows] == [seeded.run_ids[k] for k in ("D", "C", "B", "A")]
        first = rows[0]
        assert first["metrics.execution_time"] == 3.0
        assert first["metrics.confidence_score"] == 0.7
        assert first["tags.status"] == "success"
        assert first["tags.operation"] == "report"
        assert rows[2]["tags.status"] == "error"
        assert rows[1]["metrics.confidence_score"] is None

    def test_limit_and_calls(self, seeded: Seeded) -> None:
        assert len(reports.recent_runs("pid_verification", limit=2, tracking_uri=seeded.uri)) == 2
        every = reports.recent_runs(
            "pid_verification", limit=100, include_calls=True, tracking_uri=seeded.uri
        )
        assert len(every) == 10
        with pytest.raises(ValueError):
            reports.recent_runs("pid_verification", limit=0, tracking_uri=seeded.uri)


class TestExperiments:
    def test_lists_seed_features_and_found_ones(self, seeded: Seeded) -> None:
        rows = {r["key"]: r for r in reports.experiments(tracking_uri=seeded.uri)}
        assert rows["pid_verification"]["name"] == "P&ID Design Verification"
        assert rows["pid_verification"]["experiment_id"] is not None
        assert rows["crs_analysis"]["experiment_id"] is not None
        # Registered but nothing recorded yet.
        assert rows["visual_generation"]["experiment_id"] is None


class TestStore:
    def test_unreachable_server(self) -> None:
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            reports.check_store("http://127.0.0.1:9", timeout=1)

    def test_unreadable_path(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("x")
        with pytest.raises(StoreUnavailableError):
            reports.feature_metrics(tracking_uri=f"sqlite:///{tmp_path}/file/sub/mlflow.db")

    def test_credentials_never_in_messages(self) -> None:
        with pytest.raises(StoreUnavailableError) as caught:
            reports.check_store("http://alice:s3cret@127.0.0.1:9", timeout=1)
        # The probe sends the credentials as basic auth (it reached the port: refused, not a bad host).
        assert str(caught.value).startswith("tracking server http://127.0.0.1:9 is unreachable")
        assert "refused" in str(caught.value)
        assert "s3cret" not in str(caught.value) and "alice" not in str(caught.value)
        assert reports.display_uri("postgresql://u:pw@db:5432/mlflow") == "postgresql://db:5432/mlflow"


def _reads(uri: str) -> list[Any]:
    return [
        lambda: reports.feature_metrics(tracking_uri=uri),
        lambda: reports.recent_runs(tracking_uri=uri),
        lambda: reports.experiments(tracking_uri=uri),
        lambda: reports.check_store(uri),
    ]


class TestReadingNeverCreatesAStore:
    """A missing store is an error naming the URI, and nothing is created: not the file, not its
    folder, not MLflow's tables in an existing file or database."""

    def test_missing_sqlite_file_and_folder(self, tmp_path: Path) -> None:
        uri = f"sqlite:///{tmp_path}/nope/mlflow.db"
        for read in _reads(uri):
            with pytest.raises(StoreNotFoundError) as caught:
                read()
            assert str(caught.value).startswith(
                f"no MLflow store at {uri}: {tmp_path}/nope/mlflow.db does not exist"
            )
        assert list(tmp_path.iterdir()) == []

    def test_relative_sqlite_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        with pytest.raises(StoreNotFoundError) as caught:
            reports.feature_metrics(tracking_uri="sqlite:///mlflow.db")
        assert f"at sqlite:///mlflow.db: {tmp_path}/mlflow.db does not exist" in str(caught.value)
        assert list(tmp_path.iterdir()) == []

    def test_sqlite_file_of_another_application(self, tmp_path: Path) -> None:
        import sqlite3

        path = tmp_path / "app.db"
        with closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE orders (id INTEGER)")
            db.commit()
        before = path.read_bytes()
        for read in _reads(f"sqlite:///{path}"):
            with pytest.raises(StoreNotFoundError, match="has no MLflow tables"):
                read()
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]

    def test_file_that_is_not_a_database(self, tmp_path: Path) -> None:
        path = tmp_path / "notes.txt"
        path.write_text("not a database")
        with pytest.raises(StoreNotFoundError, match="is not a SQLite database"):
            reports.feature_metrics(tracking_uri=f"sqlite:///{path}")
        assert path.read_text() == "not a database"

    @pytest.mark.parametrize("form", ["path", "file-uri"])
    def test_missing_or_foreign_store_folder(self, tmp_path: Path, form: str) -> None:
        folder = tmp_path / "mlruns"
        uri = str(folder) if form == "path" else folder.as_uri()
        with pytest.raises(StoreNotFoundError, match=f"folder {folder} does not exist"):
            reports.feature_metrics(tracking_uri=uri)
        assert not folder.exists()
        folder.mkdir()
        (folder / "readme.txt").write_text("x")
        with pytest.raises(StoreNotFoundError, match="is not an MLflow store"):
            reports.feature_metrics(tracking_uri=uri)
        assert sorted(p.name for p in folder.iterdir()) == ["readme.txt"]

    @pytest.mark.postgres
    def test_database_without_mlflow_tables(self) -> None:
        from sqlalchemy import create_engine, inspect

        from tests.helpers.mlflow_server import create_pg_database, drop_pg_database, postgres_available

        if not postgres_available():
            pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (trust auth, user postgres)")
        name, uri = create_pg_database()
        try:
            with pytest.raises(StoreNotFoundError, match="the database has no MLflow tables"):
                reports.feature_metrics(tracking_uri=uri)
            engine = create_engine(uri)
            try:
                with engine.connect() as conn:
                    assert inspect(conn).get_table_names() == []
            finally:
                engine.dispose()
        finally:
            drop_pg_database(name)

    def test_unreachable_database(self) -> None:
        unreachable = r"^tracking database postgresql\S*127\.0\.0\.1:9/x is unreachable"
        with pytest.raises(StoreUnavailableError, match=unreachable):
            reports.check_store("postgresql+psycopg2://postgres@127.0.0.1:9/x", timeout=1)

    def test_writers_may_create(self, tmp_path: Path) -> None:
        """The demo writes: ``create=True`` lets a missing local store through (the sink makes it)."""
        uri = f"sqlite:///{tmp_path}/new.db"
        assert reports.check_store(uri, create=True) == uri
        assert list(tmp_path.iterdir()) == []

    def test_parse_when(self) -> None:
        assert reports.parse_when("2026-01-02").isoformat() == "2026-01-02T00:00:00+00:00"  # type: ignore[union-attr]
        assert reports.parse_when("2026-01-02", end=True).isoformat() == "2026-01-03T00:00:00+00:00"  # type: ignore[union-attr]
        assert reports.parse_when(None) is None
        assert reports.parse_when("7d") is not None


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store written by the real pipeline (client → exporter → MlflowSink)."""
    pytest.importorskip("tracked_openai.sinks.mlflow", reason="needs the MLflow sink")
    from tests.helpers.reports import seed_through_library

    uri = f"sqlite:///{tmp_path_factory.mktemp('pipeline') / 'mlflow.db'}"
    seed_through_library(uri)
    return uri


class TestOnWhatTheLibraryWrites:
    """The same aggregates over runs produced by the library itself."""

    def test_feature_totals(self, uri: str) -> None:
        m = reports.feature_metrics("pid_verification", tracking_uri=uri)
        assert m["total_runs"] == 3  # P1, P2, N; the nested operation and the calls are not runs
        assert m["success_rate"] == pytest.approx(200 / 3)
        assert m["avg_confidence"] == pytest.approx(0.9)
        assert (m["total_calls"], m["failed_calls"], m["unpriced_calls"]) == (5, 1, 0)
        assert (m["prompt_tokens"], m["completion_tokens"]) == (4000, 800)
        assert m["total_cost"] == pytest.approx(4 * 0.00027)
        assert 0 < m["p50_execution_time"] <= m["p95_execution_time"]
        ops = {r["key"]: r for r in m["by_operation"]}
        assert (ops["image_analysis"]["total_runs"], ops["image_analysis"]["total_calls"]) == (2, 4)
        assert ops["image_analysis"]["total_cost"] == pytest.approx(3 * 0.00027)
        # The call made in the nested operation is counted under it, cost and all (each call
        # under its innermost operation); the outer run's own roll-up is not added again.
        assert (ops["sub"]["total_runs"], ops["sub"]["total_calls"]) == (0, 1)
        assert ops["sub"]["total_cost"] == pytest.approx(0.00027)
        assert (ops["report"]["total_runs"], ops["report"]["total_calls"]) == (1, 0)
        assert ops["report"]["total_cost"] == 0
        assert sum(r["total_cost"] for r in ops.values()) == pytest.approx(m["total_cost"])

    def test_all_features_with_unpriced_top_level_call(self, uri: str) -> None:
        m = reports.feature_metrics(tracking_uri=uri)
        assert (m["total_runs"], m["total_calls"], m["unpriced_calls"]) == (4, 6, 1)
        assert m["total_cost"] == pytest.approx(4 * 0.00027)
        default = {r["key"]: r for r in m["by_feature"]}["default"]
        assert (default["total_runs"], default["unpriced_calls"]) == (1, 1)

    def test_recent_runs_are_top_level(self, uri: str) -> None:
        rows = reports.recent_runs("pid_verification", limit=10, tracking_uri=uri)
        assert [r["tags.operation"] for r in rows] == ["report", "image_analysis", "image_analysis"]
        assert [r["tags.status"] for r in rows] == ["success", "error", "success"]
        assert rows[2]["metrics.confidence_score"] == 0.9


@pytest.fixture(scope="module")
def http_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A real `mlflow server` (own process, loopback port) seeded over HTTP."""
    from tests.helpers.mlflow_server import MlflowServer

    workdir = tmp_path_factory.mktemp("mlflow-http")
    server = MlflowServer(f"sqlite:///{workdir / 'mlflow.db'}", workdir)
    server.start()
    try:
        yield seed_contract_store(server.url)
    finally:
        server.stop()


@pytest.mark.server
def test_reports_over_an_mlflow_server(http_store: Seeded, seeded: Seeded) -> None:
    """Through the REST store (paged: 3 runs a page) the answers equal the embedded store's."""
    assert reports.check_store(http_store.uri) == http_store.uri
    over_http = reports.feature_metrics(tracking_uri=http_store.uri, page_size=3)
    local = reports.feature_metrics(tracking_uri=seeded.uri)
    # Runs come back in another order, so float sums may differ in the last bit.
    assert rounded(over_http) == rounded(local)
    rows = reports.recent_runs("pid_verification", limit=2, tracking_uri=http_store.uri)
    assert [r["run_id"] for r in rows] == [http_store.run_ids["D"], http_store.run_ids["C"]]

"""``reports.call_totals``: the store's own aggregation (MLflow's QueryTraceMetrics) gives the
same numbers as paging through the records, on the embedded store and through a real
``mlflow server``; where it cannot, it pages and says why."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import tracked_openai
from tests.helpers.fakeopenai import FakeOpenAI
from tests.helpers.mlflow_server import mlflow_pg_server, mlflow_server  # noqa: F401 - fixtures
from tests.helpers.totals import (
    figures,
    settings_restored,  # noqa: F401 - fixture
    unique_feature,
    write_calls,
)
from tests.mlflow.traces.helpers import cost_of, tokens_of
from tracked_openai import reports, track
from tracked_openai.sinks.modes import mode_sinks
from tracked_openai.testing import TrackedRecords

# write_calls configures the process: each test gets the settings back.
pytestmark = pytest.mark.usefixtures("settings_restored")


@pytest.fixture(params=["embedded", "server-sqlite", pytest.param("server-pg", marks=pytest.mark.postgres)])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """MLflow answers QueryTraceMetrics with other SQL on PostgreSQL (denormalized span
    columns): each backend is checked."""
    if request.param == "embedded":
        yield f"sqlite:///{tmp_path / 'mlflow.db'}"
    elif request.param == "server-sqlite":
        yield request.getfixturevalue("mlflow_server").url
    else:
        yield request.getfixturevalue("mlflow_pg_server").url


def test_server_and_paging_agree_in_traces_mode(
    uri: str, fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path
) -> None:
    feature = unique_feature("shop")
    made = write_calls("traces", uri, fake, records, tmp_path, feature)
    calls = [c for c in made.calls if c.feature == feature]
    server = reports.call_totals(feature, tracking_uri=uri, method="server")
    paging = reports.call_totals(feature, tracking_uri=uri, method="paging")
    assert server["method"] == "server" and paging["method"] == "paging"
    assert figures(server) == figures(paging)
    assert server["total_calls"] == len(calls) == 4
    assert abs(server["total_cost"] - cost_of(calls)) < 1e-9
    assert server["prompt_tokens"] == tokens_of(calls, "input_tokens")
    assert server["completion_tokens"] == tokens_of(calls, "output_tokens")
    assert server["cached_tokens"] == tokens_of(calls, "cached_input_tokens")
    served = {c.response_model or c.model for c in calls}
    assert {r["key"] for r in server["by_model"]} == served
    today = datetime.now(UTC).date().isoformat()
    assert [r["key"] for r in server["by_day"]] == [today]
    # "auto" takes the store's path here.
    assert reports.call_totals(feature, tracking_uri=uri)["method"] == "server"
    # A window: everything (a bare date includes its day), then nothing.
    assert figures(
        reports.call_totals(feature, today, today, tracking_uri=uri, method="server")
    ) == figures(reports.call_totals(feature, today, today, tracking_uri=uri, method="paging"))
    later = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    empty = reports.call_totals(feature, since=later, tracking_uri=uri, method="server")
    assert empty["total_calls"] == 0 and empty["by_model"] == [] and empty["total_cost"] == 0


def test_all_features_embedded_equal_feature_metrics(
    fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path
) -> None:
    """Every feature (the operations' and the default feature of the call outside them): the
    same numbers both ways, and the same as ``feature_metrics``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made = write_calls("traces", uri, fake, records, tmp_path, "shop")
    server = reports.call_totals(tracking_uri=uri)
    assert server["method"] == "server", server["fallback_reason"]
    assert figures(server) == figures(reports.call_totals(tracking_uri=uri, method="paging"))
    assert sorted(r["key"] for r in server["by_feature"]) == ["shop", "shop_default"]
    metrics = reports.feature_metrics(tracking_uri=uri)
    for key in (
        "total_calls",
        "total_cost",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "total_tokens",
    ):
        assert server[key] == metrics[key], key
    assert server["total_calls"] == len(made.calls) == 5


def test_runs_and_traces_pages_when_a_call_is_a_run(
    fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path
) -> None:
    """runs+traces: the call outside any operation is a run and a span; MLflow cannot tell they
    are one record, so ``auto`` pages (each call once) and says why; ``server`` refuses."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made = write_calls("runs+traces", uri, fake, records, tmp_path, "shop")
    result = reports.call_totals(tracking_uri=uri)
    assert result["method"] == "paging"
    assert "calls are runs" in result["fallback_reason"]
    assert result["total_calls"] == len(made.calls) == 5
    with pytest.raises(ValueError, match="calls are runs"):
        reports.call_totals(tracking_uri=uri, method="server")
    # The feature whose calls are all inside operations: spans only, the store's path.
    shop = reports.call_totals("shop", tracking_uri=uri)
    assert shop["method"] == "server", shop["fallback_reason"]
    assert figures(shop) == figures(reports.call_totals("shop", tracking_uri=uri, method="paging"))
    assert shop["total_calls"] == 4


def test_runs_mode_pages(fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made = write_calls("runs", uri, fake, records, tmp_path, "shop")
    result = reports.call_totals(tracking_uri=uri)
    assert result["method"] == "paging" and result["total_calls"] == len(made.calls)


def test_traces_not_ours_make_it_page(
    fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trace MLflow's own tracing wrote into the feature's experiment: MLflow's span counts
    would include it, ours do not."""
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow's tracing puts its trace files under ./mlruns

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_calls("traces", uri, fake, records, tmp_path, "shop")
    exp = reports.experiments(uri)
    exp_id = next(e["experiment_id"] for e in exp if e["key"] == "shop")
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(experiment_id=exp_id)
        with mlflow.start_span("theirs", span_type="CHAT_MODEL") as span:
            span.set_attribute("mlflow.llm.model", "gpt-4o")
        mlflow.flush_trace_async_logging()
    finally:
        mlflow.set_tracking_uri(None)
    result = reports.call_totals("shop", tracking_uri=uri)
    assert result["method"] == "paging" and "not tracked-openai's" in result["fallback_reason"]
    assert result["total_calls"] == 4


def test_a_bound_inside_an_operation_makes_it_page(
    fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path
) -> None:
    """MLflow puts a span in the window of its trace's start, reports by the span's own start:
    a bound between an operation's start and a call inside it is paged."""
    from tests.mlflow.traces.helpers import chat_served

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracked_openai.configure(experiment_prefix=f"totals-{time.time_ns()}-", spool_dir=str(tmp_path / "spool"))
    tracked_openai.configure(sinks=[*mode_sinks("traces", uri, timeout=120), records.sink])
    fake.add("POST", "/chat/completions", chat_served)
    client = tracked_openai.OpenAI(api_key="sk-test-hardcoded", http_client=fake.sync_client(), max_retries=0)
    try:
        with track("slow", "step"):
            time.sleep(0.05)
            cut = datetime.now(UTC)
            time.sleep(0.05)
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    finally:
        client.close()
    assert tracked_openai.flush(timeout=120)
    after = reports.call_totals("slow", since=cut, tracking_uri=uri)
    assert after["method"] == "paging" and "ends after it" in after["fallback_reason"]
    assert after["total_calls"] == 1
    before = reports.call_totals("slow", until=cut, tracking_uri=uri)
    assert before["method"] == "paging" and before["total_calls"] == 0
    # A bound no trace crosses: the store's path, same numbers.
    early = cut - timedelta(hours=1)
    server = reports.call_totals("slow", since=early, tracking_uri=uri)
    assert server["method"] == "server", server["fallback_reason"]
    assert figures(server) == figures(
        reports.call_totals("slow", since=early, tracking_uri=uri, method="paging")
    )

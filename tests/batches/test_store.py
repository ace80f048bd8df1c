"""Batch lines in a real MLflow store (embedded SQLite): each recorded exactly once, whether the
output is downloaded twice (by two "processes") or collected by ``tracked-openai batches
collect``, in either order; the CLI prints the summary. The fake Batch API: fake_batch_api.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

import tracked_openai
from tests.batches.fake_batch_api import BATCH_ID, ERROR_FILE, OUTPUT_FILE, FakeBatchAPI
from tests.helpers.fakeopenai import API_KEY, FakeOpenAI
from tracked_openai import track
from tracked_openai._config import settings
from tracked_openai._fake_server import FakeOpenAIServer
from tracked_openai.batches import wait, worker
from tracked_openai.batches.collect import collect
from tracked_openai.batches.lines import BATCH_ID_TAG
from tracked_openai.batches.meta import FEATURE_KEY, OPERATION_KEY
from tracked_openai.cli import main
from tracked_openai.export import runtime
from tracked_openai.sinks.mlflow import MlflowSink

EXPECTED_USD = Decimal("0.0053181")  # three lines of gpt-4o-mini at batch rates (test_batches.py)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = runtime.configured_sinks()
    previous_enabled = settings.enabled
    runtime.configure(sinks=[MlflowSink(uri)], enabled=True)
    worker._known.clear()
    worker._recent.clear()
    yield uri
    wait(10)
    runtime.shutdown(timeout=30)
    runtime.restore_sinks(previous)
    settings.enabled = previous_enabled
    worker._known.clear()
    worker._recent.clear()


def batch_call_runs(uri: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(
        client.search_runs(
            ids,
            filter_string=f"tags.`{BATCH_ID_TAG}` = '{BATCH_ID}' AND tags.kind = 'call'",
            max_results=1000,
        )
    )


def settle() -> None:
    assert wait(30)
    assert runtime.flush(timeout=60)


def download_all(client: tracked_openai.OpenAI) -> None:
    client.files.content(OUTPUT_FILE)
    client.files.content(ERROR_FILE)
    settle()


def test_two_downloads_and_collect_record_each_line_once(store: str) -> None:
    fake = FakeOpenAI()
    api = FakeBatchAPI(fake)
    client = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    with track("crs_analysis", "nightly_review"):
        batch = client.batches.create(
            input_file_id="file-abc123", endpoint="/v1/chat/completions", completion_window="24h"
        )
    api.complete(batch.id)
    client.batches.retrieve(batch.id)
    download_all(client)
    runs = batch_call_runs(store)
    assert len(runs) == 5

    # A second process downloads both files again: the store keeps one run per line.
    worker._known.clear()
    worker._recent.clear()
    download_all(tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0))
    # And collect finds every line recorded: nothing downloaded, nothing new.
    plain = openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    result = collect(plain, tracking_uri=store)
    assert (result.batches, result.downloaded, result.new, result.already) == (1, 0, 0, 5)
    runs = batch_call_runs(store)
    assert len(runs) == 5
    assert {r.data.tags["feature"] for r in runs} == {"crs_analysis"}
    assert sum(r.data.tags["status"] == "error" for r in runs) == 2
    cost = sum(Decimal(str(r.data.metrics.get("cost_usd", 0))) for r in runs)
    assert cost == EXPECTED_USD
    assert {r.data.tags.get("service_tier") for r in runs if r.data.tags["status"] == "success"} == {"batch"}


def test_collect_first_then_a_download_records_each_line_once(store: str) -> None:
    fake = FakeOpenAI()
    api = FakeBatchAPI(fake)
    api.add_completed(BATCH_ID, {FEATURE_KEY: "pfd_conversion", OPERATION_KEY: "spec_generation"})
    plain = openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    first = collect(plain, tracking_uri=store)
    assert (first.batches, first.downloaded, first.lines, first.new, first.already, first.errors) == (
        1,
        1,
        5,
        5,
        0,
        2,
    )
    assert first.cost_usd == EXPECTED_USD and first.flushed
    again = collect(plain, tracking_uri=store)
    assert (again.downloaded, again.new, again.already) == (0, 0, 5)
    tracked = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    download_all(tracked)
    runs = batch_call_runs(store)
    assert len(runs) == 5
    assert {(r.data.tags["feature"], r.data.tags.get("operation")) for r in runs} == {
        ("pfd_conversion", "spec_generation")
    }


def test_collect_takes_finished_batches_since_the_date(store: str) -> None:
    from datetime import UTC, datetime

    fake = FakeOpenAI()
    api = FakeBatchAPI(fake)
    api.add_completed(BATCH_ID, {})
    api.batches["batch_running"] = api.batch_object("batch_running", {}, "in_progress")
    # Expired: the requests it did not run are in its error file (billed nothing, recorded as errors).
    expired = api.batch_object("batch_expired", {}, "expired")
    expired.update(error_file_id=ERROR_FILE, request_counts={"total": 2, "completed": 0, "failed": 2})
    api.batches["batch_expired"] = expired
    plain = openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    later = collect(plain, tracking_uri=store, since=datetime(2026, 1, 1, tzinfo=UTC))
    assert (later.batches, later.new) == (0, 0)
    result = collect(plain, tracking_uri=store)
    # The running batch is not collected; the expired one's two error lines are.
    assert (result.batches, result.new, result.errors, result.cost_usd) == (2, 7, 4, EXPECTED_USD)
    again = collect(plain, tracking_uri=store)
    assert (again.batches, again.downloaded, again.new, again.already) == (2, 0, 0, 7)


def test_cli_batches_collect_prints_the_summary(
    store: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeOpenAI()
    api = FakeBatchAPI(fake)
    api.add_completed(BATCH_ID, {FEATURE_KEY: "crs_analysis"})
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with FakeOpenAIServer(fake=fake) as server:
        args = ["--tracking-uri", store, "batches", "collect", "--base-url", server.base_url]
        assert main([*args, "--format", "json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["records_new"] == 5 and summary["errors"] == 2
        assert Decimal(summary["cost_usd"]) == EXPECTED_USD
        assert main(args) == 0
        table = capsys.readouterr().out
    assert "already recorded" in table and "records new" in table
    assert len(batch_call_runs(store)) == 5


def test_cli_batches_collect_needs_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["batches", "collect"]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["runs+traces", "traces"])
def test_each_line_once_when_calls_are_spans(mode: str, tmp_path: Path) -> None:
    """In the trace modes a batch's lines are spans (of the batch's own trace when it was created
    through a tracked client): collect finds them there, and a second download adds none."""
    from tracked_openai.batches.collect import recorded_ids
    from tracked_openai.batches.lines import BatchInfo
    from tracked_openai.sinks.modes import mode_sinks

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = runtime.configured_sinks()
    previous_enabled, previous_spool = settings.enabled, settings.spool_dir
    runtime.configure(
        sinks=mode_sinks(mode, uri, timeout=120), enabled=True, spool_dir=str(tmp_path / "spool")
    )
    worker._known.clear()
    worker._recent.clear()
    try:
        fake = FakeOpenAI()
        api = FakeBatchAPI(fake)
        client = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
        with track("crs_analysis", "nightly_review"):
            batch = client.batches.create(
                input_file_id="file-abc123", endpoint="/v1/chat/completions", completion_window="24h"
            )
        api.complete(batch.id)
        client.batches.retrieve(batch.id)
        download_all(client)
        info = BatchInfo.of(api.batches[batch.id])
        assert len(recorded_ids(uri, info)) == 5
        worker._known.clear()
        worker._recent.clear()
        download_all(tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0))
        plain = openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
        result = collect(plain, tracking_uri=uri)
        assert (result.batches, result.downloaded, result.new, result.already) == (1, 0, 0, 5)
        from tracked_openai.reports.call_runs import CallRecords

        lines = [r for r in CallRecords(uri, None, None, None) if r.data.tags.get(BATCH_ID_TAG) == BATCH_ID]
        assert len(lines) == 5
        cost = sum(Decimal(str(r.data.metrics.get("cost_usd", 0))) for r in lines)
        assert cost == EXPECTED_USD
    finally:
        wait(10)
        runtime.shutdown(timeout=30)
        runtime.restore_sinks(previous)
        settings.enabled, settings.spool_dir = previous_enabled, previous_spool
        worker._known.clear()
        worker._recent.clear()

"""The REST API fuzzed from its own OpenAPI schema (schemathesis), in-process over ASGI, against a
real MLflow store seeded through the library (a tracked client over a fake transport, exporting
through the MLflow sink), and against a store that does not exist.

Every response must match the schema (status code documented, content type, body) and none may be
a 5xx, except the documented 503 of a missing store; a missing store is never created by reading.
Schemathesis generates both valid and invalid queries (wrong types, out-of-range limits, odd
dates and feature names).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

pytest.importorskip("fastapi", reason="the REST API needs the [api] extra")
schemathesis = pytest.importorskip("schemathesis", reason="the API fuzz tests need schemathesis (dev extra)")

from schemathesis import checks as st_checks  # noqa: E402

import tracked_openai  # noqa: E402
from tracked_openai.contrib.fastapi import PREFIX, create_app  # noqa: E402

from ._tally import counted, fuzz_settings, outcome  # noqa: E402
from ._wire import Delivery, Server, load_cases, make_client  # noqa: E402

# Hypothesis properties: make test runs them, make test-fast skips them (README, Development).
pytestmark = pytest.mark.slow

pytest.importorskip("tracked_openai.sinks.mlflow", reason="seeding writes through the MLflow sink")

OPENAPI = "/api/openapi.json"
SEEDED = "REST API: seeded store (schemathesis)"
MISSING = "REST API: missing store (schemathesis)"
# Everything schemathesis checks, except: its own 5xx rule (ours: no 5xx but a missing store's
# 503, checked in the tests), and "a schema-valid request is accepted": the schema types since,
# until and feature as free strings, and a value the server cannot read answers the documented
# 400 (`error`, `detail`).
CHECKS_EXCLUDED = [st_checks.not_a_server_error, st_checks.positive_data_acceptance]


def _seed(uri: str) -> None:
    """A few runs the way an application makes them: operations under ``track``, calls that
    succeed and fail, through the MLflow sink."""
    from tracked_openai.sinks.mlflow import MlflowSink

    bodies = load_cases("response_body")
    chat = json.dumps(bodies["chat_gpt5_nano_reasoning"]["response_body"]).encode()
    error = json.dumps(bodies["error_400_embeddings_bad_dimensions"]["response_body"]).encode()
    ok = Server(lambda r: chat, "application/json", Delivery())
    bad = Server(lambda r: error, "application/json", Delivery(), status=400)
    tracked_openai.configure(sinks=[MlflowSink(uri)])
    try:
        client = make_client(True, False, False, ok)
        failing = make_client(True, False, False, bad)
        msg = [{"role": "user", "content": "hi"}]
        for feature, operation in [("pid_verification", "diagram_analysis"), ("crs_analysis", "summarize")]:
            with tracked_openai.track(feature, operation):
                client.chat.completions.create(model="gpt-5-nano", messages=msg)
        with pytest.raises(openai.BadRequestError), tracked_openai.track("pfd_conversion", "spec_generation"):
            failing.embeddings.create(model="text-embedding-3-small", input="x", dimensions=-42)
        client.chat.completions.create(model="gpt-5-nano", messages=msg)  # outside any block
        client.close()
        failing.close()
        assert tracked_openai.flush(timeout=120)
    finally:
        tracked_openai.configure(sinks=[])  # as tests/conftest.py leaves it


@pytest.fixture(scope="module")
def seeded_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('api-fuzz') / 'mlflow.db'}"
    _seed(uri)
    return uri


# One app for both stores: with no URI of its own it reads MLFLOW_TRACKING_URI per request, which
# each test sets. (The schema is loaded when this module is collected; schemathesis' fixture-based
# loader does not run under pytest 9.)
schema = schemathesis.openapi.from_asgi(OPENAPI, create_app())


@pytest.fixture
def on_seeded_store(seeded_uri: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", seeded_uri)
    return seeded_uri


@pytest.fixture
def missing_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "nothing-here" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
    return path


@schema.parametrize()
@fuzz_settings(40)
def test_api_on_a_seeded_store(case: Any, on_seeded_store: str) -> None:
    with counted(SEEDED):
        response = case.call()
        outcome(SEEDED, str(response.status_code))
        assert response.status_code < 500, (response.status_code, response.text)
        case.validate_response(response, excluded_checks=CHECKS_EXCLUDED)


@schema.parametrize()
@fuzz_settings(25)
def test_api_on_a_missing_store(case: Any, missing_store: Path) -> None:
    with counted(MISSING):
        response = case.call()
        outcome(MISSING, str(response.status_code))
        if response.status_code >= 500:
            assert response.status_code == 503, (response.status_code, response.text)
            body = response.json()
            if case.path.endswith("/health/"):
                assert body["store"]["reachable"] is False, body
            else:
                assert body["error"] == "store_not_found", body
        case.validate_response(response, excluded_checks=CHECKS_EXCLUDED)
        assert not missing_store.parent.exists(), "reading created the store"


def test_the_seeded_store_holds_what_was_made(seeded_uri: str) -> None:
    """The fuzzed app reads real runs: the seeding above reached the store."""
    from starlette.testclient import TestClient

    with TestClient(create_app(tracking_uri=seeded_uri)) as api:
        body = api.get(f"{PREFIX}/metrics/").json()["metrics"]
        keys = {e["key"] for e in api.get(f"{PREFIX}/experiments/").json()["experiments"]}
        totals = api.get(f"{PREFIX}/totals/").json()
    assert {"pid_verification", "crs_analysis", "pfd_conversion"} <= keys
    assert body["total_runs"] >= 3 and body["total_calls"] >= 3
    # totals/ is fuzzed on the same calls (runs mode: paged, with the reason).
    assert (totals["total_calls"], totals["method"]) == (body["total_calls"], "paging")
    assert totals["total_cost"] == body["total_cost"]

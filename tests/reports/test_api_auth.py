"""Who may read the numbers over REST (issue 21 item 4): the FastAPI app's bearer token, the
router's auth dependency, and `serve` refusing an open interface without a token."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi", reason="the REST API needs the [api] extra")
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.testclient import TestClient

from tests.helpers.reports import Seeded, seed_contract_store
from tracked_openai.contrib.fastapi import PREFIX, bearer_token, create_app, create_router

TOKEN = "s3cret-token-for-tests"
ENDPOINTS = ["experiments/", "runs/", "metrics/", "totals/", "health/"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed_contract_store(f"sqlite:///{tmp_path_factory.mktemp('auth') / 'mlflow.db'}")


@pytest.fixture(scope="module")
def guarded(seeded: Seeded) -> Iterator[TestClient]:
    with TestClient(create_app(tracking_uri=seeded.uri, token=TOKEN)) as client:
        yield client


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer ", f"bearer{TOKEN}"],
)
def test_without_the_token_every_endpoint_answers_401(
    guarded: TestClient, endpoint: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    r = guarded.get(f"{PREFIX}/{endpoint}", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"] == "unauthorized"
    assert TOKEN not in r.text


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_with_the_token_every_endpoint_answers(guarded: TestClient, endpoint: str) -> None:
    r = guarded.get(f"{PREFIX}/{endpoint}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    # The scheme is case-insensitive, as RFC 7235 says.
    again = guarded.get(f"{PREFIX}/{endpoint}", headers={"Authorization": f"bearer {TOKEN}"})
    assert again.status_code == 200


def test_the_metrics_behind_the_token_are_the_real_ones(guarded: TestClient) -> None:
    r = guarded.get(
        f"{PREFIX}/metrics/",
        params={"feature": "pid_verification"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    body = r.json()
    assert body["feature"] == "pid_verification"
    assert body["metrics"]["total_runs"] == 4


def test_the_docs_page_stays_open(guarded: TestClient) -> None:
    # It describes the API; it holds no numbers.
    assert guarded.get("/api/docs/").status_code == 200


def test_bearer_token_refuses_an_empty_token() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        bearer_token("")


def test_the_router_takes_the_apps_own_auth_dependency(seeded: Seeded) -> None:
    def staff_only(request: Request) -> None:
        if request.headers.get("x-user") != "staff":
            raise HTTPException(403, "staff only")

    app = FastAPI()
    app.include_router(create_router(seeded.uri, dependencies=[Depends(staff_only)]))
    with TestClient(app) as client:
        assert client.get(f"{PREFIX}/experiments/").status_code == 403
        assert client.get(f"{PREFIX}/experiments/", headers={"x-user": "staff"}).status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "example.internal"])
def test_serve_refuses_an_open_interface_without_a_token(seeded: Seeded, host: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracked_openai.cli",
            "--tracking-uri",
            seeded.uri,
            "serve",
            "--host",
            host,
            "--port",
            str(_free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "TRACKED_OPENAI_API_TOKEN"},
    )
    assert done.returncode == 2
    assert f"refusing to serve cost data on {host} without a token" in done.stderr
    assert "--insecure" in done.stderr


@pytest.mark.server
def test_serve_with_a_token_on_all_interfaces_requires_it(seeded: Seeded) -> None:
    pytest.importorskip("uvicorn", reason="serve needs the [api] extra")
    port = _free_port()
    env = {**os.environ, "TRACKED_OPENAI_API_TOKEN": TOKEN}
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tracked_openai.cli",
            "--tracking-uri",
            seeded.uri,
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stderr is not None
            assert proc.stderr.readline().startswith("tracked-openai API on http://0.0.0.0:")
            url = f"http://127.0.0.1:{port}{PREFIX}/metrics/?feature=pid_verification"
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url, timeout=120)
            assert refused.value.code == 401
            refused.value.close()
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(request, timeout=120) as resp:
                assert json.loads(resp.read())["metrics"]["total_runs"] == 4
        finally:
            proc.terminate()
            proc.wait(10)

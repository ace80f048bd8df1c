"""Call totals where users look: ``tracked-openai report --totals`` and ``GET totals/`` (the
framework-free handler and the FastAPI app; Django: tests/django/test_totals_django.py) give
exactly ``reports.call_totals``'s numbers, and ``report``'s totals, for calls written through
the library (tracked client over the fake OpenAI transport) into a real MLflow store; the
store's aggregation in traces mode, paging with the reason in runs mode."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fakeopenai import FakeOpenAI
from tests.helpers.mlflow_server import MlflowServer, mlflow_server  # noqa: F401 - fixture
from tests.helpers.reports import Seeded, seed_contract_store
from tests.helpers.totals import (
    figures,
    settings_restored,  # noqa: F401 - fixture
    unique_feature,
    write_calls,
)
from tracked_openai import reports
from tracked_openai.cli import main
from tracked_openai.reports import http as endpoints
from tracked_openai.testing import TrackedRecords

pytestmark = pytest.mark.usefixtures("settings_restored")

PREFIX = "/api/v1/mlflow/tracking"
# What report's feature_metrics and call_totals both have, and must agree on.
SHARED = ("total_calls", "total_cost", "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``tracked-openai ARGS`` in this process: exit code, stdout, stderr. (``--tracking-uri``
    goes after the command: before it, ``main`` would export it to the environment.)"""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exited:  # argparse's own usage errors
        code = int(exited.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def rest(uri: str, **query: str) -> tuple[int, dict[str, Any]]:
    """``GET totals/`` through the FastAPI app."""
    pytest.importorskip("fastapi", reason="the REST API needs the [api] extra")
    from fastapi.testclient import TestClient

    from tracked_openai.contrib.fastapi import create_app

    with TestClient(create_app(tracking_uri=uri)) as client:
        r = client.get(f"{PREFIX}/totals/", params=query)
    return r.status_code, r.json()


def _same_everywhere(
    uri: str, capsys: pytest.CaptureFixture[str], *, feature: str | None = None, shown: str | None = None
) -> dict[str, Any]:
    """The CLI's JSON, the framework-free handler and the FastAPI app all answer exactly
    ``call_totals`` (plus the store read); ``report``'s JSON has the same totals."""
    expected = reports.call_totals(feature, tracking_uri=uri)
    body = {"tracking_uri": shown or uri, **expected}
    args = ["--feature", feature] if feature else []
    code, out, err = cli(capsys, "report", "--totals", "--format", "json", "--tracking-uri", uri, *args)
    assert code == 0, err
    assert json.loads(out) == body
    assert endpoints.totals(uri, feature) == (200, body)
    assert rest(uri, **({"feature": feature} if feature else {})) == (200, body)
    code, out, err = cli(capsys, "report", "--format", "json", "--tracking-uri", uri, *args)
    assert code == 0, err
    report = json.loads(out)
    for key in SHARED:
        assert expected[key] == report[key], key
    return expected


def test_traces_mode_every_surface_uses_the_store(
    fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made = write_calls("traces", uri, fake, records, tmp_path, "shop")
    totals = _same_everywhere(uri, capsys)
    assert totals["method"] == "server" and totals["fallback_reason"] is None
    assert totals["total_calls"] == len(made.calls) == 5
    assert [r["key"] for r in totals["by_feature"]] == ["shop", "shop_default"]
    assert _same_everywhere(uri, capsys, feature="shop")["total_calls"] == 4
    # Paging asked for: the same figures, said so.
    code, out, _ = cli(
        capsys, "report", "--totals", "--method", "paging", "--format", "json", "--tracking-uri", uri
    )
    assert code == 0
    paged = json.loads(out)
    assert (paged["method"], paged["fallback_reason"]) == ("paging", None)
    assert figures(paged) == figures({"tracking_uri": uri, **totals})
    status, body = rest(uri, method="paging")
    assert status == 200 and body == paged

    # The table: the header names the store, one line the method, then the figures.
    code, out, err = cli(capsys, "report", "--totals", "--tracking-uri", uri)
    assert code == 0, err
    lines = [line.strip() for line in out.splitlines()]
    assert lines[:3] == [
        "tracked-openai report --totals: all features",
        f"store: {uri}",
        "method: server (added up by the store: MLflow's trace-metrics aggregation)",
    ]
    assert "│ API calls       │" in out and "by feature" in out and "by model" in out
    calls_row = next(line for line in lines if line.startswith("│ API calls"))
    assert calls_row.split("│")[2].strip() == "5"
    tokens = f"{totals['prompt_tokens']:,} / {totals['completion_tokens']:,}"
    assert any(line.startswith("│ tokens in / out") and tokens in line for line in lines)
    code, out, _ = cli(
        capsys, "report", "--totals", "--method", "paging", "--by", "day", "--tracking-uri", uri
    )
    assert code == 0
    assert "method: paging (every record read, as asked)" in out and "by day" in out and "by model" not in out

    # CSV: report's convention (the chosen breakdown), by feature unless --by says otherwise.
    code, out, _ = cli(capsys, "report", "--totals", "--format", "csv", "--tracking-uri", uri)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["feature"] for r in rows] == ["shop", "shop_default"]
    for row, want in zip(rows, totals["by_feature"], strict=True):
        assert int(row["total_calls"]) == want["total_calls"]
        assert int(row["prompt_tokens"]) == want["prompt_tokens"]
        assert float(row["total_cost"]) == pytest.approx(want["total_cost"], abs=1e-12)
    code, out, _ = cli(
        capsys, "report", "--totals", "--format", "csv", "--by", "model", "--tracking-uri", uri
    )
    models = list(csv.DictReader(io.StringIO(out)))
    assert {r["model"] for r in models} == {r["key"] for r in totals["by_model"]}
    assert set(models[0]) == {"model", "total_calls", "total_cost"}


def test_runs_mode_pages_and_says_why(
    fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made = write_calls("runs", uri, fake, records, tmp_path, "shop")
    totals = _same_everywhere(uri, capsys)
    assert totals["method"] == "paging" and "calls are runs" in totals["fallback_reason"]
    assert totals["total_calls"] == len(made.calls) == 5
    code, out, _ = cli(capsys, "report", "--totals", "--feature", "shop", "--tracking-uri", uri)
    assert code == 0
    method = out.splitlines()[2]
    assert method.startswith(
        "method: paging (every record read; the store could not add these up: calls are runs"
    )
    # Asking for the store's path where it cannot: a usage error / 400 with the reason.
    code, out, err = cli(capsys, "report", "--totals", "--method", "server", "--tracking-uri", uri)
    assert (code, out) == (2, "")
    assert err.startswith(
        "tracked-openai report: error: the store cannot add these up itself: calls are runs"
    )
    status, body = rest(uri, method="server")
    assert status == 400 and body["error"] == "bad_request"
    assert body["detail"].startswith("the store cannot add these up itself: calls are runs")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed_contract_store(f"sqlite:///{tmp_path_factory.mktemp('totals-cli') / 'mlflow.db'}")


class TestUsageErrors:
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--method", "server"], "--method needs --totals"),
            (["--totals", "--operation", "image_analysis"], "--operation does not go with --totals"),
            (["--totals", "--budgets", "b.yaml"], "--budgets does not go with --totals"),
            (["--totals", "--by", "operation"], "--by operation does not go with --totals"),
            (["--totals", "--since", "2026-11-22", "--until", "2026-11-20"], "since must be before until"),
            (
                ["--totals", "--feature", "pid_verfication"],
                "unknown feature 'pid_verfication'; known features:",
            ),
        ],
        ids=["method-alone", "operation", "budgets", "by", "since-after-until", "feature"],
    )
    def test_exit_2_with_one_line(
        self, seeded: Seeded, capsys: pytest.CaptureFixture[str], args: list[str], message: str
    ) -> None:
        code, out, err = cli(capsys, "report", "--tracking-uri", seeded.uri, *args)
        assert (code, out) == (2, "")
        assert err.startswith(f"tracked-openai report: error: {message}"), err
        assert len(err.strip().splitlines()) == 1

    @pytest.mark.parametrize(
        "args", [["--method", "fast"], ["--since", "last week"]], ids=["method", "since"]
    )
    def test_bad_values_are_argparse_errors(
        self, capsys: pytest.CaptureFixture[str], args: list[str]
    ) -> None:
        code, out, err = cli(capsys, "report", "--totals", *args)
        assert (code, out) == (2, "")
        assert "error:" in err and "Traceback" not in err

    def test_missing_store_exit_3_and_not_created(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        uri = f"sqlite:///{tmp_path}/nope/mlflow.db"
        code, _, err = cli(capsys, "report", "--totals", "--tracking-uri", uri)
        assert code == 3
        assert err.startswith(f"tracked-openai report: error: no MLflow store at {uri}: ")
        assert list(tmp_path.iterdir()) == []

    def test_help_names_it(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            main(["report", "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--totals" in text and "--method {auto,server,paging}" in text
        assert "a line under the header says which method was used" in text


class TestRestErrors:
    """The framework-free handler (what FastAPI and Django serve): 400, 404, 503, never a trace."""

    @pytest.mark.parametrize(
        ("query", "detail"),
        [
            ({"method": "fast"}, "method must be one of auto, server, paging, got 'fast'"),
            ({"method": ""}, "method must be one of auto, server, paging, got ''"),
            ({"since": "last tuesday"}, "invalid date 'last tuesday'"),
            ({"since": "2026-11-22", "until": "2026-11-20"}, "since must be before until"),
        ],
    )
    def test_bad_query_is_400(self, seeded: Seeded, query: dict[str, str], detail: str) -> None:
        status, body = endpoints.totals(seeded.uri, **query)
        assert status == 400 and body["error"] == "bad_request"
        assert body["detail"].startswith(detail)
        assert rest(seeded.uri, **query) == (status, body)

    def test_unknown_feature_is_404_with_the_known_ones(self, seeded: Seeded) -> None:
        status, body = rest(seeded.uri, feature="pid_verfication")
        assert status == 404
        assert (body["error"], body["feature"]) == ("unknown_feature", "pid_verfication")
        assert {"pid_verification", "crs_analysis"} <= set(body["known_features"])

    def test_runs_mode_store_pages(self, seeded: Seeded) -> None:
        """The hand-made store of the report tests: calls are runs, so the records are paged, and
        the figures are report's (feature_metrics')."""
        status, body = endpoints.totals(seeded.uri, "pid_verification")
        assert status == 200 and body["method"] == "paging"
        metrics = reports.feature_metrics("pid_verification", tracking_uri=seeded.uri)
        assert (body["total_calls"], body["total_cost"]) == (6, pytest.approx(metrics["total_cost"]))


@pytest.fixture
def server_uri(mlflow_server: MlflowServer) -> Iterator[str]:  # noqa: F811 - the fixture
    yield mlflow_server.url


def test_through_a_real_mlflow_server(
    server_uri: str,
    fake: FakeOpenAI,
    records: TrackedRecords,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``POST /api/3.0/mlflow/traces/metrics`` through ``mlflow server``: the CLI and the REST
    API get the server's aggregation, and exactly ``call_totals``'s figures."""
    feature = unique_feature("shop")
    write_calls("traces", server_uri, fake, records, tmp_path, feature)
    totals = _same_everywhere(server_uri, capsys, feature=feature)
    assert totals["method"] == "server", totals["fallback_reason"]
    assert totals["total_calls"] == 4

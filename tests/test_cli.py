"""The ``tracked-openai`` command through its entry point (subprocesses), every command and the
error cases scripts rely on: 0 ok, 2 bad arguments, 3 store unreachable."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .test_reports_helpers import Seeded, seed_contract_store

SCRIPT = Path(sys.executable).with_name("tracked-openai")
UNREACHABLE = "http://127.0.0.1:9"
Completed = subprocess.CompletedProcess[str]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Completed:
    environ = {**os.environ, "COLUMNS": "160", **(env or {})}
    environ.pop("MLFLOW_TRACKING_URI", None)
    if env and "MLFLOW_TRACKING_URI" in env:
        environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    return subprocess.run(
        [sys.executable, "-m", "tracked_openai.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=environ,
    )


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed_contract_store(f"sqlite:///{tmp_path_factory.mktemp('cli') / 'mlflow.db'}")


class TestReport:
    def test_table(self, seeded: Seeded) -> None:
        r = run("--tracking-uri", seeded.uri, "report")
        assert r.returncode == 0, r.stderr
        assert "tracked-openai report: all features" in r.stdout
        assert "$0.0380" in r.stdout
        assert "by feature" in r.stdout and "by model" in r.stdout
        assert "pid_verification" in r.stdout and "mystery-model" in r.stdout

    def test_json_feature(self, seeded: Seeded) -> None:
        r = run("report", "--feature", "pid_verification", "--format", "json", "--tracking-uri", seeded.uri)
        assert r.returncode == 0, r.stderr
        m = json.loads(r.stdout)
        assert (m["total_runs"], m["total_calls"], m["unpriced_calls"]) == (4, 6, 1)
        assert m["total_cost"] == pytest.approx(0.037)

    def test_csv_by_operation_since(self, seeded: Seeded) -> None:
        """Environment store, a date filter and a CSV breakdown."""
        r = run("report", "--by", "operation", "--format", "csv", "--since", "2026-11-21",
                env={"MLFLOW_TRACKING_URI": seeded.uri})
        assert r.returncode == 0, r.stderr
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        assert {row["operation"] for row in rows} == {"(none)", "report", "sub"}
        # Each call (and its cost) under the operation it was made in: the nested one.
        by_op = {row["operation"]: row for row in rows}
        assert (by_op["report"]["total_runs"], float(by_op["report"]["total_cost"])) == ("1", 0.0)
        assert (by_op["sub"]["total_calls"], float(by_op["sub"]["total_cost"])) == ("1", 0.002)

    def test_by_day_table_through_console_script(self, seeded: Seeded) -> None:
        r = subprocess.run(
            [str(SCRIPT), "report", "--feature", "pid_verification", "--by", "day",
             "--tracking-uri", seeded.uri],
            capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert "2026-11-20" in r.stdout and "2026-11-21" in r.stdout


def test_experiments(seeded: Seeded) -> None:
    r = run("--tracking-uri", seeded.uri, "experiments", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = {e["key"]: e for e in json.loads(r.stdout)["experiments"]}
    assert rows["pid_verification"]["experiment_id"] and rows["visual_generation"]["experiment_id"] is None


def test_runs(seeded: Seeded) -> None:
    r = run("--tracking-uri", seeded.uri, "runs", "--feature", "pid_verification", "--limit", "2",
            "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["run_id"] for row in rows] == [seeded.run_ids["D"], seeded.run_ids["C"]]


def test_runs_and_experiments_tables(seeded: Seeded) -> None:
    """The rich tables (one process: `runs` then `experiments` need a store each)."""
    r = run("--tracking-uri", seeded.uri, "runs", "--limit", "3")
    assert r.returncode == 0, r.stderr
    assert seeded.run_ids["F"][:12] in r.stdout


class TestErrors:
    @pytest.mark.parametrize(
        "args",
        [
            [],
            ["report", "--by", "colour"],
            ["report", "--since", "last week"],
            ["report", "--format", "xml"],
            ["runs", "--limit", "0"],
            ["serve", "--port", "99999"],
            ["nonsense"],
        ],
        ids=["no-command", "by", "since", "format", "limit", "port", "command"],
    )
    def test_bad_arguments_exit_2(self, args: list[str]) -> None:
        r = run(*args)
        assert r.returncode == 2
        assert "error:" in r.stderr
        assert "Traceback" not in r.stderr

    def test_since_after_until_exit_2(self, seeded: Seeded) -> None:
        r = run("--tracking-uri", seeded.uri, "report", "--since", "2026-11-22", "--until", "2026-11-20")
        assert r.returncode == 2
        assert "since must be before until" in r.stderr

    @pytest.mark.parametrize("command", ["report", "experiments", "runs"])
    def test_unreachable_store_exit_3(self, command: str) -> None:
        r = run("--tracking-uri", UNREACHABLE, command)
        assert r.returncode == 3
        assert f"tracked-openai {command}: error: tracking server {UNREACHABLE} is unreachable" in r.stderr
        assert "Traceback" not in r.stderr

    def test_help_exit_0(self) -> None:
        r = run("--help")
        assert r.returncode == 0
        assert "Exit codes" in r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve(seeded: Seeded) -> None:
    """`serve` answers the REST API on the given loopback port until stopped."""
    pytest.importorskip("uvicorn", reason="serve needs the [api] extra")
    port = _free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "tracked_openai.cli", "--tracking-uri", seeded.uri, "serve",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as proc:
        _check_serve(proc, port)


def _check_serve(proc: subprocess.Popen[str], port: int) -> None:
    try:
        deadline = time.monotonic() + 30
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                url = f"http://127.0.0.1:{port}/api/v1/mlflow/tracking/metrics/?feature=pid_verification"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    body = json.loads(resp.read())
                break
            except OSError:
                time.sleep(0.2)
        assert body is not None, "server did not answer"
        assert body["total_runs"] == 4
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/docs/", timeout=2) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

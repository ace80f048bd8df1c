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
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.reports import Seeded, seed_contract_store

SCRIPT = Path(sys.executable).with_name("tracked-openai")
UNREACHABLE = "http://127.0.0.1:9"
DASH = "\u2013"  # what tables show for a value that does not exist
Completed = subprocess.CompletedProcess[str]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> Completed:
    environ = {**os.environ, "COLUMNS": "160", **(env or {})}
    environ.pop("MLFLOW_TRACKING_URI", None)
    if env and "MLFLOW_TRACKING_URI" in env:
        environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    return subprocess.run(
        [sys.executable, "-m", "tracked_openai.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=environ, cwd=cwd,
    )


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed_contract_store(f"sqlite:///{tmp_path_factory.mktemp('cli') / 'mlflow.db'}")


class TestReport:
    def test_table(self, seeded: Seeded) -> None:
        r = run("--tracking-uri", seeded.uri, "report")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        # The header names the store it read.
        assert lines[0].strip() == "tracked-openai report: all features"
        assert lines[1].strip() == f"store: {seeded.uri}"
        assert "$0.0380" in r.stdout
        assert "by feature" in r.stdout and "by model" in r.stdout
        assert "pid_verification" in r.stdout and "mystery-model" in r.stdout
        # A model whose every call is unpriced has no cost to show: a dash, not "$0.0000".
        mystery = next(line for line in lines if "mystery-model" in line)
        cells = [c.strip() for c in mystery.split("│")[1:-1]]
        assert cells[7:10] == [DASH, DASH, "1"]  # cost, cost/call, unpriced
        gpt4o_mini = next(line for line in lines if "│ gpt-4o-mini " in line)
        assert "$0.007 " in gpt4o_mini and "$0.0035 " in gpt4o_mini

    def test_json_feature(self, seeded: Seeded) -> None:
        r = run("report", "--feature", "pid_verification", "--format", "json", "--tracking-uri", seeded.uri)
        assert r.returncode == 0, r.stderr
        m = json.loads(r.stdout)
        assert m["tracking_uri"] == seeded.uri
        assert (m["total_runs"], m["total_calls"], m["unpriced_calls"]) == (4, 6, 1)
        assert m["total_cost"] == pytest.approx(0.037)

    def test_one_operation(self, seeded: Seeded) -> None:
        r = run("report", "--feature", "pid_verification", "--operation", "image_analysis",
                "--tracking-uri", seeded.uri)
        assert r.returncode == 0, r.stderr
        header = r.stdout.splitlines()[0].strip()
        assert header == "tracked-openai report: pid_verification, operation image_analysis"
        assert "│ runs (operations + top-level calls) │               2 │" in r.stdout

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
    assert r.stdout.splitlines()[1].strip() == f"store: {seeded.uri}"


def test_experiments_in_an_empty_store_says_they_are_the_defaults(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # an existing, empty store
    r = run("--tracking-uri", uri, "experiments")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 4
    for feature in ("pid_verification", "pfd_conversion", "crs_analysis", "visual_generation"):
        row = next(line for line in rows if f"│ {feature} " in line)
        assert f"{DASH} (no runs yet)" in row and "default AIFlow feature" in row
    assert "Nothing recorded in this store yet. The features listed are the default AIFlow features" in (
        r.stdout
    )


class TestMoney:
    """Costs keep their significant digits; a cost nobody could price is a dash, not $0."""

    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            (2e-7, "$0.0000002"),
            (2.6e-7, "$0.00000026"),
            (0.0000585, "$0.0000585"),
            (0.00115, "$0.00115"),
            (0.0099999, "$0.01"),
            (0.0122, "$0.0122"),
            (1234.5, "$1,234.5000"),
            (0.0, "$0"),
            (None, DASH),
        ],
    )
    def test_usd(self, value: float | None, shown: str) -> None:
        from tracked_openai.cli.reports import _usd

        assert _usd(value) == shown

    def test_all_unpriced_is_a_dash(self) -> None:
        from tracked_openai.cli.reports import _cost

        assert _cost({"total_cost": 0.0, "unpriced_calls": 2}, "total_cost") == DASH
        # Priced calls that failed before the model answered cost nothing: that is $0.
        assert _cost({"total_cost": 0.0, "unpriced_calls": 0}, "total_cost") == "$0"
        # Some priced, some not: the priced part is shown (the unpriced column says the rest).
        assert _cost({"total_cost": 2e-7, "unpriced_calls": 1}, "total_cost") == "$0.0000002"


class TestReadingNeverCreatesAStore:
    @pytest.mark.parametrize("command", ["report", "experiments", "runs"])
    def test_default_store_missing_in_this_folder(self, tmp_path: Path, command: str) -> None:
        """`tracked-openai report` in a folder without a store: exit 3, one line naming the URI,
        and no mlflow.db appears."""
        r = run(command, cwd=tmp_path)
        assert r.returncode == 3
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        assert r.stderr.startswith(f"tracked-openai {command}: error: no MLflow store at {uri}: ")
        assert len(r.stderr.strip().splitlines()) == 1
        assert list(tmp_path.iterdir()) == []

    def test_missing_folder_is_not_created(self, tmp_path: Path) -> None:
        uri = f"sqlite:///{tmp_path}/nope/x.db"
        r = run("--tracking-uri", uri, "report")
        assert r.returncode == 3
        assert f"no MLflow store at {uri}: {tmp_path}/nope/x.db does not exist" in r.stderr
        assert "Traceback" not in r.stderr
        assert not (tmp_path / "nope").exists()


class TestUnknownFeature:
    @pytest.mark.parametrize("command", ["report", "runs"])
    def test_lists_the_known_features(self, seeded: Seeded, command: str) -> None:
        r = run("--tracking-uri", seeded.uri, command, "--feature", "pid_verfication")
        assert r.returncode == 2
        assert r.stderr.strip() == (
            f"tracked-openai {command}: error: unknown feature 'pid_verfication'; known features: "
            "crs_analysis, default, pfd_conversion, pid_verification, visual_generation"
        )
        assert r.stdout == ""


class TestHelp:
    @pytest.mark.parametrize(
        ("command", "words"),
        [
            ("experiments", "the MLflow experiment its runs go to"),
            ("runs", "The newest runs, newest first"),
            ("report", "The header names the store read."),
            ("serve", "Prints the address once the port accepts connections."),
        ],
    )
    def test_every_command_explains_itself(
        self, command: str, words: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert words in self.help(command, capsys)

    def test_demo_writes_its_store(self, capsys: pytest.CaptureFixture[str]) -> None:
        text = self.help("demo", capsys)
        assert "MLflow store the demo writes its runs to, created if missing" in text
        assert "to read" not in text

    @staticmethod
    def help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
        """``tracked-openai COMMAND --help`` in this process (argparse prints it and exits 0)."""
        from tracked_openai.cli import main

        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0
        return " ".join(capsys.readouterr().out.split())


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


@pytest.mark.server
def test_serve(seeded: Seeded) -> None:
    """`serve` answers the REST API on the given loopback port until stopped, and says so only
    once the port accepts connections."""
    pytest.importorskip("uvicorn", reason="serve needs the [api] extra")
    port = _free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "tracked_openai.cli", "--tracking-uri", seeded.uri, "serve",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()  # blocks until serve prints its first line
            assert line == f"tracked-openai API on http://127.0.0.1:{port}/api/docs/ (store: {seeded.uri})\n"
            # One attempt, no retry: the port must accept connections the moment the line is out.
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
        except BaseException:
            proc.kill()
            raise
        _check_serve(proc, port)


@pytest.mark.server
def test_serve_warns_about_a_missing_store(tmp_path: Path) -> None:
    """A missing store does not stop `serve` (the application may not have written yet), but it
    says so, and the endpoints answer 503 naming the store, without creating it."""
    pytest.importorskip("uvicorn", reason="serve needs the [api] extra")
    port = _free_port()
    uri = f"sqlite:///{tmp_path}/later.db"
    with subprocess.Popen(
        [sys.executable, "-m", "tracked_openai.cli", "--tracking-uri", uri, "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            warning = proc.stderr.readline()
            assert warning.startswith(f"tracked-openai serve: warning: no MLflow store at {uri}: ")
            assert warning.endswith("; the endpoints answer 503 until it is there\n")
            assert proc.stderr.readline().startswith("tracked-openai API on ")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/mlflow/tracking/metrics/", timeout=5)
                raise AssertionError("expected HTTP 503")
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
                assert json.loads(exc.read())["error"] == "store_not_found"
            assert list(tmp_path.iterdir()) == []
        finally:
            proc.terminate()
            proc.wait(10)


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
        assert body["feature"] == "pid_verification" and body["metrics"]["total_runs"] == 4
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/docs/", timeout=2) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

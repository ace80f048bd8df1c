"""``manage.py tracked_openai ...``: the CLI's output and exit codes, on the project's store."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.helpers.reports import Seeded, seed_contract_store
from tracked_openai.cli import main as cli_main
from tracked_openai.contrib.django.management.commands.tracked_openai import cli_main as resolved_main


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed_contract_store(f"sqlite:///{tmp_path_factory.mktemp('cmd') / 'mlflow.db'}")


@pytest.fixture
def project_store(settings: Any, seeded: Seeded) -> Seeded:
    settings.TRACKED_OPENAI = {"start": False, "tracking_uri": seeded.uri}
    return seeded


def _cli(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(list(argv)) == 0
    return out.getvalue()


def _manage(*argv: str) -> str:
    out = io.StringIO()
    call_command("tracked_openai", *argv, stdout=out)
    return out.getvalue()


def test_the_console_script_entry_is_what_runs() -> None:
    assert resolved_main() is cli_main


@pytest.mark.parametrize(
    "argv",
    [
        ("report", "--feature", "pid_verification", "--format", "json"),
        ("report", "--by", "model"),
        ("runs", "--feature", "pid_verification", "--limit", "2"),
        ("experiments",),
    ],
)
def test_same_output_as_the_cli_on_the_settings_store(project_store: Seeded, argv: tuple[str, ...]) -> None:
    text = _manage(*argv)
    assert text
    assert text == _cli("--tracking-uri", project_store.uri, *argv)


def test_pricing(project_store: Seeded) -> None:
    assert _manage("pricing", "show") == _cli("pricing", "show")


def test_budgets_without_any_configured(project_store: Seeded) -> None:
    assert "no budgets configured" in _manage("budgets")


def test_budgets_of_the_projects_settings(settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text("budgets:\n  - feature: pid_verification\n    usd: 5\n")
    ledger = f"sqlite:///{tmp_path}/ledger.db"
    settings.TRACKED_OPENAI = {"start": False, "budgets": str(path), "ledger_url": ledger}
    out = _manage("budgets")
    assert "feature=pid_verification|day" in out
    assert out == _cli("budgets", "--budgets", str(path), "--ledger-url", ledger)


def test_a_tracking_uri_given_wins(settings: Any, project_store: Seeded, tmp_path: Path) -> None:
    settings.TRACKED_OPENAI = {"start": False, "tracking_uri": f"sqlite:///{tmp_path}/nope.db"}
    assert _manage("experiments", "--tracking-uri", project_store.uri) == _cli(
        "--tracking-uri", project_store.uri, "experiments"
    )


def test_missing_store_exits_3_like_the_cli(settings: Any, tmp_path: Path) -> None:
    settings.TRACKED_OPENAI = {"start": False, "tracking_uri": f"sqlite:///{tmp_path}/nope/mlflow.db"}
    with pytest.raises(CommandError) as info:
        _manage("report")
    assert info.value.returncode == 3
    assert list(tmp_path.iterdir()) == []

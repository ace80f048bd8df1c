"""``settings.TRACKED_OPENAI``: validated by Django's system checks, applied by ``ready()``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

import tracked_openai
from tracked_openai._config import settings as tracking_settings
from tracked_openai.contrib.django import conf
from tracked_openai.contrib.django.apps import TrackedOpenAIConfig
from tracked_openai.export import runtime


def _check(settings: Any, value: Any) -> str:
    settings.TRACKED_OPENAI = value
    with pytest.raises(SystemCheckError) as info:
        call_command("check", fail_level="WARNING")
    return str(info.value)


@pytest.mark.parametrize(
    ("value", "key", "wanted"),
    [
        ({"flush_interval": "soon"}, "flush_interval", "must be a number"),
        ({"queue_size": 0}, "queue_size", "out of range"),
        ({"overflow": "discard"}, "overflow", "'spool' or 'drop'"),
        ({"enabled": "yes"}, "enabled", "True or False"),
        ({"pricing": "/nope/prices.yaml"}, "pricing", "does not exist"),
        ({"features": {"pid": 3}}, "features", "dict of"),
        ({"user": "email"}, "user", "'id' or 'hashed'"),
        ({"api_permission": "everyone"}, "api_permission", "staff"),
        ({"views": {"reports:*": {"operation": "x"}}}, "views", "'reports:*'"),
    ],
)
def test_bad_value_is_an_error_naming_its_key(settings: Any, value: Any, key: str, wanted: str) -> None:
    out = _check(settings, value)
    assert "tracked_openai.E002" in out
    assert f"TRACKED_OPENAI['{key}']" in out
    assert wanted in out


def test_not_a_dict(settings: Any) -> None:
    assert "tracked_openai.E001" in _check(settings, ["enabled"])


def test_unknown_key_is_a_warning_with_the_known_ones(settings: Any) -> None:
    settings.TRACKED_OPENAI = {"flush_intervall": 2}
    call_command("check")  # a warning does not fail the default level
    out = _check(settings, {"flush_intervall": 2})
    assert "tracked_openai.W001" in out
    assert "'flush_intervall'" in out
    assert "flush_interval" in out.split("HINT:")[1]


def test_a_broken_budgets_file_is_an_error_with_its_line(settings: Any, tmp_path: Path) -> None:
    bad = tmp_path / "budgets.yaml"
    bad.write_text("budgets:\n  - usd: x\n")
    out = _check(settings, {"budgets": str(bad)})
    assert "tracked_openai.E002" in out
    assert f"{bad}:2: budgets[0].usd" in out


def test_budgets_as_a_file_or_objects_pass(settings: Any, tmp_path: Path) -> None:
    from tracked_openai import Budget

    good = tmp_path / "budgets.yaml"
    good.write_text("budgets:\n  - feature: f\n    usd: 5\n")
    for value in (str(good), [Budget(feature="f", usd=5)]):
        settings.TRACKED_OPENAI = {"budgets": value, "ledger_url": f"sqlite:///{tmp_path}/l.db"}
        call_command("check", fail_level="WARNING")  # raises on any warning or error


def test_every_configure_option_is_accepted(settings: Any, tmp_path: Path) -> None:
    settings.TRACKED_OPENAI = {
        "enabled": True,
        "inject_stream_usage": True,
        "capture_content": False,
        "default_feature": "default",
        "features": {"pid_verification": "P&ID verification"},
        "pricing": str(Path(tracked_openai.__file__).parent.parent / "pricing"),
        "spool_dir": str(tmp_path),
        "overflow": "drop",
        "experiment_prefix": "dev-",
        "queue_size": 100,
        "batch_size": 10,
        "flush_interval": 0.5,
        "exit_timeout": 2,
        "retry_attempts": 3,
        "retry_initial": 0.1,
        "retry_max": 1.0,
        "mlflow_timeout": 5.0,
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "start": False,
        "views": {"app:*": "pid_verification", "x": {"feature": "crs_analysis", "operation": "y"}},
        "request_id_header": "X-Correlation-ID",
        "user": "hashed",
        "api_permission": "superuser",
        "journal": True,
        "mlflow_mode": "runs+traces",
        "budgets": [tracked_openai.Budget(feature="pid_verification", usd=5)],
        "ledger_url": f"sqlite:///{tmp_path}/ledger.db",
        "on_budget_alert": print,
        "budget_webhooks": ["https://hooks.example/budgets"],
    }
    assert set(settings.TRACKED_OPENAI) == conf.CONFIGURE_KEYS | set(conf.DJANGO_KEYS)
    assert conf.problems() == []
    call_command("check", fail_level="WARNING")


def test_ready_applies_valid_values_and_skips_bad_ones(
    settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.apps import apps

    saved = tracking_settings.__dict__.copy()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    settings.TRACKED_OPENAI = {
        "start": False,
        "default_feature": "from_settings",
        "experiment_prefix": "dj-",
        "flush_interval": "soon",  # bad: the current value stays
        "tracking_uri": uri,
    }
    before = tracking_settings.flush_interval
    try:
        app = apps.get_app_config("tracked_openai")
        assert isinstance(app, TrackedOpenAIConfig)
        app.ready()
        assert tracking_settings.default_feature == "from_settings"
        assert tracking_settings.experiment_prefix == "dj-"
        assert tracking_settings.flush_interval == before
        assert os.environ["MLFLOW_TRACKING_URI"] == uri
    finally:
        tracking_settings.__dict__.update(saved)


def test_ready_starts_the_exporter_off_the_request_path(settings: Any, records: Any) -> None:
    from django.apps import apps

    settings.TRACKED_OPENAI = {}
    assert runtime._exporter is None or not runtime._exporter.stats().get("submitted")
    apps.get_app_config("tracked_openai").ready()
    # The exporter exists (and its thread started) before any request made a record.
    assert runtime._exporter is not None
    assert runtime.flush(timeout=10)

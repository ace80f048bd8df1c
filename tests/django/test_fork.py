"""A server that loads the app, then forks (gunicorn --preload, uWSGI, Celery prefork) never
forks while the exporter started by ``ready()`` is still importing MLflow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="the default sink needs MLflow")

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["tracked_openai.contrib.django"],
        TRACKED_OPENAI={"tracking_uri": sys.argv[1]},
    )
    assert "mlflow" not in sys.modules
    django.setup()  # ready(): the exporter starts importing MLflow on its thread
    pid = os.fork()  # at once, as a preloading server does
    if pid == 0:
        mlflow = sys.modules.get("mlflow")
        spec = getattr(mlflow, "__spec__", None)
        complete = mlflow is not None and not getattr(spec, "_initializing", False)
        os._exit(0 if complete else 7)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    """
)


@pytest.mark.slow  # the start-up includes creating the SQLite store: seconds to tens of seconds
def test_fork_waits_for_the_start_up(tmp_path: Path) -> None:
    """Checked against a run without the hook: there the child finds MLflow half-imported."""
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, f"sqlite:///{tmp_path / 'mlflow.db'}"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    # The child found MLflow fully imported: the fork happened after the start-up, not during it.
    assert r.stdout.strip() == "child 0"

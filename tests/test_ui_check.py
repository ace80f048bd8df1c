"""The real-browser check (``scripts/ui_check.py``) as an opt-in test: the demo's store in
``mlflow server``, opened in chromium through playwright, checked against the store. Slow (the
demo, a server, a browser): marked ``slow`` and ``server``; skipped, with the reason, where
chromium or playwright is not installed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("TRACKED_OPENAI_CHROMIUM", "/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.server
def test_mlflow_ui_shows_operations_tokens_and_cost(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed (pip install playwright; no browser download needed)")
    script = ROOT / "scripts" / "ui_check.py"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path), "--chromium", CHROMIUM],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "0 failed" in done.stdout
    assert (tmp_path / "mlflow-traces-tab.png").stat().st_size > 10_000

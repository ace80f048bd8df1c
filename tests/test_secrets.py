"""No API key, auth header or (unless opted in) prompt or output ever reaches what we write.

A real script in a fresh process makes successful, streamed, failed and unreachable calls with a
known key and a known prompt, exporting to a real embedded MLflow store; a second run exports to a
tracking server that is not there, so its records are spooled; our logger writes to a file at
DEBUG. Afterwards every byte we wrote (the store's database and artifacts, the spool, the log, the
script's stderr) is searched for the key, the bearer header and the prompt. Issue 21 item 4.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

KEY = "sk-proj-SECRETgrepKEY0123456789abcdefXYZ"
ADMIN = "sk-admin-SECRETgrepADMIN9876543210"
PROMPT = "the-private-prompt-a7f3c9 about our unreleased diagram"
_OUTPUT_MARK = "reply"  # the fake server's answers start with this word

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    import httpx
    import tracked_openai
    from tracked_openai import OpenAI, track
    from tracked_openai._fake_server import FakeOpenAIServer

    log_path, key, prompt, closed_port = sys.argv[1:5]
    handler = logging.FileHandler(log_path)
    handler.setLevel(logging.DEBUG)
    logging.getLogger("tracked_openai").addHandler(handler)
    logging.getLogger("tracked_openai").setLevel(logging.DEBUG)

    def calls(client):
        with track("visual_generation", "secret_check", tags={"tenant": "acme"}):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], stream=True)
            for _ in stream:
                pass
            client.embeddings.create(model="text-embedding-3-small", input=prompt)
            try:
                client.chat.completions.create(
                    model="does-not-exist", messages=[{"role": "user", "content": prompt}])
            except Exception as exc:
                print("expected failure:", type(exc).__name__, file=sys.stderr)
        dead = OpenAI(api_key=key, base_url=f"http://127.0.0.1:{closed_port}/v1", max_retries=0)
        try:
            dead.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
        except Exception as exc:
            print("expected failure:", type(exc).__name__, file=sys.stderr)

    with FakeOpenAIServer() as server:
        client = OpenAI(api_key=key, base_url=server.base_url, max_retries=0,
                        default_headers={"OpenAI-Organization": "org-secret"})
        calls(client)
        tracked_openai.flush(timeout=60)
    tracked_openai.shutdown(timeout=30)
    """
)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log), KEY, PROMPT, str(_closed_port())],
        # MLflow's default artifact root (./mlruns) lands inside the searched folder.
        cwd=cwd or Path(env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.slow
def test_no_key_header_or_prompt_in_store_spool_logs_or_errors(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    spool = tmp_path / "spool"
    log = tmp_path / "tracked.log"
    env = {
        **os.environ,
        "OPENAI_API_KEY": KEY,
        "OPENAI_ADMIN_KEY": ADMIN,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
        "TRACKED_OPENAI_SPOOL_DIR": str(spool),
        "TRACKED_OPENAI_MLFLOW_TIMEOUT": "2",
        "TRACKED_OPENAI_RETRY_ATTEMPTS": "1",
    }
    env.pop("TRACKED_OPENAI_CAPTURE_CONTENT", None)
    runs = [
        _run(env, log),
        _run({**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}"}, log, cwd=store),
    ]
    stderr_all = "".join(r.stderr for r in runs)
    for done in runs:
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stderr.count("expected failure") == 2, done.stderr[-3000:]

    written = _files(store) + _files(spool) + [log]
    assert (store / "mlflow.db").exists()
    assert _files(spool), "the unreachable tracking server should have left a spool file"
    assert log.exists() and log.stat().st_size > 0, "our logger wrote nothing: the check is empty"

    # What must never be written, and the sanity checks that show the search can find things.
    secrets = {
        "api key": KEY.encode(),
        "key body": KEY[8:].encode(),
        "bearer header": f"Bearer {KEY}".encode(),
        "admin key": ADMIN.encode(),
        "prompt": PROMPT.encode(),
        "prompt fragment": b"the-private-prompt-a7f3c9",
    }
    findings = []
    for path in written:
        data = path.read_bytes()
        for what, needle in secrets.items():
            if needle in data:
                findings.append(f"{what} in {path.relative_to(tmp_path)}")
    stderr = stderr_all.encode()
    for what, needle in secrets.items():
        if needle in stderr:
            findings.append(f"{what} in the process's stderr")
    assert findings == []

    # The search is not vacuous: the records it searched are there, with names it can find.
    everything = b"".join(p.read_bytes() for p in written)
    assert b"visual_generation" in everything
    assert b"secret_check" in everything
    assert b"acme" in everything


@pytest.mark.slow
def test_prompt_is_written_only_when_content_capture_is_opted_in(tmp_path: Path) -> None:
    """The control for the test above: with capture on, the same search finds the prompt in the
    spooled records (the run mapping itself never logs content; traces carry it as span inputs)."""
    spool = tmp_path / "spool"
    env = {
        **os.environ,
        "OPENAI_API_KEY": KEY,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}",
        "TRACKED_OPENAI_SPOOL_DIR": str(spool),
        "TRACKED_OPENAI_CAPTURE_CONTENT": "true",
        "TRACKED_OPENAI_MLFLOW_TIMEOUT": "2",
        "TRACKED_OPENAI_RETRY_ATTEMPTS": "1",
    }
    done = _run(env, tmp_path / "t.log", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    everything = b"".join(p.read_bytes() for p in _files(spool))
    assert PROMPT.encode() in everything
    # Even with content captured, the key never is.
    assert KEY.encode() not in everything

"""Celery with a real worker process (prefork, 2 processes) on RabbitMQ, exporting to a real
MLflow SQLite store read back with MlflowClient: tasks queued inside ``track`` blocks land in the
queuing operation's feature with it as their parent, retries included, and a prefork pool
exports every record exactly once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery", reason="the Celery integration needs the [celery] extra")
mlflow_tracking = pytest.importorskip("mlflow.tracking", reason="reading records back needs MLflow")

from tracked_openai import track  # noqa: E402
from tracked_openai._fake_server import FakeOpenAIServer  # noqa: E402
from tracked_openai.testing import TrackedRecords  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BROKER_HOST, BROKER_PORT = "127.0.0.1", 5672

pytestmark = pytest.mark.slow
# Calls carry their operation's tags (celery_task_id among them): select the operations.
OPS = "tags.kind = 'operation'"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    uri: str
    log: Path
    queue: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown: children flush and exit
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def client(self) -> Any:
        return mlflow_tracking.MlflowClient(tracking_uri=self.uri)

    def runs(self, filter_string: str) -> list[Any]:
        client = self.client()
        ids = [e.experiment_id for e in client.search_experiments()]
        return list(client.search_runs(ids, filter_string=filter_string, max_results=1000))

    def wait_runs(self, filter_string: str, count: int, timeout: float = 90) -> list[Any]:
        # A run is visible before its metrics are written (create, then log-batch): wait for
        # ended runs, so a reader never sees one half-written.
        deadline = time.monotonic() + timeout
        while True:
            runs = [r for r in self.runs(filter_string) if r.info.status != "RUNNING"]
            if len(runs) >= count or time.monotonic() > deadline:
                return runs
            time.sleep(0.3)


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_scale=0.0) as s:
        yield s


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAIServer) -> Iterator[Worker]:
    if not _port_open(BROKER_HOST, BROKER_PORT):
        pytest.skip(f"no RabbitMQ broker on {BROKER_HOST}:{BROKER_PORT}")
    from .app import app

    root = tmp_path_factory.mktemp("celery")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # Migrated once here: two worker processes must not both create the schema.
    mlflow_tracking.MlflowClient(tracking_uri=uri).search_experiments()
    queue = f"tracked-openai-tests-{uuid.uuid4().hex[:12]}"  # other test runs share the broker
    app.conf.task_default_queue = queue
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TRACKED_OPENAI_", "MLFLOW_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        MLFLOW_TRACKING_URI=uri,
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_API_KEY="sk-test-celery",
        TRACKED_OPENAI_FLUSH_INTERVAL="0.2",
        TRACKED_OPENAI_SPOOL_DIR=str(root / "spool"),
        # Calls as nested runs, read back with search_runs: what is under test here is where a
        # task's records land, not the traces mapping (tests/mlflow/traces checks that one).
        TRACKED_OPENAI_MLFLOW_MODE="runs",
    )
    log = root / "worker.log"
    cmd = [
        sys.executable, "-m", "celery", "-A", "tests.celery_worker.app", "worker",
        "-P", "prefork", "-c", "2", "-O", "fair", "-Q", queue, "-n", f"{queue}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    w = Worker(proc, uri, log, queue)
    try:
        deadline = time.monotonic() + 90
        while b" ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield w
    finally:
        w.stop()


def _tags(run: Any) -> dict[str, str]:
    return dict(run.data.tags)


def test_a_task_runs_in_the_queuing_feature_as_its_child(worker: Worker, records: TrackedRecords) -> None:
    from .app import analyze

    with track("pid_verification", "verify_drawing", drawing="D-101") as op:
        assert op is not None
        result = analyze.delay("check the valves on D-101")
    assert result.get(timeout=90)["text"]
    (run,) = worker.wait_runs(f"tags.celery_task_id = '{result.id}' and {OPS}", 1)
    tags = _tags(run)
    assert tags["kind"] == "operation"
    assert tags["feature"] == "pid_verification"
    assert tags["operation"] == "tests.analyze"
    assert tags["parent_record_id"] == op.record_id
    assert tags["celery_task"] == "tests.analyze"
    assert (tags["celery_state"], tags["celery_attempt"], tags["celery_retries"]) == ("SUCCESS", "1", "0")
    assert tags["celery_parent_operation"] == "verify_drawing"
    assert tags["drawing"] == "D-101"  # the queuing scope's tags
    assert tags["status"] == "success"
    assert run.data.metrics["call_count"] == 1
    assert run.data.metrics["execution_time"] > 0
    (call,) = worker.wait_runs(f"tags.parent_record_id = '{tags['record_id']}' and tags.kind = 'call'", 1)
    assert _tags(call)["feature"] == "pid_verification"
    assert call.data.tags["mlflow.parentRunId"] == run.info.run_id
    # The queuing side recorded its own operation (in this process) with that id.
    assert [o.record_id for o in records.operations] == [op.record_id]


def test_each_attempt_of_a_retried_task_is_its_own_linked_operation(
    worker: Worker, records: TrackedRecords
) -> None:
    from .app import flaky

    with track("crs_analysis", "analyze_comments") as op:
        assert op is not None
        result = flaky.delay("comment 7", failures=2)
    assert result.get(timeout=90) == {"attempts": 3}
    runs = worker.wait_runs(f"tags.celery_task_id = '{result.id}' and {OPS}", 3)
    attempts = sorted((_tags(r) for r in runs), key=lambda t: int(t["celery_attempt"]))
    assert [t["celery_attempt"] for t in attempts] == ["1", "2", "3"]
    assert [t["celery_state"] for t in attempts] == ["RETRY", "RETRY", "SUCCESS"]
    assert [t["status"] for t in attempts] == ["error", "error", "success"]
    assert [t.get("error_type") for t in attempts] == ["RuntimeError", "RuntimeError", None]
    assert all(t["feature"] == "crs_analysis" for t in attempts)
    assert all(t["parent_record_id"] == op.record_id for t in attempts)
    assert "celery_previous_attempt" not in attempts[0]
    assert attempts[1]["celery_previous_attempt"] == attempts[0]["record_id"]
    assert attempts[2]["celery_previous_attempt"] == attempts[1]["record_id"]
    assert all(r.data.metrics["call_count"] == 1 for r in runs)


def test_prefork_pool_exports_every_record_exactly_once(worker: Worker, records: TrackedRecords) -> None:
    """Last in this module: it stops the worker (warm shutdown flushes each process) and counts."""
    from .app import analyze

    n = 20
    with track("pfd_conversion", "convert_batch") as op:
        assert op is not None
        results = [analyze.delay(f"page {i}", hold=0.2) for i in range(n)]
    outputs = [r.get(timeout=120) for r in results]
    assert len({o["pid"] for o in outputs}) == 2, "both worker processes ran tasks"
    ops = worker.wait_runs(f"tags.parent_record_id = '{op.record_id}' and {OPS}", n)
    assert len(ops) == n
    worker.stop()
    assert worker.proc.returncode == 0, worker.log.read_text()[-3000:]
    ops = worker.runs(f"tags.parent_record_id = '{op.record_id}' and {OPS}")
    op_ids = [_tags(r)["record_id"] for r in ops]
    assert len(op_ids) == n == len(set(op_ids))
    assert sorted(_tags(r)["celery_task_id"] for r in ops) == sorted(r.id for r in results)
    calls = [
        c for c in worker.runs("tags.kind = 'call' and tags.feature = 'pfd_conversion'")
        if _tags(c)["parent_record_id"] in set(op_ids)
    ]  # fmt: skip
    call_ids = [_tags(c)["record_id"] for c in calls]
    assert len(call_ids) == n == len(set(call_ids))
    assert sum(r.data.metrics["call_count"] for r in ops) == n

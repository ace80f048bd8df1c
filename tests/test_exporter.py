"""The exporter without MLflow: retry, spool, replay, overflow, lifecycle, fork and threads.

Sinks here are small real objects (failing on demand) so every path is deterministic and fast;
the MLflow-backed fault tests live in ``test_mlflow_faults.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tracked_openai import _errors, _runtime
from tracked_openai._exporter import Exporter
from tracked_openai._spool import Spool
from tracked_openai.records import CallRecord, OperationRecord, Record, Usage
from tracked_openai.sinks import InMemorySink

FAST = {"flush_interval": 0.02, "retry_initial": 0.01, "retry_max": 0.2, "retry_attempts": 3}


class FlakySink(InMemorySink):
    """In-memory, idempotent; fails while ``down`` is set (or for the next ``fail_next`` calls)."""

    spool_key = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.fail_next = 0
        self.attempts = 0
        self.delay = 0.0

    def export(self, records: Sequence[Record]) -> None:
        self.attempts += 1
        if self.delay:
            time.sleep(self.delay)
        if self.down:
            raise ConnectionError("store unreachable")
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionError("transient")
        super().export(records)


def call(i: int = 0, **kw: Any) -> CallRecord:
    return CallRecord(
        started_at=time.time(),
        duration_s=0.01,
        feature="f",
        endpoint="chat.completions",
        model="gpt-4o-mini",
        usage=Usage(input_tokens=10 + i, output_tokens=5),
        **kw,
    )


@pytest.fixture
def errors() -> Iterator[list[BaseException]]:
    seen: list[BaseException] = []
    _errors.set_internal_error_hook(seen.append)
    try:
        yield seen
    finally:
        _errors.set_internal_error_hook(None)


@pytest.fixture
def make(tmp_path: Path, errors: list[BaseException]) -> Iterator[Any]:
    made: list[Exporter] = []

    def factory(sinks: Sequence[Any], **kw: Any) -> Exporter:
        opts: dict[str, Any] = {**FAST, "spool_dir": tmp_path / "spool", "prepare": _runtime.prepare, **kw}
        exporter = Exporter(sinks, **opts)
        made.append(exporter)
        return exporter

    yield factory
    for exporter in made:
        exporter.shutdown(5)


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


class TestDelivery:
    def test_batches_reach_sink_and_counters_add_up(self, make: Any, errors: list[BaseException]) -> None:
        """Everything submitted is exported once; counters say so."""
        sink = FlakySink()
        exporter = make([sink], batch_size=7)
        for i in range(50):
            exporter.submit(call(i))
        assert exporter.flush(10)
        assert len(sink.records) == 50
        stats = exporter.stats()
        assert stats["submitted"] == 50 and stats["exported"] == 50
        assert stats["retried"] == 0 and stats["spooled"] == 0 and stats["dropped"] == 0
        assert not errors

    def test_records_are_prepared_before_export(self, make: Any) -> None:
        """The exporter runs the prepare hook (pricing) so sinks see final cost fields."""
        sink = FlakySink()
        exporter = make([sink])
        record = call()
        assert record.cost_status == "pending"
        exporter.submit(record)
        exporter.flush(10)
        assert sink.records[0].cost_status != "pending"

    def test_transient_failure_is_retried_not_spooled(self, make: Any, tmp_path: Path) -> None:
        sink = FlakySink()
        sink.fail_next = 2
        exporter = make([sink])
        for i in range(5):
            exporter.submit(call(i))
        assert exporter.flush(10)
        assert len(sink.records) == 5
        stats = exporter.stats()
        assert stats["retried"] == 10  # 2 extra attempts x 5 records
        assert stats["spooled"] == 0
        assert not Spool(tmp_path / "spool").files()

    def test_sink_raising_spools_then_replays_when_it_recovers(
        self, make: Any, tmp_path: Path, errors: list[BaseException]
    ) -> None:
        """A sink that keeps raising: the caller never sees it, records land in the spool and
        reach the sink once it works again. Expected sink failures are not internal errors."""
        sink = FlakySink()
        sink.down = True
        exporter = make([sink], batch_size=10)
        for i in range(25):
            exporter.submit(call(i))  # never raises
        exporter.flush(10)
        stats = exporter.stats()
        assert stats["spooled"] == 25 and stats["exported"] == 0
        assert Spool(tmp_path / "spool").files()
        sink.down = False
        assert wait_for(lambda: len(sink.records) == 25)
        assert exporter.flush(10)
        stats = exporter.stats()
        assert stats["replayed"] == 25 and stats["exported"] == 25
        assert not Spool(tmp_path / "spool").files()
        assert not errors

    def test_spool_holds_prepared_records(self, make: Any, tmp_path: Path) -> None:
        sink = FlakySink()
        sink.down = True
        exporter = make([sink])
        exporter.submit(call())
        exporter.flush(10)
        (path,) = Spool(tmp_path / "spool").files()
        header, line = path.read_text().splitlines()
        assert json.loads(header)["sinks"] == ["flaky"]
        assert json.loads(line)["cost_status"] != "pending"

    def test_spooled_records_for_another_sink_are_left_alone(self, make: Any, tmp_path: Path) -> None:
        """Records spooled for one store are never replayed into a different one."""
        spool = Spool(tmp_path / "spool")
        spool.append([call()], ["mlflow:http://elsewhere"])
        sink = FlakySink()
        exporter = make([sink])
        exporter.submit(call())
        assert exporter.flush(10)
        assert len(sink.records) == 1
        assert len(spool.files()) == 1


class TestOverflow:
    def test_queue_full_spools_instead_of_dropping(self, make: Any, tmp_path: Path) -> None:
        sink = FlakySink()
        sink.delay = 0.1  # the worker is busy: the queue fills up
        exporter = make([sink], queue_size=10, batch_size=10)
        for i in range(150):
            exporter.submit(call(i))
        assert exporter.flush(30)
        assert len(sink.records) == 150
        stats = exporter.stats()
        assert stats["dropped"] == 0 and stats["submitted"] == 150
        assert stats["spooled"] > 0 and stats["replayed"] == stats["spooled"]

    def test_drop_policy_drops_and_counts(self, make: Any) -> None:
        sink = FlakySink()
        sink.delay = 0.2
        exporter = make([sink], queue_size=10, batch_size=5, overflow="drop")
        for i in range(100):
            exporter.submit(call(i))
        exporter.flush(30)
        stats = exporter.stats()
        assert stats["dropped"] > 0
        assert len(sink.records) + stats["dropped"] == 100

    def test_submit_stays_fast_when_queue_is_full(self, make: Any) -> None:
        sink = FlakySink()
        sink.down = True
        exporter = make([sink], queue_size=100)
        t0 = time.perf_counter()
        for i in range(5000):
            exporter.submit(call(i))
        per_call = (time.perf_counter() - t0) / 5000
        assert per_call < 200e-6  # record construction included; submit itself is O(1)
        exporter.flush(30)


class TestSpoolUnwritable:
    @staticmethod
    def blocked_spool(tmp_path: Path) -> Path:
        # A file where the spool's parent folder should be: unwritable even for root.
        blocked = tmp_path / "not-a-dir"
        blocked.write_text("a file where the spool folder should be")
        return blocked / "spool"

    def test_warned_once_at_start_from_the_exporter_thread(
        self, make: Any, tmp_path: Path, errors: list[BaseException], caplog: pytest.LogCaptureFixture
    ) -> None:
        """An unwritable spool folder is found when the exporter starts, with the sink up (not
        during an outage): one warning naming the folder and TRACKED_OPENAI_SPOOL_DIR, logged
        by the exporter's thread, not the caller's; records still reach the sink."""
        spool = self.blocked_spool(tmp_path)
        sink = FlakySink()
        exporter = make([sink], spool_dir=spool)
        with caplog.at_level("WARNING", logger="tracked_openai"):
            exporter.submit(call())
            assert exporter.flush(10)
            exporter.submit(call())
            assert exporter.flush(10)
        warnings = [r for r in caplog.records if "not writable" in r.getMessage()]
        assert len(warnings) == 1
        message = warnings[0].getMessage()
        assert str(spool) in message and "TRACKED_OPENAI_SPOOL_DIR" in message
        assert "found while spooling" not in message
        assert warnings[0].threadName == "tracked-openai-exporter"
        assert len(sink.records) == 2 and exporter.stats()["spool_errors"] == 0
        assert not errors

    def test_records_kept_in_memory_and_error_counted(
        self, make: Any, tmp_path: Path, errors: list[BaseException], caplog: pytest.LogCaptureFixture
    ) -> None:
        """Sink down and spool folder unwritable: nothing is lost, the failed writes are counted
        (an environment problem, not an internal error: no traceback), the folder is named once,
        and the records are delivered when the sink comes back."""
        sink = FlakySink()
        sink.down = True
        exporter = make([sink], spool_dir=self.blocked_spool(tmp_path), batch_size=3)
        with caplog.at_level("WARNING", logger="tracked_openai"):
            for i in range(12):
                exporter.submit(call(i))
            assert exporter.flush(5) is False  # held in memory: not durable
        stats = exporter.stats()
        assert stats["held"] == 12 and stats["spool_errors"] >= 1
        assert not errors and stats["internal_errors"] == 0
        assert len([r for r in caplog.records if "not writable" in r.getMessage()]) == 1
        assert all(r.exc_info is None for r in caplog.records)
        sink.down = False
        assert wait_for(lambda: len(sink.records) == 12)
        assert exporter.stats()["held"] == 0


class TestLifecycle:
    def test_flush_timeout_returns_false(self, make: Any) -> None:
        sink = FlakySink()
        sink.delay = 1.0
        exporter = make([sink])
        exporter.submit(call())
        exporter._wake.set()
        time.sleep(0.1)
        assert exporter.flush(0.1) is False
        assert exporter.flush(10) is True

    def test_shutdown_is_idempotent_and_later_submits_are_not_lost(self, make: Any) -> None:
        sink = FlakySink()
        exporter = make([sink])
        exporter.submit(call())
        assert exporter.shutdown(5)
        assert exporter.shutdown(5)
        exporter.submit(call())  # after shutdown: delivered inline, not dropped
        assert len(sink.records) == 2

    def test_shutdown_deadline_spools_the_rest(self, make: Any, tmp_path: Path) -> None:
        sink = FlakySink()
        sink.delay = 0.5
        exporter = make([sink], batch_size=2)
        for i in range(10):
            exporter.submit(call(i))
        exporter._wake.set()
        time.sleep(0.1)
        assert exporter.shutdown(0.2) is False
        spooled = sum(len(Spool(tmp_path / "spool")._read(p)) for p in Spool(tmp_path / "spool").files())
        # Every record is in the sink or the spool (the in-flight batch may be in both).
        ids = {r.record_id for r in sink.records}
        for path in Spool(tmp_path / "spool").files():
            ids |= {r.record_id for r in Spool(tmp_path / "spool")._read(path)}
        assert len(ids) == 10 and spooled >= 1

    def test_threads_submit_concurrently(self, make: Any) -> None:
        sink = FlakySink()
        exporter = make([sink], batch_size=64)

        def work() -> None:
            for i in range(500):
                exporter.submit(call(i))

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert exporter.flush(30)
        assert len(sink.records) == 4000
        assert exporter.stats()["submitted"] == 4000

    async def test_asyncio_tasks_submit_without_blocking(self, make: Any) -> None:
        sink = FlakySink()
        sink.delay = 0.05
        exporter = make([sink])

        async def task(i: int) -> None:
            exporter.submit(call(i))
            await asyncio.sleep(0)

        t0 = time.perf_counter()
        await asyncio.gather(*(task(i) for i in range(300)))
        assert time.perf_counter() - t0 < 1.0  # the slow sink never blocks the loop
        assert await asyncio.to_thread(exporter.flush, 30)
        assert len(sink.records) == 300

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_fork_child_gets_fresh_worker(self, make: Any, tmp_path: Path) -> None:
        """The child exports its own records with a new thread; the parent's queue stays the
        parent's (exported once, by the parent)."""
        out = tmp_path / "child.json"
        sink = FlakySink()
        exporter = make([sink])
        exporter.submit(call(1))
        exporter.flush(10)
        sink.delay = 0.3
        exporter.submit(call(2))  # still queued or in flight while we fork
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                before = len(sink.records)
                exporter.submit(call(3))
                ok = exporter.flush(10)
                out.write_text(json.dumps({"before": before, "after": len(sink.records), "ok": ok}))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        child = json.loads(out.read_text())
        assert child["ok"] and child["after"] == child["before"] + 1
        assert exporter.flush(10)
        assert len(sink.records) == 2


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from tracked_openai import _runtime
    from tracked_openai.records import CallRecord
    from tracked_openai.sinks.mlflow import MlflowSink
    uri, spool, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # A long flush interval and a zero exit deadline: every record is still queued at exit.
    _runtime.configure(sinks=[MlflowSink(uri)], spool_dir=spool, flush_interval=3600.0,
                       exit_timeout=0.000001, batch_size=100000)
    for i in range(n):
        _runtime.submit(CallRecord(started_at=time.time(), duration_s=0.01, feature="exit_test",
                                   endpoint="chat.completions", model="gpt-4o-mini"))
    print(_runtime.stats()["queued"])
    """
)

REPLAY_SCRIPT = textwrap.dedent(
    """
    import sys
    from tracked_openai import _runtime
    from tracked_openai.sinks.mlflow import MlflowSink
    from tracked_openai.records import CallRecord
    uri, spool = sys.argv[1], sys.argv[2]
    _runtime.configure(sinks=[MlflowSink(uri)], spool_dir=spool, flush_interval=0.05)
    _runtime.submit(CallRecord(started_at=1.0, duration_s=0.0, feature="exit_test", endpoint="x"))
    print(_runtime.flush(60), _runtime.stats()["replayed"])
    """
)


def test_exit_with_records_queued_next_process_replays(tmp_path: Path) -> None:
    """A process exits with records queued: the exit hook spools them; the next process that
    exports to the same store replays them (exactly once)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spool = tmp_path / "spool"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, uri, str(spool), "40"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[-1] == "40"  # all queued when the interpreter exited
    files = Spool(spool).files()
    assert sum(len(Spool(spool)._read(p)) for p in files) == 40
    second = subprocess.run(
        [sys.executable, "-c", REPLAY_SCRIPT, uri, str(spool)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.split()[-2:] == ["True", "40"]
    assert not Spool(spool).files()
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("exit_test")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == 41
    assert len({r.data.tags["record_id"] for r in runs}) == 41


def test_operation_records_survive_spool_round_trip(tmp_path: Path) -> None:
    """What the spool writes, it reads back with the fields sinks map."""
    op = OperationRecord(
        started_at=123.5, duration_s=2.0, feature="pid_verification", operation="analyze",
        metrics={"confidence_score": 0.9}, traceback="Traceback...", call_count=2,
    )
    spool = Spool(tmp_path)
    spool.append([op, call()], ["k"])
    claimed = spool.claim(["k"])
    assert claimed is not None
    back = claimed.records[0]
    assert isinstance(back, OperationRecord)
    assert back.record_id == op.record_id and back.metrics == {"confidence_score": 0.9}
    assert back.started_at == 123.5 and back.call_count == 2
    assert spool.claim(["k"]) is None  # claimed files are not handed out twice
    spool.release(claimed)
    assert spool.claim(["k"]) is not None

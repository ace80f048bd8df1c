"""The exporter without MLflow: retry, spool, replay, overflow, lifecycle, fork and threads.

Sinks here are small real objects (failing on demand) so every path is deterministic and fast;
the MLflow-backed fault tests live in ``tests/mlflow/test_faults.py``.
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

from tracked_openai import _errors
from tracked_openai.export import runtime as _runtime
from tracked_openai.export.queue import Exporter
from tracked_openai.export.spool import Spool
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
        # Not a speed test (benchmarks/overhead.py measures that): a submit that waited for room
        # in the full queue would wait for the sink to come back, i.e. forever here, so a bound
        # 100x the normal time only catches blocking, never a slow machine.
        t0 = time.perf_counter()
        for i in range(5000):
            exporter.submit(call(i))
        assert time.perf_counter() - t0 < 10.0
        assert exporter.stats()["submitted"] == 5000
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
    from tracked_openai.export import runtime as _runtime
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
    from tracked_openai.export import runtime as _runtime
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


class SlowFactory:
    """Sinks given as a function: records which thread built them; can be held back."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = list(sinks)
        self.threads: list[str] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self) -> list[Any]:
        self.threads.append(threading.current_thread().name)
        self.release.wait(30)
        return self.sinks


class WarmSink(FlakySink):
    def __init__(self) -> None:
        super().__init__()
        self.warmed_on: list[str] = []

    def warm_up(self) -> None:
        self.warmed_on.append(threading.current_thread().name)


class TestStartup:
    """Nothing heavy on the caller's thread: sinks given as a function (the default MLflow sink
    imports MLflow) are built by the worker; ``start()`` does it in the background at once."""

    def test_sinks_are_built_on_the_worker_when_the_first_batch_is_due(
        self, make: Any, errors: list[BaseException]
    ) -> None:
        sink = WarmSink()
        factory = SlowFactory(sink)
        exporter = make(factory, flush_interval=30.0)
        exporter.submit(call())
        assert factory.threads == [] and exporter.sinks == []  # submit only queued it
        assert exporter.flush(10)
        assert factory.threads == ["tracked-openai-exporter"]
        assert sink.warmed_on == ["tracked-openai-exporter"]
        assert exporter.sinks == [sink] and len(sink.records) == 1
        exporter.submit(call())
        assert exporter.flush(10) and factory.threads == ["tracked-openai-exporter"]  # built once
        assert not errors

    def test_start_returns_at_once_and_wait_waits(self, make: Any, errors: list[BaseException]) -> None:
        sink = WarmSink()
        factory = SlowFactory(sink)
        factory.release.clear()  # building the sinks takes "forever" until released
        warmed: list[str] = []
        exporter = make(
            factory, flush_interval=30.0, warm_up=lambda: warmed.append(threading.current_thread().name)
        )
        assert exporter.start() is False  # returned while the worker is still building
        assert wait_for(lambda: factory.threads == ["tracked-openai-exporter"])
        assert exporter.start(wait=True, timeout=0.05) is False
        factory.release.set()
        assert exporter.start(wait=True, timeout=10) is True
        assert warmed == ["tracked-openai-exporter"] and sink.warmed_on == ["tracked-openai-exporter"]
        assert exporter.start() is True
        assert not errors

    def test_spool_files_name_the_sinks_built_later(self, make: Any, tmp_path: Path) -> None:
        """Records spooled before (overflow) or after the sinks were built carry their keys."""
        sink = FlakySink()
        sink.down = True
        exporter = make(SlowFactory(sink), queue_size=2, batch_size=2)
        for i in range(6):
            exporter.submit(call(i))
        exporter.flush(10)
        files = Spool(tmp_path / "spool").files()
        assert files and exporter.stats()["spooled"] == 6
        for path in files:
            assert json.loads(path.read_text().splitlines()[0])["sinks"] == ["flaky"]

    def test_a_failing_sink_factory_is_reported_not_raised(
        self, make: Any, errors: list[BaseException]
    ) -> None:
        def broken() -> list[Any]:
            raise ImportError("mlflow is broken")

        exporter = make(broken)
        exporter.submit(call())  # never raises
        assert exporter.flush(10)
        assert [type(e) for e in errors] == [ImportError]


class TestExit:
    def test_exit_flush_runs_once_and_spools_the_batch_in_flight_once(
        self, make: Any, tmp_path: Path, errors: list[BaseException]
    ) -> None:
        """The worker is backing off between retries of a batch when the exit deadline passes:
        the exit path spools that batch and the worker, aborted, does not spool it again; a
        second exit flush does nothing."""
        sink = FlakySink()
        sink.down = True
        exporter = make([sink], retry_attempts=10, retry_initial=5.0, retry_max=5.0, exit_timeout=0.2)
        records = [call(i) for i in range(5)]
        for record in records:
            exporter.submit(record)
        exporter._wake.set()
        assert wait_for(lambda: sink.attempts >= 1)  # first attempt failed: now in backoff
        exporter.exit_flush()
        exporter.exit_flush()
        assert wait_for(lambda: exporter._thread is None or not exporter._thread.is_alive())
        spool = Spool(tmp_path / "spool")
        files = spool.files()
        assert len(files) == 1
        assert sorted(r.record_id for r in spool._read(files[0])) == sorted(r.record_id for r in records)
        assert exporter.stats()["spooled"] == 5 and not errors

    def test_exit_before_the_sinks_exist_spools_under_their_predicted_keys(
        self, make: Any, tmp_path: Path, errors: list[BaseException]
    ) -> None:
        """The process ends while the worker is still building the sinks (importing MLflow):
        the exit path doesn't wait for that; it files the batch under the keys the factory
        predicts, and the worker, once it has sinks, does not store the batch again."""

        class Predicting(SlowFactory):
            def spool_keys(self) -> list[str]:
                return ["flaky"]

        sink = FlakySink()
        factory = Predicting(sink)
        factory.release.clear()
        exporter = make(factory, exit_timeout=0.4)
        records = [call(i) for i in range(4)]
        for record in records:
            exporter.submit(record)
        exporter._wake.set()
        assert wait_for(lambda: factory.threads == ["tracked-openai-exporter"])  # building
        exporter.exit_flush()
        spool = Spool(tmp_path / "spool")
        (path,) = spool.files()
        assert json.loads(path.read_text().splitlines()[0])["sinks"] == ["flaky"]
        assert sorted(r.record_id for r in spool._read(path)) == sorted(r.record_id for r in records)
        factory.release.set()
        assert wait_for(lambda: exporter._thread is None or not exporter._thread.is_alive())
        assert len(spool.files()) == 1 and exporter.stats()["spooled"] == 4 and not errors

    @pytest.mark.parametrize("ready_in_time", [True, False])
    def test_a_batch_still_being_prepared_at_exit_is_spooled_once_ready(
        self, make: Any, tmp_path: Path, errors: list[BaseException], caplog: pytest.LogCaptureFixture,
        ready_in_time: bool,
    ) -> None:
        """The flush deadline passes while the worker prepares (prices) a batch it took from the
        queue: the exit path waits for it within its grace and spools it; one that isn't ready
        by then is reported as lost, not silently dropped."""
        gate = threading.Event()

        def slow_prepare(item: Any) -> Record:
            gate.wait(30)
            return _runtime.prepare(item)

        exporter = make([FlakySink()], prepare=slow_prepare, exit_timeout=2.0)
        for i in range(3):
            exporter.submit(call(i))
        exporter._wake.set()
        assert wait_for(lambda: exporter._preparing is not None)
        if ready_in_time:
            threading.Timer(1.6, gate.set).start()  # after the flush gave up, within the grace
        try:
            with caplog.at_level("WARNING", logger="tracked_openai"):
                exporter.exit_flush()
        finally:
            gate.set()
        spool = Spool(tmp_path / "spool")
        assert sum(len(spool._read(p)) for p in spool.files()) == (3 if ready_in_time else 0)
        lost = [r.getMessage() for r in caplog.records if "neither exported nor spooled" in r.getMessage()]
        expected = "tracked_openai: exit with 3 records neither exported nor spooled"
        assert lost == ([] if ready_in_time else [expected])
        assert not errors

    def test_a_record_after_the_exit_flush_goes_to_the_spool(self, make: Any, tmp_path: Path) -> None:
        sink = FlakySink()
        exporter = make([sink])
        exporter.exit_flush()
        late = call()
        exporter.submit(late)  # e.g. from an atexit hook that ran after ours
        assert sink.records == []
        (path,) = Spool(tmp_path / "spool").files()
        assert [r.record_id for r in Spool(tmp_path / "spool")._read(path)] == [late.record_id]


EXIT_ONCE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import tracked_openai
    from tracked_openai.export import runtime as _runtime
    from tracked_openai.records import CallRecord

    class Down:
        spool_key = "always-down"
        def export(self, records):
            raise ConnectionError("store unreachable")

    spool, exit_timeout = sys.argv[1], float(sys.argv[2])
    # Retries would go on for a minute: only the exit deadline ends them.
    tracked_openai.configure(sinks=[Down()], spool_dir=spool, exit_timeout=exit_timeout,
                             flush_interval=0.05, retry_attempts=10, retry_initial=5.0, retry_max=10.0)
    for i in range(20):
        _runtime.submit(CallRecord(started_at=time.time(), duration_s=0.01, feature="exit_once",
                                   endpoint="chat.completions", model="gpt-4o-mini"))
    time.sleep(0.5)  # the worker is retrying the batch
    print(time.time(), flush=True)
    """
)


def test_exit_flushes_once_within_the_deadline(tmp_path: Path) -> None:
    """A failing sink at exit: one exit path, bounded by the exit timeout; the batch is spooled
    in one file; one warning (the sink's failure), none about records left behind."""
    spool = tmp_path / "spool"
    exit_timeout = 3.0
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_ONCE_SCRIPT, str(spool), str(exit_timeout)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    ended = time.time()
    assert proc.returncode == 0, proc.stderr
    work_done = float(proc.stdout.split()[-1])
    # Two exit flushes (the old bug) would take 2 x 3 s; allow 2.5 s for interpreter teardown.
    assert ended - work_done < exit_timeout + 2.5, (ended - work_done, proc.stderr)
    files = Spool(spool).files()
    assert len(files) == 1
    ids = [r.record_id for r in Spool(spool)._read(files[0])]
    assert len(ids) == 20 == len(set(ids))
    warnings = [line for line in proc.stderr.splitlines() if "tracked_openai" in line]
    assert len(warnings) == 1 and "sink Down failed" in warnings[0], proc.stderr
    assert "neither exported nor spooled" not in proc.stderr


class TestSettings:
    """Bad values are logged with the ``tracked_openai:`` prefix and the default used."""

    @pytest.mark.parametrize(
        ("name", "raw", "field", "default", "problem"),
        [
            ("TRACKED_OPENAI_FLUSH_INTERVAL", "nan", "flush_interval", 1.0, "not a finite number"),
            ("TRACKED_OPENAI_FLUSH_INTERVAL", "0", "flush_interval", 1.0, "out of range"),
            ("TRACKED_OPENAI_FLUSH_INTERVAL", "abc", "flush_interval", 1.0, "not a number"),
            ("TRACKED_OPENAI_EXIT_TIMEOUT", "inf", "exit_timeout", 5.0, "not a finite number"),
            ("TRACKED_OPENAI_EXIT_TIMEOUT", "-1", "exit_timeout", 5.0, "out of range"),
            ("TRACKED_OPENAI_RETRY_MAX", "inf", "retry_max", 10.0, "not a finite number"),
            ("TRACKED_OPENAI_RETRY_MAX", "1e300", "retry_max", 10.0, "out of range"),
            ("TRACKED_OPENAI_RETRY_INITIAL", "-inf", "retry_initial", 0.5, "not a finite number"),
            ("TRACKED_OPENAI_RETRY_ATTEMPTS", "0", "retry_attempts", 5, "out of range"),
            ("TRACKED_OPENAI_RETRY_ATTEMPTS", "2.5", "retry_attempts", 5, "not a whole number"),
            ("TRACKED_OPENAI_QUEUE_SIZE", "-5", "queue_size", 10_000, "out of range"),
            ("TRACKED_OPENAI_BATCH_SIZE", "nan", "batch_size", 256, "not a whole number"),
            ("TRACKED_OPENAI_MLFLOW_TIMEOUT", "nan", "mlflow_timeout", 15.0, "not a finite number"),
        ],
    )
    def test_bad_environment_numbers(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        name: str, raw: str, field: str, default: float, problem: str,
    ) -> None:
        from tracked_openai._config import load_settings

        monkeypatch.setenv(name, raw)
        with caplog.at_level("WARNING", logger="tracked_openai"):
            settings = load_settings()
        assert getattr(settings, field) == default
        (message,) = [r.getMessage() for r in caplog.records]
        assert message.startswith(f"tracked_openai: {name}={raw!r}") and problem in message
        assert f"using the default {default}" in message

    def test_good_environment_numbers_are_kept(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from tracked_openai._config import load_settings

        monkeypatch.setenv("TRACKED_OPENAI_FLUSH_INTERVAL", "0.25")
        monkeypatch.setenv("TRACKED_OPENAI_EXIT_TIMEOUT", "0")  # 0: spool everything at exit
        monkeypatch.setenv("TRACKED_OPENAI_RETRY_ATTEMPTS", " 3 ")
        settings = load_settings()
        assert (settings.flush_interval, settings.exit_timeout, settings.retry_attempts) == (0.25, 0.0, 3)

    @pytest.mark.parametrize(
        ("env", "enabled", "outcome"),
        [
            ({"MLFLOW_ENABLED": "nope"}, True, "tracking stays on"),
            ({"MLFLOW_ENABLED": "nope", "TRACKED_OPENAI_ENABLED": "false"}, False, "tracking stays off"),
            ({"TRACKED_OPENAI_ENABLED": "maybe"}, True, "tracking stays on"),
        ],
    )
    def test_bad_switch_says_what_tracking_does(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        env: dict[str, str], enabled: bool, outcome: str,
    ) -> None:
        from tracked_openai._config import load_settings

        for key in ("MLFLOW_ENABLED", "TRACKED_OPENAI_ENABLED"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with caplog.at_level("WARNING", logger="tracked_openai"):
            settings = load_settings()
        assert settings.enabled is enabled
        (message,) = [r.getMessage() for r in caplog.records]
        assert message.startswith("tracked_openai: ") and "is not a boolean" in message
        assert outcome in message

    def test_bad_flag_says_the_default(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        from tracked_openai._config import load_settings

        monkeypatch.setenv("TRACKED_OPENAI_CAPTURE_CONTENT", "sometimes")
        with caplog.at_level("WARNING", logger="tracked_openai"):
            assert load_settings().capture_content is False
        (message,) = [r.getMessage() for r in caplog.records]
        assert message.startswith("tracked_openai: TRACKED_OPENAI_CAPTURE_CONTENT='sometimes'")
        assert "using the default (false)" in message

    @pytest.mark.parametrize(
        ("option", "value", "default", "problem"),
        [
            ("flush_interval", float("nan"), 1.0, "not a finite number"),
            ("retry_max", float("inf"), 10.0, "not a finite number"),
            ("exit_timeout", float("inf"), 5.0, "not a finite number"),
            ("queue_size", 0, 10_000, "out of range"),
            ("retry_attempts", True, 5, "not a number"),
            ("batch_size", "many", 256, "not a whole number"),
            ("overflow", "sometimes", "spool", "not 'spool' or 'drop'"),
        ],
    )
    def test_bad_configure_values(
        self, caplog: pytest.LogCaptureFixture, option: str, value: Any, default: Any, problem: str
    ) -> None:
        saved = getattr(_runtime.settings, option)
        try:
            with caplog.at_level("WARNING", logger="tracked_openai"):
                _runtime.configure(**{option: value})
            assert getattr(_runtime.settings, option) == default
            (message,) = [r.getMessage() for r in caplog.records]
            assert message.startswith(f"tracked_openai: configure({option}={value!r})") and problem in message
        finally:
            _runtime.configure(**{option: saved})

    def test_nan_flush_interval_no_longer_stalls_flush(
        self, monkeypatch: pytest.MonkeyPatch, make: Any
    ) -> None:
        """The issue's case: with FLUSH_INTERVAL=nan, flush(20) waited 20 s and returned False."""
        from tracked_openai._config import load_settings

        monkeypatch.setenv("TRACKED_OPENAI_FLUSH_INTERVAL", "nan")
        settings = load_settings()
        sink = FlakySink()
        exporter = make([sink], flush_interval=settings.flush_interval)
        exporter.submit(call())
        assert exporter.flush(20) is True and len(sink.records) == 1


FIRST_CALL_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, threading
    imported = []

    class Spy:  # notes which thread imports each module
        def find_spec(self, name, path=None, target=None):
            imported.append((name, threading.current_thread().name))
            return None

    sys.meta_path.insert(0, Spy())
    import httpx2, openai
    import tracked_openai
    from tracked_openai.export import runtime as _runtime

    MESSAGE = {"role": "assistant", "content": "hi"}
    BODY = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": MESSAGE, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
    CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18",
             "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
    SSE = ("data: " + json.dumps(CHUNK) + "\\n\\n" + "data: [DONE]\\n\\n").encode()

    def handler(request):
        if json.loads(request.content).get("stream"):  # no usage: estimated with tiktoken
            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=SSE)
        return httpx2.Response(200, json=BODY)

    def sync(cls):
        return cls(api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
                   max_retries=0)

    def asyn(cls):
        return cls(api_key="sk-test", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
                   max_retries=0)

    M = [{"role": "user", "content": "hi"}]

    async def calls(client):
        await client.chat.completions.create(model="gpt-4o-mini", messages=M)
        async for _ in await client.chat.completions.create(model="gpt-4o-mini", messages=M, stream=True):
            pass

    # The plain SDK's first calls do its own lazy imports.
    plain = sync(openai.OpenAI)
    plain.chat.completions.create(model="gpt-4o-mini", messages=M)
    for _ in plain.chat.completions.create(model="gpt-4o-mini", messages=M, stream=True):
        pass
    asyncio.run(calls(asyn(openai.AsyncOpenAI)))
    mark = len(imported)
    tracked = sync(tracked_openai.OpenAI)
    with tracked_openai.track("first_call", "sync"):
        tracked.chat.completions.create(model="gpt-4o-mini", messages=M)
        for _ in tracked.chat.completions.create(model="gpt-4o-mini", messages=M, stream=True):
            pass

    async def tracked_async():
        async with tracked_openai.track("first_call", "async"):
            await calls(asyn(tracked_openai.AsyncOpenAI))

    asyncio.run(tracked_async())
    result = {
        "caller_imports": [n for n, thread in imported[mark:] if thread == "MainThread"],
        "mlflow_after_calls": "mlflow" in sys.modules,
        "sinks_after_calls": len(_runtime._exporter.sinks),
    }
    result["flushed"] = tracked_openai.flush(120)
    result["mlflow_importers"] = sorted({t for n, t in imported if n == "mlflow"})
    result["sinks"] = [type(s).__name__ for s in _runtime._exporter.sinks]
    result["stats"] = tracked_openai.stats()
    print(json.dumps(result))
    """
)


def test_first_tracked_calls_leave_mlflow_to_the_exporter_thread(tmp_path: Path) -> None:
    """Sync, streamed and async first calls in a fresh process: the caller's thread imports
    nothing the plain SDK's first calls didn't (no MLflow, no pricing, no tiktoken, no
    platformdirs), the default MLflow sink is built by the exporter's thread, and every record
    reaches the store."""
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "TRACKED_OPENAI_SPOOL_DIR": str(tmp_path / "spool"),
        "TRACKED_OPENAI_FLUSH_INTERVAL": "30",  # the worker waits: nothing races the checks
    }
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_CALL_SCRIPT],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["caller_imports"] == []
    assert result["mlflow_after_calls"] is False and result["sinks_after_calls"] == 0
    assert result["flushed"] is True
    assert result["mlflow_importers"] == ["tracked-openai-exporter"]
    assert result["sinks"] == ["OperationRunsSink", "TracesSink"]  # the default mode, runs+traces
    stats = result["stats"]
    assert stats["submitted"] == stats["exported"] == 6 and stats["internal_errors"] == 0


START_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    imported = []

    class Spy:
        def find_spec(self, name, path=None, target=None):
            imported.append((name, threading.current_thread().name))
            return None

    sys.meta_path.insert(0, Spy())
    import tracked_openai
    from tracked_openai import pricing
    from tracked_openai.export import runtime as _runtime

    result = {"enabled": _runtime.settings.enabled, "start": tracked_openai.start()}
    result["start_wait"] = tracked_openai.start(wait=True, timeout=120)
    result["threads"] = sorted(t.name for t in threading.enumerate())
    result["mlflow_importers"] = sorted({t for n, t in imported if n == "mlflow"})
    result["prices_loaded"] = pricing.book._book is not None
    exporter = _runtime._exporter
    result["sinks"] = [type(s).__name__ for s in exporter.sinks] if exporter else None
    print(json.dumps(result))
    """
)


@pytest.mark.parametrize("enabled", [True, False])
def test_start_warms_up_in_the_background(tmp_path: Path, enabled: bool) -> None:
    """``tracked_openai.start()`` returns at once, leaving MLflow's import and the price table
    to the exporter's thread; ``start(wait=True)`` returns once they are ready. Disabled, it
    starts nothing."""
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "TRACKED_OPENAI_SPOOL_DIR": str(tmp_path / "spool"),
        "MLFLOW_ENABLED": "true" if enabled else "false",
    }
    proc = subprocess.run(
        [sys.executable, "-c", START_SCRIPT],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["enabled"] is enabled and result["start_wait"] is True
    if enabled:
        assert result["mlflow_importers"] == ["tracked-openai-exporter"]
        assert result["prices_loaded"] is True and result["sinks"] == ["OperationRunsSink", "TracesSink"]
        assert "tracked-openai-exporter" in result["threads"]
        assert (tmp_path / "mlflow.db").exists()  # the store was opened by the warm-up
    else:
        assert result["start"] is True and result["sinks"] is None
        assert result["mlflow_importers"] == [] and result["threads"] == ["MainThread"]

"""A batch spooled at exit while this process's writer is still writing it, replayed by another
process at the same time: each record is one run, never two (issue 21: the soak's duplicates).

The MLflow sink's idempotency is a search before the writes (``MlflowSink._existing``); it holds
for writers that take turns, not for two writers of the same batch at once: both search, neither
finds the run, both create it. Here the first process's writer is held after its search (as a
write slowed by a busy server is), its exit deadline spools the batch, and a second process
replays the spool before the first one's writer goes on. Real embedded MLflow store, real
processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tracked_openai.export import runtime as _runtime
from tracked_openai.export.queue import Exporter
from tracked_openai.export.spool import Spool
from tracked_openai.records import CallRecord, Record
from tracked_openai.sinks.mlflow import MlflowSink

WRITER_SCRIPT = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from pathlib import Path
    from tracked_openai.export import runtime as _runtime
    from tracked_openai.export.queue import Exporter
    from tracked_openai.records import CallRecord
    from tracked_openai.sinks.mlflow import MlflowSink

    uri, spool, gate = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    held = threading.Event()
    finished = threading.Event()

    class HeldSink(MlflowSink):
        def _write(self, exp_id, record, *, existing):
            # The batch's search is done (nothing found): hold the write until the test says.
            held.set()
            deadline = time.monotonic() + 60
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            try:
                return super()._write(exp_id, record, existing=existing)
            finally:
                finished.set()

    def wait_for_writer():
        # Registered before the exporter's own hook, so it runs after it (atexit is LIFO): the
        # process lives on past its exit flush while its writer thread works, as a gunicorn
        # worker does while its interpreter finalizes.
        deadline = time.monotonic() + 60
        while not finished.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)

    atexit.register(wait_for_writer)
    sink = HeldSink(uri)
    sink.warm_up()
    exporter = Exporter([sink], prepare=_runtime.prepare, spool_dir=spool, flush_interval=0.01,
                        exit_timeout=0.5)
    record = CallRecord(started_at=time.time(), duration_s=0.01, feature="exit_race",
                        endpoint="chat.completions", model="gpt-4o-mini", request_ids=["req_race"])
    exporter.submit(record)
    assert held.wait(60)
    print(record.record_id, flush=True)
    """
)


def _wait(predicate: object, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(predicate())  # type: ignore[operator]


def _replay(uri: str, spool: Path) -> dict[str, int]:
    """What a freshly started process does first: replay the spool into the store."""
    exporter = Exporter(
        [MlflowSink(uri)], prepare=_runtime.prepare, spool_dir=spool, flush_interval=0.02, exit_hook=False
    )
    try:
        assert exporter.start(wait=True, timeout=60)
        assert exporter.flush(30)  # a file it must not replay yet doesn't hold the flush up
        return exporter.stats()
    finally:
        exporter.shutdown(10)


def test_a_batch_spooled_while_its_writer_still_writes_it_is_one_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spool = tmp_path / "spool"
    gate = tmp_path / "go"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, uri, str(spool), str(gate)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert writer.stdout is not None
        record_id = writer.stdout.readline().strip()
        assert record_id, writer.stderr.read() if writer.stderr else ""
        # Its exit deadline passed with the write held: the batch is in the spool.
        assert _wait(lambda: bool(Spool(spool).files())), "the exit path spooled nothing"
        (path,) = Spool(spool).files()
        header = json.loads(path.read_text().splitlines()[0])
        assert header["pid"] == writer.pid
        # Another process starts while the first one still lives (a worker after SIGHUP).
        _replay(uri, spool)
        gate.touch()  # the first process's writer goes on
        assert writer.wait(60) == 0, writer.stderr.read() if writer.stderr else ""
        # And the next process after it is gone replays what is left.
        _replay(uri, spool)
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.communicate(timeout=10)  # reaps it and closes its pipes
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("exit_race")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert [r.data.tags.get("record_id") for r in runs] == [record_id]  # once: not 0, not 2
    assert runs[0].info.status == "FINISHED"
    assert not Spool(spool).files()


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _spool_as(spool: Spool, pid: int, *, in_flight: bool, age: float = 0.0) -> Path:
    """A spool file as process ``pid`` would have written it ``age`` seconds ago."""
    path = spool.append([CallRecord(started_at=1.0, duration_s=0.0, feature="f")], ["k"], in_flight=in_flight)
    lines = path.read_text().splitlines()
    head = json.loads(lines[0])
    head["pid"] = pid
    head["at"] = head["at"] - age
    path.write_text("\n".join([json.dumps(head), *lines[1:]]) + "\n")
    return path


class TestInFlightFiles:
    def test_left_alone_while_the_process_that_may_still_write_them_lives(self, tmp_path: Path) -> None:
        spool = Spool(tmp_path)
        other = _sleeper()
        try:
            _spool_as(spool, other.pid, in_flight=True)
            assert spool.pending(["k"]) == 0 and spool.claim(["k"]) is None
        finally:
            other.kill()
            other.wait(10)
        assert spool.pending(["k"]) == 1
        assert spool.claim(["k"]) is not None

    def test_other_files_of_a_live_process_are_replayed_as_before(self, tmp_path: Path) -> None:
        """A batch spooled after its export failed (or never tried) has no writer to wait for."""
        spool = Spool(tmp_path)
        other = _sleeper()
        try:
            _spool_as(spool, other.pid, in_flight=False)
            assert spool.pending(["k"]) == 1 and spool.claim(["k"]) is not None
        finally:
            other.kill()
            other.wait(10)

    def test_an_old_one_is_replayed_whatever_its_pid_says(self, tmp_path: Path) -> None:
        """A recycled pid must not hold a file back for ever."""
        spool = Spool(tmp_path)
        other = _sleeper()
        try:
            _spool_as(spool, other.pid, in_flight=True, age=3600.0)
            assert spool.claim(["k"]) is not None
        finally:
            other.kill()
            other.wait(10)

    def test_this_process_replays_its_own(self, tmp_path: Path) -> None:
        spool = Spool(tmp_path)
        _spool_as(spool, os.getpid(), in_flight=True)
        assert spool.claim(["k"]) is not None


class _SlowSink:
    """Holds its export until released; records whether it was told to stop writing."""

    spool_key = "slow"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.stopped = False

    def export(self, records: Sequence[Record]) -> None:
        self.entered.set()
        self.release.wait(30)

    def stop_writes(self) -> None:
        self.stopped = True


def test_at_exit_the_batch_being_written_is_spooled_in_flight_and_its_sink_stops(tmp_path: Path) -> None:
    sink = _SlowSink()
    exporter = Exporter(
        [sink],
        prepare=_runtime.prepare,
        spool_dir=tmp_path / "spool",
        flush_interval=0.01,
        exit_timeout=0.2,
        exit_hook=False,
    )
    try:
        exporter.submit(CallRecord(started_at=time.time(), duration_s=0.0, feature="f"))
        assert sink.entered.wait(10)
        exporter.exit_flush()
        (path,) = Spool(tmp_path / "spool").files()
        assert json.loads(path.read_text().splitlines()[0])["in_flight"] is True
        assert sink.stopped
    finally:
        sink.release.set()


def test_a_batch_spooled_because_its_export_failed_is_not_marked_in_flight(tmp_path: Path) -> None:
    """Only the exit path's hand-over is: every other spooled batch has no writer left."""

    class Down(_SlowSink):
        def export(self, records: Sequence[Record]) -> None:
            raise ConnectionError("store unreachable")

    exporter = Exporter(
        [Down()],
        prepare=_runtime.prepare,
        spool_dir=tmp_path / "spool",
        flush_interval=0.01,
        retry_attempts=1,
        exit_hook=False,
    )
    try:
        exporter.submit(CallRecord(started_at=time.time(), duration_s=0.0, feature="f"))
        assert exporter.flush(10) is True
        (path,) = Spool(tmp_path / "spool").files()
        assert "in_flight" not in json.loads(path.read_text().splitlines()[0])
    finally:
        exporter.shutdown(5)

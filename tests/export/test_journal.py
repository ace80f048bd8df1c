"""The journal (export/journal.py): what a SIGKILLed process loses with it on and off, replay
exactly once, a torn last line, and a caller that never waits for it."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tracked_openai import _config
from tracked_openai.export.journal import Journal, adopt_journals
from tracked_openai.export.queue import Exporter
from tracked_openai.export.spool import Spool
from tracked_openai.records import CallRecord, Record
from tracked_openai.testing import InMemorySink

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import sigkill


def call(i: int = 0) -> CallRecord:
    return CallRecord(started_at=1.0 + i, duration_s=0.01, feature="journal", endpoint="chat.completions",
                      model="gpt-4o-mini")


def journals(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.journal"))


class TestSigkill:
    """A real child process makes tracked calls over HTTP and SIGKILLs itself; the next process
    replays; records are counted in MLflow (embedded sqlite)."""

    def test_without_journal_the_queue_is_lost(self, tmp_path: Path) -> None:
        # A long flush interval: every record is still queued at the kill.
        row = sigkill.run_case(tmp_path, 20, flush_interval=3600, journal=False)
        assert row["completed"] == 20
        assert row["lost"] == 20

    def test_with_journal_nothing_taken_is_lost_and_replay_is_exactly_once(self, tmp_path: Path) -> None:
        # The kill comes 0.3 s after the last call returned: the journal thread (10 ms pause)
        # has taken every record by then. Two next processes start one after the other: the
        # second finds nothing to replay, and nothing is recorded twice.
        row = sigkill.run_case(tmp_path, 30, flush_interval=3600, wait=0.3, journal=True, restarts=2)
        assert row["completed"] == 30
        assert row["lost"] == 0
        assert row["duplicated"] == 0
        spool = tmp_path / "spool"
        assert not journals(spool)
        assert not Spool(spool).files()


class TestJournalFile:
    def test_done_records_are_not_replayed_and_a_finished_segment_is_removed(self, tmp_path: Path) -> None:
        journal = Journal(tmp_path, lambda: ["k"], rotate_bytes=10**9)
        records = [call(i) for i in range(4)]
        journal.write(records[:2])
        journal.write(records[2:])
        journal.done(records[:3])
        assert journal.outstanding() == 1
        (path,) = journals(tmp_path)
        journal.forget()  # as if the process died: the lock goes with the descriptor
        spool = Spool(tmp_path)
        assert adopt_journals(spool, batch_size=10) == 1
        assert not path.exists()
        (spooled,) = spool.files()
        assert [r.record_id for r in spool._read(spooled)] == [records[3].record_id]

    def test_all_done_then_close_leaves_no_file(self, tmp_path: Path) -> None:
        journal = Journal(tmp_path, lambda: ["k"], rotate_bytes=200)  # rotates every write
        records = [call(i) for i in range(6)]
        for record in records:
            journal.write([record])
        assert len(journals(tmp_path)) > 1
        journal.done(records)
        journal.close()
        assert not journals(tmp_path)

    def test_a_live_process_journal_is_not_adopted(self, tmp_path: Path) -> None:
        journal = Journal(tmp_path, lambda: ["k"])
        journal.write([call()])
        # Another Journal object stands for another process: flock conflicts between open
        # file descriptions, even within one process.
        assert adopt_journals(Spool(tmp_path), own=None) == 0
        assert len(journals(tmp_path)) == 1
        journal.close()
        assert adopt_journals(Spool(tmp_path)) == 1  # closed with a record outstanding

    def test_torn_last_line_is_skipped_with_one_warning(self, tmp_path: Path, caplog: Any) -> None:
        journal = Journal(tmp_path, lambda: ["k"])
        good = [call(i) for i in range(3)]
        journal.write(good)
        (path,) = journals(tmp_path)
        journal.forget()
        with path.open("ab") as fh:
            fh.write(b'{"kind":"call","record_id":"torn","feat')  # the kill cut the write short
        spool = Spool(tmp_path)
        with caplog.at_level(logging.WARNING, logger="tracked_openai"):
            assert adopt_journals(spool) == 3
        warnings = [r for r in caplog.records if "journal" in r.getMessage()]
        assert len(warnings) == 1
        assert "1 unreadable line" in warnings[0].getMessage()
        assert {r.record_id for f in spool.files() for r in spool._read(f)} == {r.record_id for r in good}


class SlowJournal(Journal):
    def write(self, records: Sequence[Record]) -> None:
        time.sleep(0.5)
        super().write(records)


class TestExporter:
    def test_delivered_once_and_journal_removed_at_shutdown(self, tmp_path: Path) -> None:
        sink = InMemorySink()
        exporter = Exporter([sink], spool_dir=tmp_path, journal=True, flush_interval=3600, exit_hook=False)
        for i in range(50):
            exporter.submit(call(i))
        assert exporter.flush(10)
        assert len(sink.records) == 50
        assert exporter.shutdown(10)
        assert not journals(tmp_path)

    def test_records_are_journaled_before_they_are_delivered(self, tmp_path: Path) -> None:
        # Flush interval an hour, batch bigger than what is sent: the worker delivers nothing,
        # yet the journal thread has every record on disk within a fraction of a second.
        sink = InMemorySink()
        exporter = Exporter([sink], spool_dir=tmp_path, journal=True, flush_interval=3600,
                            batch_size=1000, exit_hook=False)
        records = [call(i) for i in range(20)]
        for record in records:
            exporter.submit(record)
        deadline = time.monotonic() + 5
        text = ""
        while time.monotonic() < deadline:
            text = "".join(p.read_text() for p in journals(tmp_path))
            if all(r.record_id in text for r in records):
                break
            time.sleep(0.01)
        assert all(r.record_id in text for r in records)
        assert sink.records == []
        exporter.shutdown(10)

    def test_the_caller_never_waits_for_the_journal(self, tmp_path: Path, monkeypatch: Any) -> None:
        from tracked_openai.export import queue

        monkeypatch.setattr(queue, "Journal", SlowJournal)
        sink = InMemorySink()
        exporter = Exporter([sink], spool_dir=tmp_path, journal=True, flush_interval=3600, exit_hook=False)
        start = time.perf_counter()
        for i in range(200):
            exporter.submit(call(i))
            if i % 20 == 0:
                time.sleep(0.02)  # let the journal thread take a batch and stall on it
        elapsed = time.perf_counter() - start
        # 10 pauses of 20 ms; every write stalls 0.5 s, on the journal thread only.
        assert elapsed < 0.2 + 0.15
        assert exporter.flush(30)
        assert len(sink.records) == 200
        exporter.shutdown(10)

    def test_unwritable_journal_warns_once_and_records_still_flow(self, tmp_path: Path, caplog: Any) -> None:
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        sink = InMemorySink()
        exporter = Exporter([sink], spool_dir=blocker / "spool", journal=True, flush_interval=0.05,
                            exit_hook=False)
        with caplog.at_level(logging.WARNING, logger="tracked_openai"):
            for i in range(10):
                exporter.submit(call(i))
                time.sleep(0.02)
            assert exporter.flush(10)
        assert len(sink.records) == 10
        assert len([r for r in caplog.records if "the journal in" in r.getMessage()]) == 1
        assert exporter.stats()["journal_errors"] >= 1
        exporter.shutdown(5)


class TestSetting:
    @pytest.mark.parametrize(("raw", "expected"), [("on", True), ("1", True), ("off", False), ("", False)])
    def test_environment(self, monkeypatch: Any, raw: str, expected: bool) -> None:
        monkeypatch.setenv("TRACKED_OPENAI_JOURNAL", raw)
        assert _config.load_settings().journal is expected

    def test_bad_values_warn_and_mean_off(self, monkeypatch: Any, caplog: Any) -> None:
        monkeypatch.setenv("TRACKED_OPENAI_JOURNAL", "maybe")
        with caplog.at_level(logging.WARNING, logger="tracked_openai"):
            assert _config.load_settings().journal is False
            assert _config.check_option("journal", "sometimes") is False
        assert len(caplog.records) == 2
        assert _config.check_option("journal", True) is True
        assert _config.check_option("journal", "yes") is True


def test_forked_child_does_not_hold_the_parents_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path, lambda: ["k"])
    journal.write([call()])
    ready, signal = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        journal.forget()
        os.write(signal, b"x")
        time.sleep(1.0)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"x"
        journal.forget()  # the parent "dies"; its child lives on without the lock
        assert adopt_journals(Spool(tmp_path)) == 1
    finally:
        os.waitpid(pid, 0)

"""Journal: prepared records on disk from the moment the exporter takes them, so a SIGKILL loses
only what had not yet reached it (``TRACKED_OPENAI_JOURNAL``, off by default).

Without it, records wait in memory (the queue) for up to ``flush_interval`` plus a delivery:
``SIGKILL`` (an OOM kill, a worker timeout) runs no exit hook, so all of them are gone. With it,
the exporter's journal thread takes records off the queue as soon as they arrive, prepares them
and appends them to a per-process file in the spool folder, before they are delivered. The write
is a plain ``write(2)`` without fsync: the OS page cache outlives a killed process (not a power
cut). Once a batch reached its sinks (or the spool) a ``{"done": [ids]}`` line says so.

Files are ``<time_ns>-<pid>-<random>.journal`` segments in the spool folder, in the spool's own
format (a header naming the sinks, then one record per line), each held under an exclusive
``flock`` while its process lives: the kernel drops the lock when the process dies, however it
dies, so "lock free" means "owner gone" without trusting pids (reused in containers). A segment
is rotated at ``_ROTATE_BYTES`` and deleted once every record in it is done; a clean exit deletes
the last one.

A process that starts its exporter (and every running one, once a minute) *adopts* the journals
of dead processes: it takes the lock, writes the records not marked done to the spool (fsync'd,
as any spooled batch) and deletes the journal; the spool's replay then delivers them. Sinks are
idempotent by ``record_id`` (assigned before the journal write), so a record that was delivered
but not yet marked done makes no second entry.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import logger
from ..records import Record, record_from_dict
from .spool import Spool, _pid_alive

try:  # POSIX; elsewhere a journal is adopted when its pid is gone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["Journal", "adopt_journals"]

_VERSION = 1
_SUFFIX = ".journal"
# Rotate past this size; a segment whose records are all done is deleted.
_ROTATE_BYTES = 1 << 20


@dataclass(eq=False)
class _Segment:
    path: Path
    fd: int
    size: int = 0
    outstanding: int = 0
    broken: bool = False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _lock(fd: int) -> bool:
    """Take the exclusive lock without waiting; ``False`` if another process holds it."""
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class Journal:
    """This process's journal (one per exporter). ``write`` runs on the journal thread; ``done``
    on whichever background thread delivered or spooled the records. Thread-safe."""

    def __init__(
        self,
        directory: Path,
        keys: Callable[[], list[str]],
        rotate_bytes: int = _ROTATE_BYTES,
    ) -> None:
        self.directory = directory
        self._keys = keys
        self._rotate = rotate_bytes
        self._lock = threading.Lock()
        self._current: _Segment | None = None
        self._segments: dict[Path, _Segment] = {}
        self._where: dict[str, _Segment] = {}
        self._pid = os.getpid()

    def owns(self, path: Path) -> bool:
        return path in self._segments

    def outstanding(self) -> int:
        """Records journaled and not yet done."""
        return len(self._where)

    def write(self, records: Sequence[Record]) -> None:
        """Append ``records`` (prepared: ids assigned). Raises ``OSError`` if the folder can't."""
        if not records:
            return
        lines = [json.dumps(r.to_dict(), separators=(",", ":"), default=str) for r in records]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        with self._lock:
            segment = self._current
            if segment is None or segment.broken or segment.size >= self._rotate:
                segment = self._open_segment()
            try:
                _write_all(segment.fd, data)
            except OSError:
                # A torn line would run into the next one: later records go to a fresh segment.
                segment.broken = True
                raise
            segment.size += len(data)
            for record in records:
                rid = record.record_id
                if rid in self._where:
                    continue
                self._where[rid] = segment
                segment.outstanding += 1

    def _open_segment(self) -> _Segment:
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
        path = self.directory / f"{stem}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            _lock(fd)
            header = {"spool": _VERSION, "journal": True, "sinks": sorted(set(self._keys())),
                      "pid": os.getpid(), "at": time.time()}
            data = (json.dumps(header, separators=(",", ":")) + "\n").encode("utf-8")
            _write_all(fd, data)
        except BaseException:
            os.close(fd)
            try:
                path.unlink()
            except OSError:
                pass
            raise
        segment = _Segment(path=path, fd=fd, size=len(data))
        self._segments[path] = segment
        old = self._current
        self._current = segment
        if old is not None and old.outstanding == 0:
            self._remove(old)
        return segment

    def done(self, records: Iterable[Record]) -> None:
        """``records`` reached their sinks or the spool. Never raises."""
        with self._lock:
            finished: dict[_Segment, list[str]] = {}
            for record in records:
                segment = self._where.pop(record.record_id, None)
                if segment is not None:
                    finished.setdefault(segment, []).append(record.record_id)
            for segment, ids in finished.items():
                segment.outstanding -= len(ids)
                spent = segment is not self._current or segment.size >= self._rotate
                if segment.outstanding == 0 and spent:
                    self._remove(segment)
                elif not segment.broken:
                    line = (json.dumps({"done": ids}, separators=(",", ":")) + "\n").encode("utf-8")
                    try:
                        _write_all(segment.fd, line)
                        segment.size += len(line)
                    except OSError:
                        # Not fatal: a record not marked done is replayed, and sinks are
                        # idempotent by record_id.
                        segment.broken = True

    def _remove(self, segment: _Segment) -> None:
        # Unlink before closing: the lock is held until the name is gone, so an adopting
        # process never reads a journal whose records were all delivered.
        try:
            segment.path.unlink()
        except OSError:
            pass
        try:
            os.close(segment.fd)
        except OSError:
            pass
        self._segments.pop(segment.path, None)
        if self._current is segment:
            self._current = None

    def close(self) -> None:
        """The exporter stopped: delete segments whose records are all done; close the others
        (which releases their locks, so the next process, or a later exporter of this one,
        adopts them)."""
        with self._lock:
            for segment in list(self._segments.values()):
                if segment.outstanding == 0:
                    self._remove(segment)
                else:
                    try:
                        os.close(segment.fd)
                    except OSError:
                        pass
            self._segments.clear()
            self._where.clear()
            self._current = None

    def forget(self) -> None:
        """In a forked child: close the parent's descriptors (the parent keeps its locks and its
        files). No lock taken: the parent may have held it when it forked."""
        for segment in list(self._segments.values()):
            try:
                os.close(segment.fd)
            except OSError:
                pass
        self._segments = {}
        self._where = {}
        self._current = None


def _read_journal(fd: int, path: Path) -> tuple[list[str], list[Record]]:
    """The sinks and the records not marked done; unreadable lines skipped with one warning."""
    with os.fdopen(os.dup(fd), "rb") as fh:
        fh.seek(0)
        raw = fh.read()
    lines = raw.split(b"\n")
    header: Any = None
    records: dict[str, Record] = {}
    done: set[str] = set()
    bad = 0
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if number == 0:
                header = data
            elif isinstance(data, dict) and "done" in data:
                done.update(str(i) for i in data["done"])
            else:
                record = record_from_dict(data)
                records.setdefault(record.record_id, record)
        except (ValueError, TypeError, KeyError, AttributeError):
            bad += 1
    if bad:
        # The last line cut short (a kill mid-write is rare: one write(2) per batch) or a
        # damaged file: what could be read is replayed.
        logger.warning("tracked_openai: journal %s: %d unreadable line(s) skipped", path.name, bad)
    sinks = [str(s) for s in header.get("sinks", ())] if isinstance(header, dict) else []
    return sinks, [r for rid, r in records.items() if rid not in done]


def adopt_journals(spool: Spool, own: Journal | None = None, batch_size: int = 256) -> int:
    """Move the journals of processes that are gone into the spool (whose replay delivers them);
    the number of records moved. Never raises for one bad file: it is left, or set aside."""
    directory = spool.directory
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return 0
    moved = 0
    for name in names:
        if not name.endswith(_SUFFIX):
            continue
        path = directory / name
        if own is not None and own.owns(path):
            continue
        if fcntl is None:  # pragma: no cover - Windows: trust the pid
            pid = name.split("-")[1] if name.count("-") >= 2 else ""
            if not pid.isdigit() or (int(pid) != os.getpid() and _pid_alive(int(pid))):
                continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # adopted (deleted) by another process meanwhile
        try:
            if not _lock(fd) or os.fstat(fd).st_nlink == 0:
                continue  # its process lives, another process is adopting it, or it just did
            sinks, records = _read_journal(fd, path)
            if records and not sinks:
                logger.warning("tracked_openai: journal %s names no sinks; set aside as .bad", name)
                os.replace(path, path.with_name(name + ".bad"))
                continue
            for start in range(0, len(records), max(1, batch_size)):
                spool.append(records[start : start + batch_size], sinks)
            moved += len(records)
            path.unlink()
        except OSError as exc:
            logger.warning("tracked_openai: could not adopt journal %s (%s); left for later", name, exc)
        finally:
            os.close(fd)
    return moved

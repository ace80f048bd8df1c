"""Local spool: prepared records that could not reach their sinks, kept on disk until they can.

One file per spooled batch, written atomically: the JSON lines go to a ``.part`` file that is
fsync'd and then renamed to ``<time_ns>-<pid>-<random>.jsonl``, so a reader never sees a torn
batch and a crash mid-write loses nothing that was ever reported as spooled. The first line is a
header naming the sinks (by ``spool_key``) the records are still owed to, so a record spooled for
one tracking server is never replayed into another.

Replay *claims* a file by renaming it to ``….jsonl.claimed-<pid>`` (atomic: one process wins),
exports it, then deletes it; on failure the claim is released. Claims left by a process that died
are released by the next process that opens the spool.

A batch spooled while its process may still be writing it (the exit deadline took it from the
writer mid-export: ``in_flight`` in the header) is not claimed by another process until that
process is gone (or ``_IN_FLIGHT_MAX_AGE`` passed). The sinks' idempotency is a search before
writing, which holds for writers that take turns, not for two writing the same record at once:
both would find no run and both create one (issue 21's duplicates).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..records import Record, record_from_dict

__all__ = ["Spool", "SpoolFile", "default_spool_dir"]

_VERSION = 1
_CLAIM = ".claimed-"
# After this long a batch's old writer is taken to be done with it whatever its pid says (a
# recycled pid must not hold a file back for ever); a write is bounded by the sink's timeouts.
_IN_FLIGHT_MAX_AGE = 600.0


def default_spool_dir() -> Path:
    """``<user cache dir>/tracked-openai/spool`` (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("tracked-openai")) / "spool"


@dataclass
class SpoolFile:
    """A claimed spool file and its records."""

    path: Path
    original: Path
    sinks: list[str]
    records: list[Record]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _writer_busy(head: dict[str, Any]) -> bool:
    """The file's records may still be being written by the live process that spooled them."""
    if not head.get("in_flight"):
        return False
    pid, at = head.get("pid"), head.get("at")
    if not isinstance(pid, int) or pid == os.getpid():
        return False  # this process: its own writer was stopped or joined before it replays
    if isinstance(at, (int, float)) and time.time() - at > _IN_FLIGHT_MAX_AGE:
        return False
    return _pid_alive(pid)


class Spool:
    """A folder of spooled batches. Thread-safe by construction (one file per operation)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        # The default folder is found on first use: platformdirs is an import, and a Spool is
        # made when the first tracked call starts the exporter, on the caller's thread.
        self._directory = Path(directory) if directory is not None else None
        self._recovered = False

    @property
    def directory(self) -> Path:
        directory = self._directory
        if directory is None:
            directory = self._directory = default_spool_dir()
        return directory

    def check_writable(self) -> OSError | None:
        """Create the folder if needed and write (then remove) a probe file in it; the error if
        that fails. Run when the exporter starts, so an unwritable spool is known before an
        outage needs it."""
        probe = self.directory / f".probe-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as exc:
            return exc
        return None

    # -- writing -------------------------------------------------------------------------------
    def append(self, records: Sequence[Record], sinks: Iterable[str], *, in_flight: bool = False) -> Path:
        """Write ``records`` (already prepared) durably; raises ``OSError`` if the folder can't.
        ``in_flight``: this process may still be writing them to their sinks (see the module
        docstring); other processes leave the file alone while this one lives."""
        self.directory.mkdir(parents=True, exist_ok=True)
        header: dict[str, Any] = {
            "spool": _VERSION,
            "sinks": sorted(set(sinks)),
            "pid": os.getpid(),
            "at": time.time(),
        }
        if in_flight:
            header["in_flight"] = True
        lines = [json.dumps(header, separators=(",", ":"))]
        lines.extend(json.dumps(r.to_dict(), separators=(",", ":"), default=str) for r in records)
        data = ("\n".join(lines) + "\n").encode("utf-8")
        stem = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
        part = self.directory / f"{stem}.part"
        final = self.directory / f"{stem}.jsonl"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            try:
                part.unlink()
            except OSError:
                pass
            raise
        os.close(fd)
        os.replace(part, final)
        self._fsync_dir()
        return final

    def _fsync_dir(self) -> None:
        # Makes the rename itself durable; not supported everywhere, and not worth failing over.
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    # -- reading -------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Unclaimed spool files, oldest first."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return [self.directory / n for n in sorted(names) if n.endswith(".jsonl")]

    def pending(self, keys: Iterable[str] | None = None) -> int:
        """How many unclaimed files are owed to any of ``keys`` (all files when ``None``)."""
        wanted = None if keys is None else set(keys)
        count = 0
        for path in self.files():
            head = self._header(path)
            if (wanted is None or wanted & set(head.get("sinks", ()))) and not _writer_busy(head):
                count += 1
        return count

    def _header(self, path: Path) -> dict[str, Any]:
        try:
            with path.open("r", encoding="utf-8") as fh:
                head = json.loads(fh.readline() or "{}")
        except (OSError, ValueError):
            return {}
        return head if isinstance(head, dict) else {}

    def recover(self) -> None:
        """Release claims and remove partial files left by processes that died."""
        self._recovered = True
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            path = self.directory / name
            try:
                if _CLAIM in name:
                    original, _, pid = name.rpartition(_CLAIM)
                    if pid.isdigit() and not _pid_alive(int(pid)):
                        os.replace(path, self.directory / original)
                elif name.endswith(".part") or name.startswith(".probe-"):
                    pid = name.split("-")[1] if name.count("-") >= 2 else ""
                    if pid.isdigit() and not _pid_alive(int(pid)):
                        path.unlink()
            except OSError:
                continue

    def claim(self, keys: Iterable[str]) -> SpoolFile | None:
        """Claim the oldest file owed to one of ``keys``; ``None`` when there is none."""
        if not self._recovered:
            self.recover()
        wanted = set(keys)
        for path in self.files():
            head = self._header(path)
            sinks = [str(s) for s in head.get("sinks", ())]
            if not wanted & set(sinks) or _writer_busy(head):
                continue
            claimed = path.with_name(f"{path.name}{_CLAIM}{os.getpid()}")
            try:
                os.rename(path, claimed)
            except OSError:
                continue  # another process or thread claimed it first
            try:
                records = self._read(claimed)
            except (OSError, ValueError, TypeError, KeyError):
                # Unreadable: keep it aside for a human rather than loop on it or delete data.
                try:
                    os.replace(claimed, claimed.with_name(claimed.name + ".bad"))
                except OSError:
                    pass
                raise
            return SpoolFile(path=claimed, original=path, sinks=sinks, records=records)
        return None

    def _read(self, path: Path) -> list[Record]:
        out: list[Record] = []
        with path.open("r", encoding="utf-8") as fh:
            fh.readline()  # header
            for line in fh:
                line = line.strip()
                if line:
                    out.append(record_from_dict(json.loads(line)))
        return out

    def done(self, spooled: SpoolFile) -> None:
        """The claimed file's records reached their sinks: delete it."""
        try:
            spooled.path.unlink()
        except FileNotFoundError:
            pass

    def release(self, spooled: SpoolFile) -> None:
        """Give a claimed file back (its export failed) so it is replayed later."""
        try:
            os.replace(spooled.path, spooled.original)
        except OSError:
            pass

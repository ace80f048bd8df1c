"""Off the caller's path: downloaded files read line by line into call records.

The caller's thread only hands bytes over (``feed``/``end``); one daemon thread of ours, started
on the first file, decides whether they are a batch output or error file (by shape: the first
line has ``custom_id`` and ``response``/``error``, and no ``method``, which input lines have),
finds the batch the file belongs to, and submits one record per line to the exporter.

Finding the batch: a file's lines do not name their batch. A batch the process saw through a
tracked client (``batches.create``/``retrieve``/``list``) is known already (``remember``);
otherwise this thread lists the organisation's batches (``GET /batches``, newest first, at
most ``LIST_LIMIT``) with the caller's client, the one extra request we make on the caller's
behalf (free, and never on the caller's thread). A file whose batch is not found is not
recorded (logged once): ``tracked-openai batches collect`` records it later, with the same ids.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from .._errors import logger, report_internal_error
from ..export import runtime
from .lines import BatchInfo, LineSplitter, is_batch_line, line_record

__all__ = ["LIST_LIMIT", "FileJob", "end", "feed", "remember", "remember_page", "wait"]

LIST_LIMIT = 1_000
_KNOWN_MAX = 10_000
_RECENT_MAX = 200_000
_YIELD_EVERY = 8
_BUFFER_BYTES = 16 * 1024 * 1024
# Before the first item of a burst: the caller's thread, which just handed it over, finishes
# its call without waiting for the GIL this thread would take.
_SETTLE_S = 0.02

_lock = threading.Lock()
_cond = threading.Condition(_lock)
_queue: list[tuple[str, FileJob, list[bytes]]] = []
_busy = 0  # items queued or being handled
_thread: threading.Thread | None = None
# file id -> the Batch object (or JSON) naming it as its output or error file. Raw objects: the
# caller's thread only stores a reference; they are read here.
_known: OrderedDict[str, Any] = OrderedDict()
# Ids of line records this process submitted: a second download in the same process is not even
# submitted again (the sinks would keep one anyway).
_recent: OrderedDict[str, None] = OrderedDict()
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def remember(batch: Any) -> None:
    """Caller's thread: a ``Batch`` seen in a response, kept by its output/error file ids."""
    for name in ("output_file_id", "error_file_id"):
        file_id = getattr(batch, name, None) if not isinstance(batch, dict) else batch.get(name)
        if isinstance(file_id, str) and file_id:
            with _lock:
                _known[file_id] = batch
                _known.move_to_end(file_id)
                if len(_known) > _KNOWN_MAX:
                    _known.popitem(last=False)


def remember_page(page: Any) -> None:
    data = getattr(page, "data", None)
    if isinstance(data, list):
        for batch in data:
            remember(batch)


class FileJob:
    """One downloaded file: its id, the client it came through, its content-encoding decoder."""

    __slots__ = ("client", "decoder", "file_id", "held", "held_bytes", "info", "lines", "splitter", "state")

    def __init__(self, file_id: str, client: Any, decoder: Any = None) -> None:
        self.file_id = file_id
        self.client = client
        self.decoder = decoder
        self.splitter = LineSplitter()
        self.state = "new"  # new -> ok | skip
        self.info: BatchInfo | None = None
        self.lines = 0
        self.held: list[bytes] = []  # fed pieces not parsed yet
        self.held_bytes = 0


def feed(job: FileJob, chunks: list[bytes]) -> None:
    """Caller's thread: hand over bytes of ``job``'s body, a download still being read. They are
    only kept (this thread is not woken: waking it would have it take the GIL from the caller's
    reading loop) until ``end``, or until they reach _BUFFER_BYTES, a bound on what we hold."""
    size = sum(map(len, chunks))
    with _lock:
        job.held.extend(chunks)
        job.held_bytes += size
        full = job.held_bytes >= _BUFFER_BYTES
    if full:
        _put("feed", job, [])


def end(job: FileJob, chunks: Iterable[bytes] = ()) -> None:
    """Caller's thread: the body's last bytes; the file is complete (or cut short)."""
    _put("end", job, list(chunks))


def _put(kind: str, job: FileJob, chunks: list[bytes]) -> None:
    global _busy, _thread
    with _lock:
        _queue.append((kind, job, chunks))
        _busy += 1
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="tracked-openai-batches", daemon=True)
            _thread.start()
        _cond.notify_all()


def wait(timeout: float | None = None) -> bool:
    """Block until every file handed over so far is recorded (submitted to the exporter);
    ``False`` if ``timeout`` ran out first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _lock:
        while _busy:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            _cond.wait(left)
    return True


def _run() -> None:
    global _busy
    while True:
        with _lock:
            idle = not _queue
            while not _queue:
                _cond.wait()
        if idle:
            time.sleep(_SETTLE_S)
        with _lock:
            kind, job, chunks = _queue.pop(0)
        try:
            _handle(kind, job, chunks)
        except Exception as exc:
            job.state = "skip"
            report_internal_error(exc, "batch output")
        finally:
            with _lock:
                _busy -= 1
                _cond.notify_all()


def _handle(kind: str, job: FileJob, chunks: list[bytes]) -> None:
    if job.state == "skip":
        return
    with _lock:
        held, job.held, job.held_bytes = job.held, [], 0
    chunks = held + chunks
    decoder = job.decoder
    for chunk in chunks:
        data = decoder.decode(chunk) if decoder is not None else chunk
        if data:
            _lines(job, job.splitter.feed(data))
            if job.state == "skip":
                return
    if kind == "end":
        if decoder is not None:
            rest = decoder.flush()
            if rest:
                _lines(job, job.splitter.feed(rest))
        _lines(job, job.splitter.end())


def _lines(job: FileJob, lines: Iterable[Any]) -> None:
    for line in lines:
        if job.state == "skip":
            return
        if job.state == "new":
            if not is_batch_line(line):
                job.state = "skip"  # not a batch output/error file: nothing of ours
                return
            job.info = _resolve(job)
            if job.info is None:
                job.state = "skip"
                return
            job.state = "ok"
        if not is_batch_line(line):
            continue  # a corrupt or cut line (a download broken off): no record to make
        assert job.info is not None
        record = line_record(job.info, line)
        with _lock:
            if record.record_id in _recent:
                continue
            _recent[record.record_id] = None
            if len(_recent) > _RECENT_MAX:
                _recent.popitem(last=False)
        job.lines += 1
        runtime.submit(record)
        if not job.lines % _YIELD_EVERY:
            # Let the caller's thread have the GIL back: it may still be reading this very file
            # (a streamed download is handed over a megabyte at a time while it is read).
            time.sleep(0)


def _resolve(job: FileJob) -> BatchInfo | None:
    with _lock:
        known = _known.get(job.file_id)
    if known is not None:
        return BatchInfo.of(known)
    client: Any = None
    try:
        client = _sync_client(job.client)
        for seen, batch in enumerate(client.batches.list(limit=100), 1):
            remember(batch)
            if job.file_id in (batch.output_file_id, batch.error_file_id):
                return BatchInfo.of(batch)
            if seen >= LIST_LIMIT:
                break
    except Exception as exc:
        _warn_once(
            "list",
            "tracked_openai: cannot list batches to attribute a downloaded batch file (%s: %s); "
            "not recorded now: run `tracked-openai batches collect`",
            type(exc).__name__,
            exc,
        )
        return None
    finally:
        if client is not None and client is not job.client and not isinstance(job.client, _openai().OpenAI):
            client.close()  # made here for an async client: ours to close
    _warn_once(
        f"unknown:{job.file_id}",
        "tracked_openai: batch file %s belongs to no batch among the newest %d; not recorded "
        "now: run `tracked-openai batches collect`",
        job.file_id,
        LIST_LIMIT,
    )
    return None


def _openai() -> Any:
    import openai

    return openai


def _sync_client(client: Any) -> Any:
    """A synchronous client for this thread: the caller's own, or for an async one a plain SDK
    client with the same key and base URL (an async client cannot be used off its loop)."""
    openai = _openai()
    if isinstance(client, openai.OpenAI):
        return client.with_options(max_retries=2, timeout=30.0)
    return openai.OpenAI(
        api_key=client.api_key,
        organization=client.organization,
        project=client.project,
        base_url=client.base_url,
        max_retries=2,
        timeout=30.0,
    )


def _after_fork() -> None:
    # The child has no worker thread, and a lock held by another thread at the fork would stay
    # held: start clean (files the parent was reading are the parent's to record).
    global _lock, _cond, _busy, _thread
    _lock = threading.Lock()
    _cond = threading.Condition(_lock)
    _queue.clear()
    _busy = 0
    _thread = None


os.register_at_fork(after_in_child=_after_fork)


def _drain(at_exit: bool) -> None:
    # Before the exporter's last flush: files already downloaded become records (bounded).
    from .._config import settings

    wait(max(settings.exit_timeout / 2, 0.5))


runtime.add_release_hook("batch files", _drain, order=1)

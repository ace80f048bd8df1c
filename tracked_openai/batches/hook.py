"""The Batch API on the caller's path: what a tracked client does for batch requests.

``watch(client, options)`` runs for requests ``capture.request.begin`` does not track (only
then), and picks out four:

* ``POST /batches`` (``batches.create``): the feature/operation/tags in force are added to the
  batch's ``metadata`` (``meta.merged_metadata``: never over the caller's keys, within OpenAI's
  limits), and the batch gets a record of its own, an operation record (function
  ``batches.create``) whose id is derived from the batch id; its lines nest under it.
* ``GET /batches`` and ``GET /batches/{id}``: the batches seen are remembered by their output and
  error file ids (a reference kept, nothing read), so a later download knows its batch.
* ``GET /files/{id}/content`` (``files.content``, raw and streaming too): the body goes to the
  batch worker (``worker``), which decides off this thread whether it is a batch output or error
  file. A body already read is handed over as it is (the same ``bytes`` object: no copy); a
  streamed one is teed a megabyte at a time, and the caller's bytes are never changed.

Everything here is wrapped by the client so that a fault of ours never reaches the caller.
"""

from __future__ import annotations

import json
import time
import weakref
from typing import Any, cast

from openai._legacy_response import HttpxBinaryResponseContent, LegacyAPIResponse
from openai._response import BaseAPIResponse

from .._config import settings
from .._errors import internal_errors, report_internal_error
from ..capture.decode import IDENTITY, decoder_for, encoding_of, httpx, httpx2
from ..capture.tee import make_tee
from ..export import runtime
from ..records import OperationRecord, new_record_id
from ..scope import _current as _current_op
from . import worker
from .lines import BATCH_ID_TAG, batch_record_id
from .meta import merged_metadata

__all__ = ["Watch", "watch"]

_MAX_MESSAGE = 2_000
INPUT_FILE_TAG = "tracked_openai.batch_input_file_id"


class Watch:
    """What to do once the SDK answers (``done``) or raises (``failed``)."""

    def done(self, result: Any, is_async: bool) -> None:
        return None

    def failed(self, exc: BaseException) -> None:
        return None


def watch(client: Any, options: Any) -> Watch | None:
    url: str = options.url
    if url.startswith("/batches"):
        method = options.method.lower()
        if method == "post" and url == "/batches":
            return _Create(options)
        if method == "get" and url.count("/") <= 2:
            return _READ
        return None
    if url.startswith("/files/") and url.endswith("/content") and options.method.lower() == "get":
        return _Content(client, url[len("/files/") : -len("/content")])
    return None


class _Read(Watch):
    def done(self, result: Any, is_async: bool) -> None:
        if getattr(result, "object", None) == "batch":
            worker.remember(result)
        elif hasattr(result, "data") and not isinstance(result, (LegacyAPIResponse, BaseAPIResponse)):
            worker.remember_page(result)


_READ = _Read()


class _Create(Watch):
    __slots__ = ("record", "t0")

    def __init__(self, options: Any) -> None:
        op = _current_op.get()
        scope = op.record if op is not None else None
        feature = scope.feature if scope is not None else settings.default_feature
        operation = scope.operation if scope is not None else None
        tags = dict(scope.tags) if scope is not None else {}
        body = options.json_data
        extra = options.extra_json
        params: dict[str, Any] = {}
        if isinstance(body, dict):
            params = {k: body[k] for k in ("endpoint", "completion_window") if isinstance(body.get(k), str)}
            # Metadata given through extra_body replaces the body's: then it is the caller's alone.
            if not (isinstance(extra, dict) and "metadata" in extra):
                merged = merged_metadata(body.get("metadata"), feature, operation, tags)
                if merged is not None:
                    options.json_data = {**body, "metadata": merged}
        self.t0 = time.perf_counter()
        self.record = OperationRecord(
            record_id="",
            parent_id=scope.record_id if scope is not None else None,
            parent_feature=scope.feature if scope is not None else None,
            started_at=time.time(),
            feature=feature,
            operation=operation or "batch",
            function="batches.create",
            tags=tags,
            params=params,
        )
        if isinstance(body, dict) and isinstance(body.get("input_file_id"), str):
            self.record.tags[INPUT_FILE_TAG] = body["input_file_id"]

    def done(self, result: Any, is_async: bool) -> None:
        rec = self.record
        rec.duration_s = time.perf_counter() - self.t0
        batch: Any = result
        if isinstance(result, (LegacyAPIResponse, BaseAPIResponse)):
            response = result.http_response
            state = getattr(response, "__dict__", {})
            # A streamed response not read yet: its batch id is not known here.
            batch = json.loads(response.content) if "_content" in state else None
        batch_id = batch.get("id") if isinstance(batch, dict) else getattr(batch, "id", None)
        if isinstance(batch_id, str) and batch_id:
            rec.record_id = batch_record_id(batch_id)
            rec.tags[BATCH_ID_TAG] = batch_id
            worker.remember(batch)
        else:
            rec.record_id = new_record_id()
        runtime.submit(rec)

    def failed(self, exc: BaseException) -> None:
        rec = self.record
        rec.duration_s = time.perf_counter() - self.t0
        rec.record_id = new_record_id()
        rec.status = "error"
        rec.error_type = type(exc).__name__
        rec.error_message = str(exc)[:_MAX_MESSAGE]
        runtime.submit(rec)


class _Content(Watch):
    __slots__ = ("client", "file_id")

    def __init__(self, client: Any, file_id: str) -> None:
        self.client = client
        self.file_id = file_id

    def done(self, result: Any, is_async: bool) -> None:
        if isinstance(result, HttpxBinaryResponseContent):
            response = result.response
        elif isinstance(result, (LegacyAPIResponse, BaseAPIResponse)):
            response = result.http_response
        else:
            return
        if response.status_code != 200:
            return
        state = getattr(response, "__dict__", {})
        if "_content" in state:
            content = response.content  # decoded already, and the caller's own object: no copy
            # The one check made here (a slice of 2 kB): most downloads are not batch files.
            if content[:1] == b"{" and b'"custom_id"' in content[:2048]:
                worker.end(worker.FileJob(self.file_id, self.client), [content])
            return
        headers = response.headers
        module: Any = httpx2 if isinstance(response, httpx2.Response) or httpx is None else httpx
        decoder = None
        if encoding_of(headers) not in IDENTITY:
            decoder = decoder_for(headers, module)
            if decoder is False:
                return
        observer = FileObserver(worker.FileJob(self.file_id, self.client, decoder))
        base: type[Any] = module.AsyncByteStream if is_async else module.SyncByteStream
        response.stream = make_tee(base, response.stream, cast(Any, observer), is_async)
        observer.response_ref = weakref.ref(response, observer.collected)
        _open.add(observer)


_open: set[FileObserver] = set()


class FileObserver:
    """The tee's observer for a streamed download (what ``capture.tee`` calls on a body
    observer): bytes go to the worker a megabyte at a time and when the body ends or closes."""

    __slots__ = ("call", "chunks", "ended", "filtering", "first", "job", "pending", "response_ref")

    def __init__(self, job: worker.FileJob) -> None:
        self.job = job
        self.call: Any = job  # not None while observing (the tee passes bytes through once None)
        self.chunks: list[bytes] = []
        self.pending: list[bytes] = []
        self.filtering = False
        self.first = True  # the body's start, where a batch file shows itself
        self.ended = False
        self.response_ref: Any = None

    def parse_inline(self) -> None:
        # The tee calls this each megabyte (its _INLINE_PARSE_BYTES): the worker gets them now.
        with internal_errors("batch download"):
            chunks = self.chunks[:]
            self.chunks.clear()  # in place: the tee's loop holds this list
            if self.first and self.job.decoder is None and chunks and chunks[0].lstrip()[:1] != b"{":
                self.call = None  # not JSON lines: stop keeping anything of this body
                _open.discard(self)
                return
            self.first = False
            worker.feed(self.job, chunks)

    def remainder(self) -> bytes:
        return b""

    def transport_error(self, exc: BaseException) -> None:
        # The lines read so far are whole records; the cut last one is dropped by the worker.
        self.close("error")

    def collected(self, _ref: Any) -> None:
        self.close("abandoned")

    def close(self, how: str) -> None:
        try:
            if self.call is None:
                return
            self.call = None
            _open.discard(self)
            self.response_ref = None
            chunks = self.chunks[:]
            self.chunks.clear()
            worker.end(self.job, chunks)
        except Exception as exc:
            report_internal_error(exc, "batch download close")


def _close_open(at_exit: bool) -> None:
    if at_exit:
        for observer in list(_open):
            observer.close("abandoned")


runtime.add_release_hook("batch downloads", _close_open, order=0)

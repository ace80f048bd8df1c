"""A batch's output and error files, line by line, as call records.

Each line of a batch output or error file (OpenAI's "request output object":
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``) is one
call: its usage is ``response.body.usage``, its model the body's, and it is priced at the
**batch** tier of that model (``service_tier="batch"``, whatever tier the body names: batch
requests are billed at the Batch API's rates). A line whose ``status_code`` is not 200, or whose
``error`` is set, is an error record.

A line's record id is a hash of (batch id, ``custom_id``) and its start time comes from the line
itself (the body's ``created``/``created_at``, else the batch's ``completed_at``), so recording
the same file twice, from any process, gives the same records, which the sinks keep once
(see ``tracked_openai.sinks.mlflow``: idempotent by ``record_id``; traces by their derived ids).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .._config import settings
from ..capture.usage import ENDPOINTS, apply_body
from ..records import CallRecord
from .meta import attribution_of

__all__ = [
    "BATCH_ID_TAG",
    "CUSTOM_ID_TAG",
    "LINE_ID_TAG",
    "BatchInfo",
    "LineSplitter",
    "batch_record_id",
    "is_batch_line",
    "line_record",
    "parse_lines",
    "record_id_for",
]

BATCH_ID_TAG = "tracked_openai.batch_id"
CUSTOM_ID_TAG = "tracked_openai.batch_custom_id"
LINE_ID_TAG = "tracked_openai.batch_request_id"

_MAX_MESSAGE = 2_000

# What a body's ``object`` says the endpoint was, when the batch's own endpoint is not known.
_BY_OBJECT = {
    "chat.completion": "chat.completions",
    "response": "responses",
    "text_completion": "completions",
    "list": "embeddings",
}


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


@dataclass(slots=True)
class BatchInfo:
    """What a line's record needs of its batch (from a ``Batch`` object or its JSON)."""

    id: str
    endpoint: str | None = None
    model: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: int | None = None
    completed_at: int | None = None
    status: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int | None = None  # request_counts.total

    @classmethod
    def of(cls, batch: Any) -> BatchInfo:
        metadata = _get(batch, "metadata")
        counts = _get(batch, "request_counts")
        total = _get(counts, "total") if counts is not None else None
        return cls(
            id=str(_get(batch, "id")),
            endpoint=_text(_get(batch, "endpoint")),
            model=_text(_get(batch, "model")),
            metadata=dict(metadata) if isinstance(metadata, dict) else {},
            created_at=_int(_get(batch, "created_at")),
            completed_at=_int(_get(batch, "completed_at")),
            status=_text(_get(batch, "status")),
            output_file_id=_text(_get(batch, "output_file_id")),
            error_file_id=_text(_get(batch, "error_file_id")),
            total=total if isinstance(total, int) else None,
        )

    @property
    def endpoint_name(self) -> str | None:
        """The batch's endpoint as records name it (``/v1/chat/completions`` -> ``chat.completions``)."""
        if not self.endpoint:
            return None
        path = self.endpoint[3:] if self.endpoint.startswith("/v1/") else self.endpoint
        return ENDPOINTS.get(path)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def record_id_for(batch_id: str, custom_id: str) -> str:
    """The record id of a batch's line: 32 hex digits of BLAKE2b over (batch id, custom_id), the
    same in every process (the traces sink derives its trace and span ids from it)."""
    digest = hashlib.blake2b(
        f"{batch_id}\x00{custom_id}".encode(), digest_size=16, person=b"to-batch-line"
    ).hexdigest()
    # trace_id_for() takes a non-zero 32-hex id as the trace id itself.
    return digest if digest.strip("0") else "0" * 31 + "1"


def batch_record_id(batch_id: str) -> str:
    """The record id of the batch's own record (written when it was created)."""
    digest = hashlib.blake2b(batch_id.encode(), digest_size=16, person=b"to-batch").hexdigest()
    return digest if digest.strip("0") else "0" * 31 + "1"


def is_batch_line(line: Any) -> bool:
    """Whether a parsed line is shaped like a batch output/error line (not an input line, which
    has ``custom_id`` with ``method``/``url``/``body``)."""
    return (
        isinstance(line, dict)
        and isinstance(line.get("custom_id"), str)
        and ("response" in line or "error" in line)
        and "method" not in line
    )


class LineSplitter:
    """JSON objects of a JSONL body handed over in arbitrary pieces (a line may span several);
    a line that is not JSON gives ``None``."""

    __slots__ = ("rest",)

    def __init__(self) -> None:
        self.rest = b""

    def feed(self, chunk: bytes) -> Iterator[Any]:
        data = self.rest + chunk if self.rest else chunk
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            piece = data[start:end].strip()
            start = end + 1
            if piece:
                yield _loads(piece)
        self.rest = data[start:]

    def end(self) -> Iterator[Any]:
        rest, self.rest = self.rest.strip(), b""
        if rest:
            yield _loads(rest)


def parse_lines(chunks: Iterable[bytes]) -> Iterator[Any]:
    """JSON objects of a whole JSONL body (see :class:`LineSplitter`)."""
    splitter = LineSplitter()
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.end()


def _loads(piece: bytes) -> Any:
    try:
        return json.loads(piece)
    except ValueError:
        return None


def line_record(info: BatchInfo, line: dict[str, Any]) -> CallRecord:
    """The call record of one output/error line of batch ``info`` (cost left to the exporter,
    which prices it at the batch tier)."""
    custom_id = str(line.get("custom_id"))
    feature, operation, tags = attribution_of(info.metadata)
    response = line.get("response")
    body = _get(response, "body") if isinstance(response, dict) else None
    if not isinstance(body, dict):
        body = None
    endpoint = info.endpoint_name or _BY_OBJECT.get(str(_get(body, "object")), "batch")
    rec = CallRecord(
        record_id=record_id_for(info.id, custom_id),
        started_at=float(_started(info, body)),
        operation=operation,
        tags={**tags, BATCH_ID_TAG: info.id, CUSTOM_ID_TAG: custom_id},
        endpoint=endpoint,
        model=info.model,
        service_tier="batch",
    )
    rec.feature = feature or settings.default_feature
    if feature:
        # Created through a tracked client, which recorded the batch itself: the lines nest
        # under that record (and are not each a top-level run in reports).
        rec.parent_id = batch_record_id(info.id)
    line_id = line.get("id")
    if isinstance(line_id, str):
        rec.tags[LINE_ID_TAG] = line_id
    status = _get(response, "status_code") if isinstance(response, dict) else None
    if isinstance(status, int):
        rec.http_status = status
    request_id = _get(response, "request_id") if isinstance(response, dict) else None
    if isinstance(request_id, str) and request_id:
        rec.request_ids.append(request_id)
    rec.attempts = 1
    if body is not None:
        apply_body(rec, endpoint, body)
        # The body names the tier it would have had as a plain call ("default"): batch lines are
        # billed at the Batch API's rates.
        rec.service_tier = "batch"
        if rec.model is None:
            rec.model = rec.response_model
    error = line.get("error")
    body_error = _get(body, "error")
    if error or body_error or (isinstance(status, int) and status != 200):
        _fail(rec, error or body_error, status)
    return rec


def _started(info: BatchInfo, body: dict[str, Any] | None) -> int:
    for key in ("created", "created_at"):
        value = _int(_get(body, key))
        if value:
            return value
    return info.completed_at or info.created_at or 0


def _fail(rec: CallRecord, error: Any, status: Any) -> None:
    rec.status = "error"
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code")
        rec.error_type = str(kind) if kind else "BatchRequestError"
        message = error.get("message")
        rec.error_message = str(message)[:_MAX_MESSAGE] if message else None
    else:
        rec.error_type = "BatchRequestError"
        rec.error_message = f"status {status}" if status is not None else None

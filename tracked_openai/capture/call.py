"""One tracked call: its in-flight state on the caller's path, its record on the exporter's.

``Call`` is what the client's ``request()`` hook holds while the SDK works; ``finish`` runs once
(success, failure, stream closed or collected) and hands the call to the exporter, which makes
its record there (``to_record`` and ``complete_record``): request ids, params, the observed
body or the typed result's usage, and an estimate when the response had none.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

from .._errors import internal_errors
from ..export import runtime
from ..records import EXTRAPOLATED_TAG, CallRecord
from ..scope import call_closed
from .audio import measure_seconds, subtitle_seconds
from .sse import ESTIMABLE, MAX_MESSAGE, NO_SAMPLE, Observed
from .tools import apply_tools
from .usage import _get, apply_body, params_of

__all__ = ["AUDIO_IN", "Call", "active", "complete_record"]

AUDIO_IN = frozenset({"audio.transcriptions", "audio.translations"})


class Call:
    """In-flight state of one tracked call; ``finish`` runs exactly once.

    The call's :class:`CallRecord` is built from this state on the exporter thread
    (``to_record``), not when the call begins: a record has thirty-odd fields, and filling them
    on the caller's path is time the caller would wait for nothing. The few rare steps that
    write to the record early (a failure, a transport error, a long stream parsed as it
    arrives, a call finishing after its operation) build it where they run (``record``).
    """

    __slots__ = (
        "__weakref__",
        "_once",
        "_record",
        "attempt_headers",
        "body",
        "budget",
        "duration",
        "endpoint",
        "feature",
        "http_status",
        "injected",
        "model",
        "op",
        "provider",
        "request",
        "result",
        "started_at",
        "stream",
        "stream_end",
        "t0",
        "tags",
        "upload",
    )

    def __init__(
        self,
        endpoint: str,
        op: Any,
        request: dict[str, Any],
        feature: str,
        provider: str,
        model: str | None,
        stream: bool,
    ) -> None:
        self.started_at = time.time()
        self.t0 = time.perf_counter()
        self.endpoint = endpoint
        self.op = op
        self.request = request
        self.feature = feature
        self.provider = provider
        self.model = model
        self.stream = stream
        # The operation's tags when the call began (it may add more later).
        self.tags: dict[str, str] | None = dict(op.record.tags) if op is not None else None
        self._record: CallRecord | None = None
        self.result: Any = None
        # Each HTTP attempt's response headers (None if it raised): attempts are counted and
        # request ids read off them on the exporter thread (a header lookup walks every header).
        self.attempt_headers: list[Any] = []
        self.injected = False
        self.http_status: int | None = None
        self.duration: float | None = None
        self.stream_end: str | None = None
        # Popped by the one ``finish`` that runs: ``list.pop`` is atomic (the GIL, or the list's
        # own lock on free-threaded builds), and far cheaper on a cold path than a Lock.
        self._once: list[None] = [None]
        # The observed HTTP body, parsed on the exporter thread (see BodyParser).
        self.body: Observed | None = None
        # Audio endpoints: the uploaded file (bytes or a path), measured only if the response
        # reports no duration (see ``audio``).
        self.upload: bytes | str | None = None
        # The budget reservation (budgets.guard), settled when the record is priced.
        self.budget: Any = None

    @property
    def record(self) -> CallRecord:
        """The call's record (built on first use)."""
        rec = self._record
        if rec is None:
            op = self.op
            scope = op.record if op is not None else None
            rec = self._record = CallRecord(
                # Given its id when prepared (``export.prepare``): formatting one costs
                # microseconds, and nothing reads it before then.
                record_id="",
                parent_id=scope.record_id if scope is not None else None,
                started_at=self.started_at,
                feature=self.feature,
                operation=scope.operation if scope is not None else None,
                function=scope.function if scope is not None else None,
                tags=self.tags if self.tags is not None else {},
                endpoint=self.endpoint,
                provider=self.provider,
                model=self.model,
                stream=self.stream,
            )
        return rec

    def fail(self, exc: BaseException) -> None:
        rec = self.record
        rec.status = "error"
        rec.error_type = type(exc).__name__
        rec.error_message = str(exc)[:MAX_MESSAGE]
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            self.http_status = status
        completion = getattr(exc, "completion", None)
        if completion is not None:
            # LengthFinishReasonError & co come after a billed 200: keep its usage.
            apply_body(rec, self.endpoint, completion)
        self.finish()

    def finish(self, stream_end: str | None = None) -> None:
        """Hand the call to the exporter. Only timing happens here: its record, usage, params
        and estimates are made on the exporter thread (``to_record``)."""
        try:
            self._once.pop()
        except IndexError:
            return
        self.duration = time.perf_counter() - self.t0
        if stream_end is not None:
            self.stream_end = stream_end
        # Every enclosing operation rolls up this call, so an operation's totals include its
        # nested operations' calls and summing top-level runs never counts a call twice.
        op = self.op
        if op is None:
            runtime.submit(self)
            return
        ready = call_closed(op, self)
        runtime.submit(self)
        for op_record in ready:
            runtime.submit(op_record)

    def to_record(self) -> CallRecord:
        """Exporter thread: the finished call's record, complete but for its id and cost (request
        ids, params, the observed body or the usage of a typed result, an estimate if the
        response had none). Releases what the call held."""
        rec = self.record
        rec.duration_s = self.duration
        if self.stream_end is not None:
            rec.stream_end = self.stream_end
        if self.http_status is not None:
            rec.http_status = self.http_status
        request, result, body, upload = self.request, self.result, self.body, self.upload
        self.request, self.result, self.body, self.upload = {}, None, None, None
        with internal_errors("usage estimate"):
            complete_record(self.endpoint, request, result, body, upload, self.attempt_headers, rec)
        return rec


def complete_record(
    endpoint: str,
    request: dict[str, Any],
    result: Any,
    body: Observed | None,
    upload: bytes | str | None,
    attempt_headers: list[Any],
    rec: CallRecord,
) -> None:
    """Exporter-thread half of a call: request ids, params, the observed body or the usage of a
    typed result, an estimate if the response had none."""
    rec.attempts = len(attempt_headers)
    for headers in attempt_headers:
        if headers is None:
            continue
        request_id = headers.get("x-request-id")
        if request_id:
            rec.request_ids.append(request_id)
    rec.params = params_of(request)
    sample = body.finish(rec) if body is not None else NO_SAMPLE
    if isinstance(result, (str, bytes)):
        text, result = result, None  # a text/srt/vtt transcription: no usage in it
    else:
        text = None
    if result is not None:
        apply_body(rec, endpoint, result)
        if rec.content is not None:
            rec.content["response"] = _output_of(result)
    if rec.usage_source == "none" and not rec.usage.is_empty():
        rec.usage_source = "response"
    if rec.usage_source == "none" and endpoint in AUDIO_IN and rec.status == "success":
        _measure_audio(rec, upload, text)
    if rec.usage_source == "none" and rec.stream and endpoint in ESTIMABLE and rec.status == "success":
        # Imported when first needed: most responses report their usage.
        from .estimate import estimate_stream_usage

        model = rec.response_model or rec.model
        events, seen, cut = sample
        estimate = estimate_stream_usage(endpoint, request, model, events, seen, cut)
        rec.usage.input_tokens = estimate.input_tokens
        rec.usage.output_tokens = estimate.output_tokens
        rec.usage_source = "estimated"
        if estimate.extrapolated:
            rec.tags[EXTRAPOLATED_TAG] = "true"
    apply_tools(rec, endpoint, request)


def _measure_audio(rec: CallRecord, upload: bytes | str | None, text: str | bytes | None) -> None:
    seconds = measure_seconds(upload) if upload is not None else None
    if seconds is None and text is not None:
        seconds = subtitle_seconds(text)
    if seconds is not None:
        rec.usage.seconds = seconds
        rec.usage_source = "estimated"



def _output_of(result: Any) -> Any:
    text = _get(result, "output_text")
    if isinstance(text, str):
        return text
    choices = _get(result, "choices")
    if isinstance(choices, list):
        return [_get(_get(c, "message"), "content") or _get(c, "text") for c in choices]
    return None



# The call in progress in this context: the HTTP hook notes each attempt on it.
active: ContextVar[Call | None] = ContextVar("tracked_openai_call", default=None)


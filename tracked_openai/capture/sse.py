"""Reading an observed body: SSE events or a JSON document, into the call's record.

``BodyParser`` runs on the exporter thread when the call is prepared, or inline on the caller's
thread for the part of a long stream past the tee's inline-parse threshold. The byte-level
helpers below (event boundaries, the injected ``"usage": null`` members and the usage-only
event) are shared with the tee's filter, which hands the caller exactly the events it would
have received without the injected ``include_usage``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from .._errors import logger
from ..records import USAGE_KEYS, CallRecord, Usage
from .usage import apply_body, usage_from_body

__all__ = ["MAX_MESSAGE", "NO_SAMPLE", "BodyParser", "Observed", "Sample", "filter_events"]

MAX_MESSAGE = 2_000
_MAX_JSON_BODY = 64 * 1024 * 1024
# One SSE line (so one event) longer than this is skipped, not parsed, like a longer JSON body.
_MAX_EVENT_BYTES = _MAX_JSON_BODY
# Event data kept, from a stream's start, to estimate its usage from if it reports none; past
# it the estimate is extrapolated (see ``estimate``).
_MAX_KEPT_EVENTS_BYTES = 8 * 1024 * 1024
ESTIMABLE = frozenset({"chat.completions", "completions", "responses"})
_USAGE_NULL = re.compile(rb'"usage"\s*:\s*null\s*')
_SSE_EVENT = re.compile(rb".*?(?:\r\n\r\n|\n\n)", re.S)
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_STREAM_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})

# What a stream's parser hands to the usage estimate: the first events' data (the last one
# perhaps cut short), the bytes of data of all its events, and whether one was cut.
Sample = tuple[list[bytes], int, bool]
NO_SAMPLE: Sample = ([], 0, False)
# Stands in the data of an event for a line that was skipped.
_SKIPPED = b"\x00skipped"


class Observed(Protocol):
    """An observed body as the call holds it (a parser, or the tee's observer of a stream)."""

    def finish(self, record: CallRecord) -> Sample:
        """Exporter thread: parse the rest into ``record``; the events to estimate from."""
        ...


def ends_event(before: bytes, chunk: bytes) -> bool:
    """Whether an SSE event ends in ``chunk``, the read after ``before`` (a blank line may begin
    in the last bytes of ``before``). Only ``chunk`` is searched, not all the event held so far."""
    if b"\n" not in chunk:
        return False  # every event ends with a newline: one memchr pass for most reads
    if b"\n\n" in chunk or b"\r\n\r\n" in chunk:
        return True
    seam = before[-3:] + chunk[:3]
    return b"\n\n" in seam or b"\r\n\r\n" in seam


def events_end(data: bytes) -> int:
    """Length of the complete SSE events at the start of ``data`` (0 if none is complete)."""
    if data[-2:] == b"\n\n":
        return len(data)
    lf = data.rfind(b"\n\n")
    end = lf + 2 if lf >= 0 else 0
    if b"\r" in data:
        crlf = data.rfind(b"\r\n\r\n")
        if crlf >= 0:
            end = max(end, crlf + 4)
    return end


USAGE_NULL_END = b',"usage":null}\n\n'
USAGE_NULL_CUT = -len(USAGE_NULL_END)
USAGE_ONLY = b'"choices":[],"usage":{'


def filter_events(ready: bytes) -> bytes:
    """``ready`` (complete SSE events) as the caller would have received it: without the
    usage-only event and without the ``"usage": null`` members the injection added."""
    if b'"usage"' not in ready:
        return ready  # [DONE], or a server that ignored include_usage
    if _NO_CHOICES.search(ready) is not None:
        ready = _without_usage_only_events(ready)
        if not ready:
            return ready
    # OpenAI's compact JSON first (one C-level pass), any other spacing after.
    stripped = ready.replace(b',"usage":null', b"")
    if stripped is ready and b'"usage"' in ready:
        stripped = _strip_usage_null(ready)
    return stripped


def _without_usage_only_events(ready: bytes) -> bytes:
    """``ready`` (complete SSE events, some with empty choices) without the usage-only chunk the
    injection asked for."""
    if ready.find(b"\n\n") == len(ready) - 2:  # one event, as a server flushing each sends it
        return b"" if _has_usage_object(ready) else ready
    out: list[bytes] = []
    for match in _SSE_EVENT.finditer(ready):
        block = match.group(0)
        # Top-level "choices": [] with a usage object: only the usage-only chunk is both (Azure's
        # prompt-filter chunk has no choices either, but "usage": null).
        if _NO_CHOICES.search(block) is None or not _has_usage_object(block):
            out.append(block)
    return b"".join(out)


class BodyParser:
    """Reads an observed body (SSE events or a JSON document) into its record.

    Runs on the exporter thread when the call is prepared (``finish``), or inline on the caller's
    thread for the part of a long stream past ``_INLINE_PARSE_BYTES`` (``parse_kept``); never both
    at once, since the record is handed over only after the stream closed.
    """

    __slots__ = (
        "body",
        "body_size",
        "broken",
        "chunks",
        "data",
        "decoder",
        "done",
        "endpoint",
        "event",
        "events",
        "events_cut",
        "events_kept",
        "events_seen",
        "kind",
        "line",
        "line_size",
        "record",
        "saw_usage",
        "seen_first",
        "skipped",
        "skipped_head",
        "skipping",
    )

    def __init__(self, endpoint: str, kind: str, decoder: Any, chunks: list[bytes]) -> None:
        # The record parsed into, given with the bytes to parse (``parse_kept``, ``finish``).
        self.record: CallRecord
        self.endpoint = endpoint
        self.kind = kind
        self.decoder = decoder
        self.chunks = chunks  # raw bytes not yet parsed
        self.broken = False
        # The unfinished line: its pieces, joined once when its newline arrives (so a long line
        # costs time in proportion to its length), and their length.
        self.line: list[bytes] = []
        self.line_size = 0
        # A line longer than ``_MAX_EVENT_BYTES`` is skipped (its event is not parsed): the
        # bytes skipped so far, and whether the rest of that line is still to come.
        self.skipped = 0
        self.skipped_head = b""  # its first bytes, for an estimate
        self.skipping = False
        self.data: list[bytes] = []
        self.event = b""
        self.body: list[bytes] = []
        self.body_size = 0
        self.seen_first = False
        self.done = False  # [DONE] or a terminal event arrived
        self.saw_usage = False
        # The first events' data (at most ``_MAX_KEPT_EVENTS_BYTES``, the last one perhaps cut
        # short), kept to estimate usage from if the stream never reports it; the bytes of data
        # of every event, to extrapolate from the kept ones to all.
        self.events: list[bytes] | None = [] if endpoint in ESTIMABLE else None
        self.events_kept = 0
        self.events_seen = 0
        self.events_cut = False

    def parse_kept(self, record: CallRecord) -> None:
        self.record = record
        chunks, self.chunks = self.chunks, []
        if self.broken:
            return
        for chunk in chunks:
            self.feed(chunk)

    def finish(self, record: CallRecord) -> Sample:
        """Parse the rest of the body into ``record``; returns the events to estimate from."""
        self.parse_kept(record)
        if not self.broken:
            if self.decoder is not None:
                try:
                    rest = self.decoder.flush()
                except Exception as exc:
                    rest = b""
                    self._unreadable(exc)
                self.feed(rest, decoded=True)
            if self.kind == "json" and self.body:
                raw = b"".join(self.body)
                self.body = []
                if self.body_size <= _MAX_JSON_BODY:
                    body = _loads(raw)
                    if isinstance(body, dict):
                        apply_body(record, self.endpoint, body)
            elif self.kind == "sse" and (self.line or self.skipping):
                # A body that ended without a trailing blank line still dispatches its last event.
                self.feed(b"\n\n", decoded=True)
        if record.stream_end == "closed":
            early = self.kind == "sse" and not self.done and record.status == "success"
            record.stream_end = "closed_early" if early else "complete"
        events = self.events
        self.events = None
        if events is None or self.saw_usage:
            return NO_SAMPLE
        return events, self.events_seen, self.events_cut

    def _unreadable(self, exc: BaseException) -> None:
        # Bytes the response's decoder would reject too (a corrupt gzip body read raw, or our
        # inline parse reaching the bad bytes before the SDK does): a bad response, not a fault.
        logger.debug("tracked_openai: response body could not be decoded (%s); usage not read", exc)
        self.kind = "other"
        self.broken = True
        self.line, self.data, self.body = [], [], []

    def feed(self, chunk: bytes, decoded: bool = False) -> None:
        if self.kind == "other" or not chunk:
            return
        if self.decoder is not None and not decoded:
            try:
                chunk = self.decoder.decode(chunk)
            except Exception as exc:
                self._unreadable(exc)
                return
        if self.kind == "json":
            self.body_size += len(chunk)
            if self.body_size <= _MAX_JSON_BODY:
                self.body.append(chunk)
            elif self.body:
                self.body = []  # too long to parse: let go of what was held
            return
        if b"\n" not in chunk:
            self._hold(chunk)  # inside a line: only this read was searched
            return
        if self.skipping:
            # The end of a line too long to parse: drop it, and the event it belongs to.
            end = chunk.find(b"\n")
            self.skipped += end
            self.skipping = False
            self.data.append(_SKIPPED)
            chunk = chunk[end + 1 :]
        elif self.line:
            self.line.append(chunk)
            chunk = b"".join(self.line)
            self.line = []
            self.line_size = 0
        lines = chunk.split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                data = self.data
                if data:
                    self.data = []
                    if _SKIPPED in data:
                        self._skipped_event()
                    else:
                        self._event(data[0] if len(data) == 1 else b"\n".join(data))
                self.event = b""
            elif line[:5] == b"data:":
                self.data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line[:6] == b"event:":
                self.event = line[6:].strip()
        if rest:
            self._hold(rest)

    def _hold(self, piece: bytes) -> None:
        """Keep ``piece`` of the unfinished line, unless the line is longer than any event we
        parse: then it is skipped, and only its length is kept."""
        if self.skipping:
            self.skipped += len(piece)
            return
        self.line.append(piece)
        self.line_size += len(piece)
        if self.line_size > _MAX_EVENT_BYTES:
            if self.events is not None:
                room = _MAX_KEPT_EVENTS_BYTES - self.events_kept + 6  # and "data: "
                head, size = [], 0
                for part in self.line:
                    if size >= room:
                        break
                    head.append(part)
                    size += len(part)
                self.skipped_head = b"".join(head)[:room]
            self.skipped += self.line_size
            self.line = []
            self.line_size = 0
            self.skipping = True

    def _skipped_event(self) -> None:
        logger.debug("tracked_openai: skipped an SSE event longer than %d bytes", _MAX_EVENT_BYTES)
        head, self.skipped_head = self.skipped_head, b""
        events = self.events
        if events is not None and not self.saw_usage:
            # Estimated from its first bytes, kept as an event cut short (the last one kept).
            self.events_seen += self.skipped
            if head[:5] == b"data:" and self.events_kept < _MAX_KEPT_EVENTS_BYTES:
                events.append(head[6:] if head[5:6] == b" " else head[5:])
                self.events_kept = _MAX_KEPT_EVENTS_BYTES
                self.events_cut = True
        self.skipped = 0

    def _event(self, data: bytes) -> None:
        if data.startswith(b"[DONE]"):
            self.done = True
            return
        record = self.record
        parsed: Any = None
        if not self.seen_first:
            parsed = _loads(data)
            self._identity(parsed)
            # Azure streams open with a prompt-filter chunk whose model is "": identity comes next.
            self.seen_first = not (isinstance(parsed, dict) and parsed.get("model") == "")
        if _has_usage_object(data):
            self._usage_event(parsed if parsed is not None else _loads(data))
        elif b'"error"' in data:
            parsed = parsed if parsed is not None else _loads(data)
            if isinstance(parsed, dict) and (parsed.get("error") or parsed.get("type") == "error"):
                err: dict[str, Any] = parsed["error"] if isinstance(parsed.get("error"), dict) else parsed
                record.status = "error"
                record.error_type = str(err.get("type") or err.get("code") or "APIError")
                record.error_message = str(err.get("message") or "")[:MAX_MESSAGE]
        events = self.events
        if events is not None and not self.saw_usage:
            self.events_seen += len(data)
            room = _MAX_KEPT_EVENTS_BYTES - self.events_kept
            if room > 0:
                if len(data) > room:
                    # Checked before keeping: one long event is kept only in part.
                    data = data[:room]
                    self.events_cut = True
                events.append(data)
                self.events_kept += len(data)

    def _identity(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        record = self.record
        body: dict[str, Any] = event["response"] if isinstance(event.get("response"), dict) else event
        model = body.get("model")
        if isinstance(model, str) and model:
            record.response_model = model
        tier = body.get("service_tier")
        if isinstance(tier, str) and tier:
            record.service_tier = tier

    def _usage_event(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        record = self.record
        endpoint = self.endpoint
        kind = event.get("type")
        if kind in _STREAM_TERMINAL and isinstance(event.get("response"), dict):
            body = event["response"]
            apply_body(record, endpoint, body)
            self.done = True
            if kind == "response.failed":
                error = body.get("error") or {}
                record.status = "error"
                record.error_type = str(error.get("code") or "response.failed")
                record.error_message = str(error.get("message") or "")[:MAX_MESSAGE]
        else:
            usage = usage_from_body(endpoint, event)
            if usage is None:
                return
            if record.usage.characters is not None:
                usage.characters = record.usage.characters
            if endpoint.startswith("images.") and str(event.get("type", "")).endswith(".completed"):
                # A streamed generation sends one `*.completed` event (with its usage) per image.
                previous = record.usage if record.usage_source == "response" else Usage(images=0)
                usage = _add_usage(previous, usage)
                usage.images = (previous.images or 0) + 1
            record.usage = usage
            record.usage_source = "response"
            tier = event.get("service_tier")
            if isinstance(tier, str) and tier:
                record.service_tier = tier
        if record.usage_source == "response":
            self.saw_usage = True
            self.events = None


def _add_usage(a: Usage, b: Usage) -> Usage:
    total = Usage()
    for key in USAGE_KEYS:
        x, y = getattr(a, key), getattr(b, key)
        setattr(total, key, y if x is None else x if y is None else x + y)
    return total


def _strip_usage_null(block: bytes) -> bytes:
    """``block`` without its ``"usage": null`` members (each with its comma)."""
    i = block.find(b'"usage"')
    while i >= 0:
        m = _USAGE_NULL.match(block, i)
        if m is not None:
            j = m.end()
            k = i - 1
            while k >= 0 and block[k] in b" \t":
                k -= 1
            before, after = block[k : k + 1], block[j : j + 1]
            if before == b"," and after in (b"}", b","):
                block = block[:k] + block[j:]
                i = block.find(b'"usage"', k)
                continue
            if before == b"{" and after == b",":
                block = block[: k + 1] + block[j + 1 :].lstrip(b" \t")
                i = block.find(b'"usage"', k + 1)
                continue
        i = block.find(b'"usage"', i + 7)
    return block


def _has_usage_object(data: bytes) -> bool:
    """True when some ``"usage":`` key in the event holds an object (not ``null``)."""
    start = 0
    while True:
        i = data.find(b'"usage":', start)
        if i < 0:
            return False
        j = i + 8
        while j < len(data) and data[j] in b" \t\r\n":
            j += 1
        if data[j : j + 1] == b"{":
            return True
        start = j


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None

"""Every recorded stream, re-cut, re-framed, compressed, truncated and damaged (hypothesis).

Each example makes the fixture's call twice over the same generated body, once through the plain
SDK's client and once through ours, each with an ``httpx`` MockTransport serving the body in the
generated pieces, and reads it as a caller would (iterating the typed stream, iterating
``with_raw_response.parse()``, or ``with_streaming_response.iter_bytes()``; sync or async).

* A whole body, however it is cut into reads (one byte per read included), LF or CRLF framed,
  gzip-encoded or not: the caller gets what the plain SDK's caller gets, the one record's usage is
  exactly what the uncut body gives, and the stream ends ``complete``.
* A truncated, mutated or garbage body, ending cleanly or with a connection reset: the caller gets
  exactly the plain SDK's chunks and exception (type and message), and one record says what
  happened: ``error`` with the exception the caller got, or ``success`` (``error`` only when the
  body itself reports a failure); ``stream_end`` is set, and nothing is swallowed as an internal
  error (the ``records`` fixture fails the test on one, and each example checks it).
"""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ._tally import counted, fuzz_settings, outcome
from ._wire import (
    MODES,
    Delivery,
    Outcome,
    Server,
    asks_usage,
    injectable,
    load_cases,
    read,
    request_headers,
    without_usage,
)

# Hypothesis properties: make test runs them, make test-fast skips them (README, Development).
pytestmark = pytest.mark.slow

SSE = load_cases("response_sse")
CONTENT_TYPE = "text/event-stream; charset=utf-8"
RECUT = "streams: whole body re-cut (CRLF/LF, gzip, 1-byte reads)"
DAMAGED = "streams: truncated / mutated / garbage body"
INJECTED = "streams: damaged body, include_usage injected"
ASK_USAGE = {"stream_options": {"include_usage": True}}

# Pieces of SSE and of the JSON OpenAI sends, for garbage that gets past the first checks.
SSE_TOKENS = [
    b"data: ",
    b"data:",
    b"event: ",
    b"id: 7",
    b"retry: 10",
    b": keep-alive",
    b"\n",
    b"\r\n",
    b"\r",
    b"\n\n",
    b"\r\n\r\n",
    b"[DONE]",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b'"',
    b"null",
    b"0",
    b"-1",
    b'"usage"',
    b'"usage": null',
    b',"usage":null',
    b'"choices": []',
    b'"choices":[],"usage":{',
    b'{"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}',
    b'{"input_tokens": 3, "output_tokens": 4}',
    b'"type": "response.completed"',
    b'"type": "response.failed"',
    b'"response": {"usage": null}',
    b'{"error": {"message": "bad"}}',
    b'{"error": {"type": "server_error"}}',
    b'"model": ""',
    b'"model": "gpt-4o"',
    b"\xff",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xc3\xa9",
    b"\x00",
    "é".encode(),
    b" " * 3,
]


@st.composite
def deliveries(draw: st.DrawFn, length: int, gzip: bool = True) -> Delivery:
    """How the body reaches the client: where the reads are cut (anywhere, one byte per read, or
    reads of one small size), LF or CRLF framing, gzip or not."""
    style = draw(st.sampled_from(["cuts", "cuts", "cuts", "one-byte", "fixed"]))
    top = 2 * length + 64  # CRLF framing may double the body
    cuts: tuple[int, ...] | None
    if style == "one-byte":
        cuts = None
    elif style == "fixed":
        size = draw(st.integers(1, 97))
        cuts = tuple(range(size, top, size))
    else:
        cuts = tuple(draw(st.lists(st.integers(1, top), max_size=40)))
    return Delivery(cuts=cuts, crlf=draw(st.booleans()), gzip=gzip and draw(st.booleans()))


@st.composite
def damaged(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw`` truncated, mutated in a few places, or replaced by garbage."""
    how = draw(st.sampled_from(["truncate", "truncate", "mutate", "mutate", "bytes", "sse"]))
    if how == "truncate":
        return raw[: draw(st.integers(0, len(raw)))]
    if how == "bytes":
        return draw(st.binary(max_size=600))
    piece = st.one_of(st.sampled_from(SSE_TOKENS), st.binary(max_size=12))
    if how == "sse":
        return b"".join(draw(st.lists(piece, max_size=80)))
    data = raw
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert":
            data = data[:at] + draw(piece) + data[at:]
        else:
            span = draw(st.integers(1, 24))
            data = data[:at] + (draw(piece) if op == "replace" else b"") + data[at + span :]
    return data


NO_USAGE_TOKENS = [t for t in SSE_TOKENS if b"usage" not in t]


@st.composite
def damaged_around_usage(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw`` truncated anywhere, or with garbage (never the text of a usage member) between
    its events. The include_usage filter works on the usage members OpenAI writes; garbage that
    forges them in other places (``retry: 1,"usage":null``) is outside what it promises."""
    if draw(st.booleans()):
        return raw[: draw(st.integers(0, len(raw)))]
    bounds = [0] + [m.end() for m in re.finditer(rb"\n\n", raw)]
    piece = st.one_of(
        st.sampled_from(NO_USAGE_TOKENS), st.binary(max_size=12).filter(lambda b: b"usage" not in b)
    )
    inserts = draw(
        st.lists(st.tuples(st.sampled_from(bounds), st.lists(piece, max_size=8)), min_size=1, max_size=4)
    )
    data = raw
    for at, pieces in sorted(inserts, reverse=True):
        data = data[:at] + b"".join(pieces) + data[at:]
    return data


def _server_body(case: dict[str, Any], raw: bytes) -> Any:
    """The API's answer: chat/completions streams carry the usage chunk (and ``"usage": null`` on
    every other chunk) only when the request asked for ``include_usage``."""
    if not injectable(case):
        return lambda request: raw

    def body(request: Any) -> bytes:
        return raw if asks_usage(request) else without_usage(raw)

    return body


def _has_usage(body: bytes) -> bool:
    return re.search(rb'"usage":\s*\{', body) is not None


def _names(exc: BaseException | None) -> set[str]:
    """The exception's type and those of its causes (a Stream raises APIConnectionError from
    httpx's ReadError; the record names the ReadError)."""
    out = set()
    while exc is not None:
        out.add(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return out


def _after_the_body_ended(exc: BaseException, delivered: bytes) -> bool:
    """Whether the SDK raised on the body's last line, one with no newline after it, which it
    decodes only once the body has ended."""
    tail = re.split(rb"\r\n|\r|\n", delivered)[-1]
    return isinstance(exc, UnicodeDecodeError) and tail != b"" and exc.object == tail


def _check_one_honest_record(records: Any, before: int, got: Outcome, delivered: bytes) -> Any:
    calls = records.calls[before:]
    assert len(calls) == 1, [(c.endpoint, c.status) for c in calls]
    assert records.internal_errors == [], records.internal_errors
    call = calls[0]
    if got.error is not None and _after_the_body_ended(got.error, delivered):
        # Known limit: the SDK decodes a last line that has no newline only after the body
        # ended, and httpx closes the body as it ends, which finishes the record first. (An
        # earlier line alike, b"\x80\n\x80", fails first and is recorded.)
        late = call.status == "success" and call.stream_end in (None, "complete")
        assert late or (call.status == "error" and call.error_type == type(got.error).__name__), call
    elif got.error is not None:
        assert call.status == "error", (call.status, repr(got.error))
        assert call.error_type, call
        if call.stream:
            assert call.stream_end == "error", (call.stream_end, repr(got.error))
        if not isinstance(got.error, openai.APIError) or isinstance(got.error, openai.APIConnectionError):
            # The exception the caller got, or an error the body itself reported (parsed from
            # all the bytes received, even past the event the SDK stopped at).
            assert call.error_type in _names(got.error) or call.error_type.encode() in delivered, (
                call.error_type,
                repr(got.error),
            )
    else:
        # Nothing went wrong for the caller: an error only if the body itself says so.
        assert call.status == "success" or b"error" in delivered or b"failed" in delivered, (
            call.status,
            call.error_type,
            call.error_message,
        )
        if call.stream:
            assert call.stream_end == "complete", call.stream_end
    # JSON-safe whatever the body held.
    json.dumps(call.to_dict())
    return call


# -- whole bodies, re-cut -------------------------------------------------------------------------

_BASELINES: dict[tuple[str, str, bool], Any] = {}


def _baseline(name: str, mode: str, asks: bool, records: Any) -> Any:
    """The record of the uncut, LF-framed, uncompressed body read the same way (sync)."""
    key = (name, mode, asks)
    if key not in _BASELINES:
        case = SSE[name]
        raw = case["response_sse"].encode()
        before = len(records.calls)
        server = Server(_server_body(case, raw), CONTENT_TYPE, Delivery(), request_headers(case))
        out = read(True, False, case, server, mode, ASK_USAGE if asks else {})
        assert out.error is None, out.error
        (call,) = records.calls[before:]
        # What the uncut body must give, independently of how our parser reads it.
        assert call.status == ("error" if b'"response.failed"' in server.sent[0] else "success")
        if _has_usage(server.sent[0]):
            assert call.usage_source == "response", (name, mode, call.usage_source)
        _BASELINES[key] = call
    return _BASELINES[key]


@pytest.mark.parametrize("name", sorted(SSE))
@given(data=st.data())
@fuzz_settings(16)
def test_recut_stream_reads_as_the_plain_sdk_with_exact_usage(name: str, data: Any, records: Any) -> None:
    case = SSE[name]
    raw = case["response_sse"].encode()
    mode = data.draw(st.sampled_from(MODES), label="mode")
    is_async = data.draw(st.booleans(), label="async")
    asks = injectable(case) and data.draw(st.booleans(), label="caller asks include_usage")
    delivery = data.draw(deliveries(len(raw)), label="delivery")
    kw = ASK_USAGE if asks else {}
    base = _baseline(name, mode, asks, records)
    with counted(RECUT):
        before = len(records.calls)
        headers = request_headers(case)
        tracked = Server(_server_body(case, raw), CONTENT_TYPE, delivery, headers)
        plain = Server(_server_body(case, raw), CONTENT_TYPE, delivery, headers)
        # Injection happens on typed chat/completions streams whose caller did not ask itself.
        injected = injectable(case) and mode == "typed" and not asks
        # Gzip bodies can't be cut at event boundaries: the usage chunk is hidden as an object
        # and the "usage": null members stay (README, "How calls are captured"), so to_dict()
        # differs there; model_dump() (every field) does not.
        strict = not (injected and delivery.gzip)
        got = read(True, is_async, case, tracked, mode, kw, strict)
        want = read(False, is_async, case, plain, mode, kw, strict)
        assert tracked.asked == [injected or asks] and plain.asked == [asks]
        assert got.error is None and want.error is None, (got.error, want.error)
        assert got.key() == want.key()
        call = _check_one_honest_record(records, before, got, tracked.sent[0])
        outcome(RECUT, "one-byte reads" if delivery.cuts is None else "gzip" if delivery.gzip else "plain")
        assert (call.status, call.error_type) == (base.status, base.error_type)
        assert call.usage_source == base.usage_source
        assert call.usage.to_dict() == base.usage.to_dict()
        assert (call.response_model, call.stream) == (base.response_model, base.stream)
        assert call.stream_end == base.stream_end


# -- damaged bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SSE))
@given(data=st.data())
@fuzz_settings(20)
def test_damaged_stream_raises_what_the_sdk_raises_and_is_recorded_once(
    name: str, data: Any, records: Any
) -> None:
    """No include_usage injection here (a caller of chat/completions asks itself), so both clients
    get the very same bytes: the caller's chunks and exception must be the plain SDK's exactly."""
    case = SSE[name]
    raw = case["response_sse"].encode()
    body = data.draw(damaged(raw), label="body")
    mode = data.draw(st.sampled_from(MODES), label="mode")
    is_async = data.draw(st.booleans(), label="async")
    delivery = data.draw(deliveries(len(body) + 1), label="delivery")
    delivery = Delivery(delivery.cuts, delivery.crlf, delivery.gzip, data.draw(st.booleans(), label="reset"))
    kw = ASK_USAGE if injectable(case) else {}
    with counted(DAMAGED):
        before = len(records.calls)
        tracked = Server(lambda r: body, CONTENT_TYPE, delivery, request_headers(case))
        plain = Server(lambda r: body, CONTENT_TYPE, delivery, request_headers(case))
        got = read(True, is_async, case, tracked, mode, kw)
        want = read(False, is_async, case, plain, mode, kw)
        assert tracked.asked == plain.asked
        assert got.key() == want.key()
        _check_one_honest_record(records, before, got, tracked.sent[0])
        outcome(DAMAGED, type(got.error).__name__ if got.error else "no error")


def _as_if_not_asked(out: Outcome) -> list[Any]:
    """A plain caller's chunks (it asked for include_usage) as a caller who did not ask sees
    them: no usage-only chunk, no ``usage: null`` member."""
    items = []
    for name, fields in out.items:
        if isinstance(fields, dict):
            if fields.get("choices") == [] and fields.get("usage"):
                continue
            if "usage" in fields and fields["usage"] is None:
                fields = {k: v for k, v in fields.items() if k != "usage"}
        items.append((name, fields))
    return items


INJECTABLE = sorted(name for name, case in SSE.items() if injectable(case))


@pytest.mark.parametrize("name", INJECTABLE)
@given(data=st.data())
@fuzz_settings(30)
def test_damaged_stream_with_usage_injected(name: str, data: Any, records: Any) -> None:
    """The tracked client asks for include_usage and hides what that adds, damaged bodies and all.
    Reference: the plain SDK asking for it itself, over the same bytes, with the usage-only chunk
    and the ``usage: null`` members taken out of what its caller got. The tracked caller raises
    only what that reference raised; it may get past a broken usage-only event the reference
    choked on (a caller who never asked would not have received it), and then its chunks go on
    from the reference's."""
    case = SSE[name]
    raw = case["response_sse"].encode()
    body = data.draw(damaged_around_usage(raw), label="body")
    is_async = data.draw(st.booleans(), label="async")
    delivery = data.draw(deliveries(len(body) + 1), label="delivery")
    delivery = Delivery(delivery.cuts, delivery.crlf, delivery.gzip, data.draw(st.booleans(), label="reset"))
    strict = not delivery.gzip  # gzip: hidden as an object, "usage": null stays (see above)
    with counted(INJECTED):
        before = len(records.calls)
        tracked = Server(lambda r: body, CONTENT_TYPE, delivery, request_headers(case))
        plain = Server(lambda r: body, CONTENT_TYPE, delivery, request_headers(case))
        got = read(True, is_async, case, tracked, "typed", {}, strict)
        want = read(False, is_async, case, plain, "typed", ASK_USAGE, strict)
        assert tracked.asked == [True] and plain.asked == [True]
        reference = (
            _as_if_not_asked(want)
            if strict
            else [item for item in want.items if not (item[1].get("choices") == [] and item[1].get("usage"))]
        )
        if got.error is not None:
            assert want.error is not None, repr(got.error)
            # Same type; a JSON error's offset may differ, the filtered bytes being shorter.
            assert type(got.error) is type(want.error), (got.error, want.error)
            assert got.items == reference
        elif want.error is not None:
            assert got.items[: len(reference)] == reference
        else:
            assert got.items == reference
        _check_one_honest_record(records, before, got, tracked.sent[0])
        outcome(INJECTED, type(got.error).__name__ if got.error else "no error")

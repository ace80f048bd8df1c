"""Errors and retries: the caller gets the plain SDK's exception (same type and message); the
record says error with type, HTTP status, attempts and every attempt's request id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.helpers.clients import QUICK_RETRY, fixture_responder, make_clients, normalize
from tests.helpers.fakeopenai import FakeOpenAI, FakeResponse, httpx2

MSG = [{"role": "user", "content": "hi"}]


def _err(status: int, rid: str, message: str = "boom", kind: str = "invalid_request_error", **headers: str):
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return FakeResponse(
        status=status, json_body=body, headers={"x-request-id": rid, **QUICK_RETRY, **headers}
    )


def _ok(rid: str) -> FakeResponse:
    spec = FakeResponse.from_fixture("chat_gpt5_nano_reasoning")
    spec.headers["x-request-id"] = rid
    return spec


def _routes(
    fake: FakeOpenAI, plain_fake: FakeOpenAI, make: Callable[[], Any], path: str = "/chat/completions"
):
    """Fresh responders for each fake (response lists are consumed as they are served)."""
    fake.routes = {("POST", path): make()}
    plain_fake.routes = {("POST", path): make()}


def _exc_view(exc: BaseException) -> tuple:
    return (
        type(exc),
        str(exc),
        getattr(exc, "status_code", None),
        getattr(exc, "request_id", None),
        getattr(exc, "body", None),
        type(exc.__cause__),
    )


async def _both(tracked, plain, call, is_async: bool) -> tuple[BaseException, BaseException]:
    out = []
    for client in (tracked, plain):
        with pytest.raises(Exception) as info:
            result = call(client)
            if is_async:
                await result
        out.append(info.value)
    return out[0], out[1]


CHAT = lambda c: c.chat.completions.create(model="gpt-5-nano", messages=MSG)  # noqa: E731


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("status", "exc_type"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (422, openai.UnprocessableEntityError),
    ],
)
async def test_status_errors(fake, records, is_async: bool, status: int, exc_type: type) -> None:
    tracked, plain, plain_fake = make_clients(fake, is_async=is_async)
    _routes(fake, plain_fake, lambda: _err(status, f"req_{status}", f"bad {status}"))
    exc, plain_exc = await _both(tracked, plain, CHAT, is_async)
    assert isinstance(exc, exc_type)
    assert _exc_view(exc) == _exc_view(plain_exc)
    (call,) = records.calls
    assert call.status == "error"
    assert call.error_type == exc_type.__name__
    assert f"bad {status}" in (call.error_message or "")
    assert call.http_status == status
    assert call.attempts == 1
    assert call.request_ids == [f"req_{status}"]
    assert call.usage_source == "none"
    assert call.endpoint == "chat.completions" and call.model == "gpt-5-nano"


def test_recorded_400_embeddings(fake, records) -> None:
    tracked, plain, plain_fake = make_clients(fake, is_async=False)
    _routes(fake, plain_fake, lambda: fixture_responder("error_400_embeddings_bad_dimensions"), "/embeddings")

    def call(c):
        return c.embeddings.create(model="text-embedding-3-small", input="foo", dimensions=-42)

    excs = []
    for client in (tracked, plain):
        with pytest.raises(openai.BadRequestError) as info:
            call(client)
        excs.append(info.value)
    assert _exc_view(excs[0]) == _exc_view(excs[1])
    (rec,) = records.calls
    assert rec.endpoint == "embeddings" and rec.http_status == 400 and rec.error_type == "BadRequestError"
    assert rec.request_ids == ["Sanitized"]


def test_recorded_400_images(fake, records) -> None:
    tracked, plain, plain_fake = make_clients(fake, is_async=False)
    _routes(
        fake, plain_fake, lambda: fixture_responder("error_400_dalle2_unknown_param"), "/images/generations"
    )
    excs = []
    for client in (tracked, plain):
        with pytest.raises(openai.BadRequestError) as info:
            client.images.generate(model="dall-e-2", prompt="a white siamese cat", quality="standard")
        excs.append(info.value)
    assert _exc_view(excs[0]) == _exc_view(excs[1])
    (rec,) = records.calls
    assert rec.endpoint == "images.generate" and rec.request_ids == ["req_084de3bfba564d1e812829f958e7c616"]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_429_retried_then_success(fake, records, is_async: bool) -> None:
    tracked, plain, plain_fake = make_clients(fake, is_async=is_async, max_retries=2)
    _routes(
        fake,
        plain_fake,
        lambda: [
            _err(429, "req_a", kind="rate_limit_error"),
            _err(429, "req_b", kind="rate_limit_error"),
            _ok("req_c"),
        ],
    )
    if is_async:
        got, want = await CHAT(tracked), await CHAT(plain)
    else:
        got, want = CHAT(tracked), CHAT(plain)
    assert normalize(got) == normalize(want)
    assert len(fake.requests) == 3
    assert [r.headers.get("x-stainless-retry-count") for r in fake.requests] == ["0", "1", "2"]
    (call,) = records.calls
    assert call.status == "success"
    assert call.attempts == 3
    assert call.request_ids == ["req_a", "req_b", "req_c"]
    assert call.usage.output_tokens == 228 and call.usage_source == "response"


def test_429_retried_via_with_raw_response(fake, records) -> None:
    tracked, plain, plain_fake = make_clients(fake, is_async=False, max_retries=2)
    _routes(fake, plain_fake, lambda: [_err(429, "req_a", kind="rate_limit_error"), _ok("req_b")])
    got = tracked.with_raw_response.chat.completions.create(model="gpt-5-nano", messages=MSG)
    want = plain.with_raw_response.chat.completions.create(model="gpt-5-nano", messages=MSG)
    assert got.content == want.content and got.retries_taken == want.retries_taken == 1
    (call,) = records.calls
    assert call.attempts == 2 and call.request_ids == ["req_a", "req_b"]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_500_retries_exhausted(fake, records, is_async: bool) -> None:
    tracked, plain, plain_fake = make_clients(fake, is_async=is_async, max_retries=2)
    _routes(
        fake,
        plain_fake,
        lambda: [_err(500, "req_1", kind="server_error"), _err(502, "req_2"), _err(503, "req_3")],
    )
    exc, plain_exc = await _both(tracked, plain, CHAT, is_async)
    assert isinstance(exc, openai.InternalServerError)
    assert _exc_view(exc) == _exc_view(plain_exc)
    (call,) = records.calls
    assert call.status == "error"
    assert call.error_type == "InternalServerError"
    assert call.http_status == 503
    assert call.attempts == 3
    assert call.request_ids == ["req_1", "req_2", "req_3"]


async def test_should_retry_false_header_stops_retries(fake, records) -> None:
    tracked, plain, plain_fake = make_clients(fake, is_async=False, max_retries=2)
    _routes(fake, plain_fake, lambda: [_err(500, "req_x", **{"x-should-retry": "false"}), _ok("req_y")])
    exc, plain_exc = await _both(tracked, plain, CHAT, False)
    assert isinstance(exc, openai.InternalServerError)
    assert _exc_view(exc) == _exc_view(plain_exc)
    (call,) = records.calls
    assert call.attempts == 1 and call.request_ids == ["req_x"]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_timeout(fake, records, is_async: bool) -> None:
    tracked, plain, plain_fake = make_clients(fake, is_async=is_async)
    _routes(fake, plain_fake, lambda: FakeResponse(error=httpx2.ReadTimeout))
    exc, plain_exc = await _both(tracked, plain, CHAT, is_async)
    assert isinstance(exc, openai.APITimeoutError)
    assert isinstance(exc.__cause__, httpx2.ReadTimeout)
    assert _exc_view(exc) == _exc_view(plain_exc)
    (call,) = records.calls
    assert call.status == "error"
    assert call.error_type == "APITimeoutError"
    assert call.http_status is None
    assert call.attempts == 1
    assert call.request_ids == []


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_connection_error(fake, records, is_async: bool) -> None:
    tracked, plain, plain_fake = make_clients(fake, is_async=is_async)
    _routes(fake, plain_fake, lambda: FakeResponse(error=httpx2.ConnectError))
    exc, plain_exc = await _both(tracked, plain, CHAT, is_async)
    assert type(exc) is openai.APIConnectionError
    assert _exc_view(exc) == _exc_view(plain_exc)
    (call,) = records.calls
    assert call.status == "error" and call.error_type == "APIConnectionError"
    assert call.attempts == 1 and call.request_ids == []


def test_connection_error_retried_then_success(fake, records) -> None:
    tracked, plain, plain_fake = make_clients(fake, is_async=False, max_retries=1)
    _routes(fake, plain_fake, lambda: [FakeResponse(error=httpx2.ConnectError), _ok("req_ok")])
    # A connection error is retried after the SDK's own backoff (~0.5 s; no header to shorten it).
    assert normalize(CHAT(tracked)) == normalize(CHAT(plain))
    (call,) = records.calls
    assert call.status == "success" and call.attempts == 2 and call.request_ids == ["req_ok"]


@pytest.mark.parametrize("mode", ["raw", "streaming"])
def test_errors_through_raw_wrappers(fake, records, mode: str) -> None:
    tracked, plain, plain_fake = make_clients(fake, is_async=False)
    _routes(fake, plain_fake, lambda: _err(404, "req_404", "no such model"))
    excs = []
    for client in (tracked, plain):
        with pytest.raises(openai.NotFoundError) as info:
            if mode == "raw":
                client.with_raw_response.chat.completions.create(model="nope", messages=MSG)
            else:
                with client.with_streaming_response.chat.completions.create(model="nope", messages=MSG) as r:
                    r.read()
        excs.append(info.value)
    assert _exc_view(excs[0]) == _exc_view(excs[1])
    (call,) = records.calls
    assert call.http_status == 404 and call.request_ids == ["req_404"]


def test_stream_request_rejected_before_body(fake, records) -> None:
    tracked, plain, plain_fake = make_clients(fake, is_async=False)
    _routes(fake, plain_fake, lambda: _err(429, "req_rl", "slow down", kind="rate_limit_error"))
    excs = []
    for client in (tracked, plain):
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
        excs.append(info.value)
    assert _exc_view(excs[0]) == _exc_view(excs[1])
    (call,) = records.calls
    assert call.stream is True and call.status == "error" and call.http_status == 429
    assert call.usage_source == "none"


async def test_retry_after_too_long_is_not_retried(fake, records) -> None:
    tracked, plain, plain_fake = make_clients(fake, is_async=False, max_retries=2)
    _routes(
        fake, plain_fake, lambda: [_err(429, "req_long", **{"retry-after-ms": "300000"}), _ok("req_never")]
    )
    try:
        plain.chat.completions.create(model="gpt-5-nano", messages=MSG)
    except openai.RateLimitError:
        pass
    else:
        # openai 2.x ignores a retry-after above 60 s and retries on its own backoff instead:
        # the tracked client must do exactly the same, and count both attempts.
        got = tracked.chat.completions.create(model="gpt-5-nano", messages=MSG)
        (call,) = records.calls
        assert call.status == "success" and call.request_ids == ["req_long", "req_never"]
        assert call.attempts == 2 and call.usage.input_tokens == got.usage.prompt_tokens
        return
    _routes(
        fake, plain_fake, lambda: [_err(429, "req_long", **{"retry-after-ms": "300000"}), _ok("req_never")]
    )
    exc, plain_exc = await _both(tracked, plain, CHAT, False)
    assert isinstance(exc, openai.RateLimitError)
    assert _exc_view(exc) == _exc_view(plain_exc)
    (call,) = records.calls
    assert call.attempts == 1 and call.request_ids == ["req_long"]

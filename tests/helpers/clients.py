"""Shared machinery of the drop-in client matrix (no tests here).

Every matrix case runs the same call twice over the same fake endpoint: once through a tracked
client and once through a PLAIN ``openai`` client, then compares what the caller got (model dumps,
chunk lists, raw bytes) and checks the one call record the tracked run produced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import openai
import pytest
from openai._legacy_response import HttpxBinaryResponseContent, LegacyAPIResponse
from pydantic import BaseModel

import tracked_openai
from tests.helpers.fakeopenai import API_KEY, FakeOpenAI, FakeResponse, httpx2, load_fixture
from tracked_openai.records import USAGE_KEYS, CallRecord

MODES = ("plain", "raw", "streaming")
REQUIRED_CALL_KEYS = set(
    [
        "kind",
        "record_id",
        "parent_id",
        "started_at",
        "duration_s",
        "feature",
        "operation",
        "function",
        "tags",
        "endpoint",
        "model",
        "response_model",
        "params",
        "usage",
        "usage_source",
        "service_tier",
        "cost",
        "cost_status",
        "pricing_version",
        "status",
        "error_type",
        "error_message",
        "http_status",
        "attempts",
        "request_ids",
    ]
)
QUICK_RETRY = {"retry-after-ms": "1"}
# ``client.beta.responses`` (a second Responses resource) is not in every supported SDK.
HAS_BETA_RESPONSES = hasattr(openai.resources.beta.Beta, "responses")
NEEDS_BETA_RESPONSES = pytest.mark.skipif(
    not HAS_BETA_RESPONSES, reason="this openai has no client.beta.responses (later releases)"
)


# -- fake server behaviour -----------------------------------------------------------------------


def _sse_events(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block.strip()]


def usage_aware_stream(name: str, **kw: Any) -> Callable[[httpx2.Request], FakeResponse]:
    """Replay a chat / legacy-completions stream recorded WITH ``include_usage`` the way the real
    API behaves: the usage-only chunk (and the ``"usage": null`` on every chunk) is only sent when
    the request asked for ``stream_options.include_usage``."""
    base = FakeResponse.from_fixture(name, **kw)
    assert base.sse is not None
    with_usage: list[str] = []
    without: list[str] = []
    for block in _sse_events(base.sse):
        data = block.split("data: ", 1)[1]
        if data.strip() == "[DONE]":
            with_usage.append(block)
            without.append(block)
            continue
        chunk = json.loads(data)
        with_usage.append("data: " + json.dumps(chunk))
        if chunk.get("choices") == [] and chunk.get("usage"):
            continue
        chunk.pop("usage", None)
        without.append("data: " + json.dumps(chunk))
    sse_with = "\n\n".join(with_usage) + "\n\n"
    sse_without = "\n\n".join(without) + "\n\n"

    def respond(request: httpx2.Request) -> FakeResponse:
        body = json.loads(request.content)
        asked = bool((body.get("stream_options") or {}).get("include_usage"))
        return FakeResponse(
            status=base.status,
            sse=sse_with if asked else sse_without,
            headers=dict(base.headers),
            chunk_size=base.chunk_size,
            fail_after=base.fail_after,
            error=base.error,
        )

    return respond


def fixture_responder(name: str, **kw: Any) -> Callable[[httpx2.Request], FakeResponse]:
    return lambda request: FakeResponse.from_fixture(name, **kw)


def request_id_of(name: str) -> str:
    headers = {k.lower(): v for k, v in load_fixture(name)["response_headers_subset"].items()}
    return headers["x-request-id"]


# -- clients ---------------------------------------------------------------------------------------


def make_clients(
    fake: FakeOpenAI, *, is_async: bool, azure: bool = False, **kw: Any
) -> tuple[Any, Any, FakeOpenAI]:
    """(tracked client, plain client, the plain client's own fake) over the same routes."""
    plain_fake = FakeOpenAI()
    plain_fake.routes = fake.routes
    kw.setdefault("max_retries", 0)
    if azure:
        kw.setdefault("api_version", "2024-10-21")
        kw.setdefault("azure_endpoint", "https://example-resource.openai.azure.com")
        tracked_cls = tracked_openai.AsyncAzureOpenAI if is_async else tracked_openai.AzureOpenAI
        plain_cls = openai.AsyncAzureOpenAI if is_async else openai.AzureOpenAI
    else:
        tracked_cls = tracked_openai.AsyncOpenAI if is_async else tracked_openai.OpenAI
        plain_cls = openai.AsyncOpenAI if is_async else openai.OpenAI
    if is_async:
        tracked = tracked_cls(api_key=API_KEY, http_client=fake.async_client(), **kw)
        plain = plain_cls(api_key=API_KEY, http_client=plain_fake.async_client(), **kw)
    else:
        tracked = tracked_cls(api_key=API_KEY, http_client=fake.sync_client(), **kw)
        plain = plain_cls(api_key=API_KEY, http_client=plain_fake.sync_client(), **kw)
    return tracked, plain, plain_fake


# -- what the caller sees ----------------------------------------------------------------------


def normalize(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return ("model", type(value).__name__, value.model_dump(warnings=False))
    if isinstance(value, HttpxBinaryResponseContent):
        return ("binary", value.content)
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, list):
        return [normalize(v) for v in value]
    raise AssertionError(f"cannot normalize {type(value)!r}")


def _is_stream(value: Any) -> bool:
    return isinstance(value, (openai.Stream, openai.AsyncStream))


def run_sync(client: Any, call: Callable[[Any], Any], mode: str) -> Any:
    if mode == "plain":
        out = call(client)
        if _is_stream(out):
            return ("stream", type(out).__name__, [normalize(c) for c in out])
        return normalize(out)
    if mode == "raw":
        raw = call(client.with_raw_response)
        assert isinstance(raw, LegacyAPIResponse)
        parsed = raw.parse()
        if _is_stream(parsed):
            return ("raw-stream", raw.status_code, [normalize(c) for c in parsed])
        return ("raw", raw.status_code, raw.content, normalize(parsed))
    assert mode == "streaming"
    with call(client.with_streaming_response) as response:
        data = b"".join(response.iter_bytes())
        return ("streaming", response.status_code, data)


async def run_async(client: Any, call: Callable[[Any], Any], mode: str) -> Any:
    if mode == "plain":
        out = await call(client)
        if _is_stream(out):
            return ("stream", type(out).__name__.removeprefix("Async"), [normalize(c) async for c in out])
        return normalize(out)
    if mode == "raw":
        raw = await call(client.with_raw_response)
        assert isinstance(raw, LegacyAPIResponse)
        parsed = raw.parse()
        if _is_stream(parsed):
            return ("raw-stream", raw.status_code, [normalize(c) async for c in parsed])
        return ("raw", raw.status_code, raw.content, normalize(parsed))
    assert mode == "streaming"
    async with call(client.with_streaming_response) as response:
        data = b"".join([part async for part in response.iter_bytes()])
        return ("streaming", response.status_code, data)


# -- what the record says ----------------------------------------------------------------------


def usage_dict(**given: Any) -> dict[str, Any]:
    unknown = set(given) - set(USAGE_KEYS)
    assert not unknown, unknown
    return {key: given.get(key) for key in USAGE_KEYS}


@dataclass
class Expect:
    endpoint: str
    model: str | None
    response_model: str | None
    usage: dict[str, Any]
    usage_source: str = "response"
    service_tier: str | None = None
    request_ids: list[str] = field(default_factory=list)
    stream: bool = False
    provider: str = "openai"


def check_record(call: CallRecord, expect: Expect, *, estimated: bool = False) -> None:
    assert call.kind == "call"
    assert call.status == "success", (call.error_type, call.error_message)
    assert call.endpoint == expect.endpoint
    assert call.provider == expect.provider
    assert call.model == expect.model
    assert call.response_model == expect.response_model
    assert call.stream is expect.stream
    assert call.attempts == 1
    assert call.request_ids == expect.request_ids
    assert call.http_status in (None, 200)
    if estimated:
        # Usage never arrived (raw stream, no include_usage): tiktoken estimate.
        assert call.usage_source == "estimated"
        assert (call.usage.input_tokens or 0) > 0
        assert (call.usage.output_tokens or 0) > 0
    else:
        assert call.usage_source == expect.usage_source
        assert call.usage.to_dict() == expect.usage
        assert call.service_tier == expect.service_tier
    # JSON-safe and carrying the documented keys.
    data = json.loads(json.dumps(call.to_dict()))
    assert set(data) >= REQUIRED_CALL_KEYS
    assert set(data["usage"]) == set(USAGE_KEYS)
    assert data["usage"] == call.usage.to_dict()
    assert data["endpoint"] == expect.endpoint
    assert data["kind"] == "call" and data["stream"] is expect.stream
    started = datetime.fromisoformat(data["started_at"])
    assert started.utcoffset() == timedelta(0)
    assert isinstance(data["duration_s"], float) and data["duration_s"] >= 0


@dataclass
class Case:
    """One endpoint call: the fake route, how to call it, and the record it must produce."""

    id: str
    method: str
    path: str
    responder: Callable[[httpx2.Request], FakeResponse]
    call: Callable[[Any], Any]
    expect: Expect
    # Modes whose record carries an estimate (chat/completions streams read raw: nothing injected).
    estimated_in: tuple[str, ...] = ()
    modes: tuple[str, ...] = MODES
    marks: tuple[Any, ...] = ()
    azure: bool = False


def case_params(cases: list[Case]) -> list[Any]:
    import pytest

    return [
        pytest.param(case, mode, id=f"{case.id}-{mode}", marks=case.marks)
        for case in cases
        for mode in case.modes
    ]


def _check_bodies(case: Case, mode: str, fake: FakeOpenAI, plain_fake: FakeOpenAI) -> None:
    assert len(fake.bodies) == len(plain_fake.bodies) == 1
    sent, plain_sent = fake.bodies[0], plain_fake.bodies[0]
    injected = mode == "plain" and case.estimated_in  # chat/completions streams, not raw
    if injected:
        assert sent == {**plain_sent, "stream_options": {"include_usage": True}}
    else:
        assert sent == plain_sent


def check_case_sync(case: Case, mode: str, fake: FakeOpenAI, records: Any) -> None:
    fake.add(case.method, case.path, case.responder)
    tracked, plain, plain_fake = make_clients(fake, is_async=False, azure=case.azure)
    try:
        got = run_sync(tracked, case.call, mode)
        want = run_sync(plain, case.call, mode)
    finally:
        tracked.close()
        plain.close()
    assert got == want
    _check_bodies(case, mode, fake, plain_fake)
    (call,) = records.calls
    check_record(call, case.expect, estimated=mode in case.estimated_in)


async def check_case_async(case: Case, mode: str, fake: FakeOpenAI, records: Any) -> None:
    fake.add(case.method, case.path, case.responder)
    tracked, plain, plain_fake = make_clients(fake, is_async=True, azure=case.azure)
    try:
        got = await run_async(tracked, case.call, mode)
        want = await run_async(plain, case.call, mode)
    finally:
        await tracked.close()
        await plain.close()
    assert got == want
    _check_bodies(case, mode, fake, plain_fake)
    (call,) = records.calls
    check_record(call, case.expect, estimated=mode in case.estimated_in)

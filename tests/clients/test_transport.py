"""Transport variations: a legacy ``httpx`` client as ``http_client``, gzip-encoded bodies, and what
a record may contain (no keys, no prompts unless opted in)."""

from __future__ import annotations

import gc
import gzip
import json

import httpx
import httpx2
import openai
import pytest

import tracked_openai
from tests.helpers.clients import fixture_responder, make_clients, normalize, usage_aware_stream
from tests.helpers.fakeopenai import API_KEY, FakeResponse, load_fixture

MSG = [{"role": "user", "content": "Say this is a secret prompt"}]
STREAM = "chat_stream_gpt4_include_usage"


class _LegacyChunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, data: bytes, size: int = 17) -> None:
        self.data, self.size = data, size

    def __iter__(self):
        for i in range(0, len(self.data), self.size):
            yield self.data[i : i + self.size]

    async def __aiter__(self):
        for i in range(0, len(self.data), self.size):
            yield self.data[i : i + self.size]


def _legacy_handler(bodies: list):
    stream_responder = usage_aware_stream(STREAM)
    plain = load_fixture("chat_gpt5_nano_reasoning")

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if body.get("stream"):
            asked = bool((body.get("stream_options") or {}).get("include_usage"))
            fake_req = type("R", (), {"content": request.content})()
            spec = stream_responder(fake_req)
            assert bool(asked) == ("prompt_tokens" in spec.sse)
            data, ctype = spec.sse.encode(), "text/event-stream"
        else:
            data, ctype = json.dumps(plain["response_body"]).encode(), "application/json"
        return httpx.Response(
            200, headers={"content-type": ctype, "x-request-id": "req_legacy"}, stream=_LegacyChunks(data)
        )

    return handler


def _legacy_clients(is_async: bool):
    tracked_bodies: list = []
    plain_bodies: list = []
    if is_async:
        tracked = tracked_openai.AsyncOpenAI(
            api_key=API_KEY,
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(_legacy_handler(tracked_bodies))),
            max_retries=0,
        )
        plain = openai.AsyncOpenAI(
            api_key=API_KEY,
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(_legacy_handler(plain_bodies))),
            max_retries=0,
        )
    else:
        tracked = tracked_openai.OpenAI(
            api_key=API_KEY,
            http_client=httpx.Client(transport=httpx.MockTransport(_legacy_handler(tracked_bodies))),
            max_retries=0,
        )
        plain = openai.OpenAI(
            api_key=API_KEY,
            http_client=httpx.Client(transport=httpx.MockTransport(_legacy_handler(plain_bodies))),
            max_retries=0,
        )
    return tracked, plain, tracked_bodies, plain_bodies


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_legacy_httpx_client(records, is_async: bool) -> None:
    tracked, plain, tracked_bodies, plain_bodies = _legacy_clients(is_async)

    async def run(client):
        out = []
        if is_async:
            out.append(normalize(await client.chat.completions.create(model="gpt-5-nano", messages=MSG)))
            stream = await client.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
            out.append([normalize(c) async for c in stream])
            raw = await client.with_raw_response.chat.completions.create(
                model="gpt-4", messages=MSG, stream=True
            )
            out.append([normalize(c) async for c in raw.parse()])
        else:
            out.append(normalize(client.chat.completions.create(model="gpt-5-nano", messages=MSG)))
            out.append(
                [
                    normalize(c)
                    for c in client.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
                ]
            )
            raw = client.with_raw_response.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
            out.append([normalize(c) for c in raw.parse()])
        return out

    assert await run(tracked) == await run(plain)
    assert tracked_bodies[0] == plain_bodies[0]
    assert tracked_bodies[1]["stream_options"] == {"include_usage": True}
    calls = records.calls
    assert len(calls) == 3
    assert calls[0].usage.output_tokens == 228 and calls[0].usage_source == "response"
    assert calls[1].usage.input_tokens == 12 and calls[1].usage_source == "response"
    assert calls[2].usage_source == "estimated"
    assert all(c.request_ids == ["req_legacy"] for c in calls)


def _gzipped(name: str):
    base = usage_aware_stream(name)

    def respond(request):
        spec = base(request)
        return FakeResponse(
            content=gzip.compress(spec.sse.encode()),
            headers={**spec.headers, "content-type": "text/event-stream", "content-encoding": "gzip"},
        )

    return respond


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_gzip_encoded_stream(fake, records, is_async: bool) -> None:
    fake.add("POST", "/chat/completions", _gzipped(STREAM))
    tracked, plain, _ = make_clients(fake, is_async=is_async)
    kw = dict(model="gpt-4", messages=MSG, stream=True)
    if is_async:
        got = [normalize(c) async for c in await tracked.chat.completions.create(**kw)]
        want = [normalize(c) async for c in await plain.chat.completions.create(**kw)]
    else:
        got = [normalize(c) for c in tracked.chat.completions.create(**kw)]
        want = [normalize(c) for c in plain.chat.completions.create(**kw)]
    assert got == want
    assert all(c[2]["choices"] for c in got)  # the injected usage chunk stays hidden
    (call,) = records.calls
    assert call.usage.input_tokens == 12 and call.usage.output_tokens == 5
    assert call.usage_source == "response"


def test_gzip_encoded_json_via_streaming_response(fake, records) -> None:
    body = load_fixture("chat_gpt5_nano_reasoning")["response_body"]
    fake.add(
        "POST",
        "/chat/completions",
        lambda r: FakeResponse(
            content=gzip.compress(json.dumps(body).encode()),
            headers={
                "content-type": "application/json",
                "content-encoding": "gzip",
                "x-request-id": "req_gz",
            },
        ),
    )
    tracked, plain, _ = make_clients(fake, is_async=False)

    def run(client):
        with client.with_streaming_response.chat.completions.create(model="gpt-5-nano", messages=MSG) as r:
            return b"".join(r.iter_bytes())

    assert run(tracked) == run(plain)
    (call,) = records.calls
    assert call.usage.output_tokens == 228 and call.usage_source == "response"


def test_record_has_no_key_and_no_prompt_by_default(fake, records) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_gpt5_nano_reasoning"))
    fake.add("POST", "/embeddings", fixture_responder("error_400_embeddings_bad_dimensions"))
    tracked, _, _ = make_clients(fake, is_async=False)
    with tracked_openai.track("f", "op"):
        tracked.chat.completions.create(
            model="gpt-5-nano", messages=MSG, temperature=0.5, max_completion_tokens=99
        )
        with pytest.raises(openai.BadRequestError):
            tracked.embeddings.create(model="text-embedding-3-small", input="Say this is a secret prompt")
    dumped = json.dumps([r.to_dict() for r in records.records])
    assert API_KEY not in dumped and "Bearer" not in dumped
    assert "secret prompt" not in dumped
    call = records.calls[0]
    assert call.content is None
    assert call.params == {"temperature": 0.5, "max_completion_tokens": 99}


def test_capture_content_opt_in(fake, records) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_gpt5_nano_reasoning"))
    tracked, _, _ = make_clients(fake, is_async=False)
    tracked_openai.configure(capture_content=True)
    try:
        out = tracked.chat.completions.create(model="gpt-5-nano", messages=MSG)
    finally:
        tracked_openai.configure(capture_content=False)
    (call,) = records.calls
    assert call.content["request"]["messages"] == MSG
    assert call.content["response"] == [out.choices[0].message.content]
    assert API_KEY not in json.dumps(call.to_dict())


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_raw_stream_never_parsed_recorded_once_on_gc(fake, records, is_async: bool) -> None:
    fake.add("POST", "/chat/completions", usage_aware_stream(STREAM))
    tracked, _, _ = make_clients(fake, is_async=is_async)
    if is_async:
        await tracked.with_raw_response.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
    else:
        tracked.with_raw_response.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
    gc.collect()
    (call,) = records.calls
    assert call.stream is True and call.status == "success"


async def test_async_stream_dropped_without_close(fake, records) -> None:
    fake.add("POST", "/chat/completions", usage_aware_stream(STREAM))
    tracked, _, _ = make_clients(fake, is_async=True)

    async def partial() -> None:
        stream = await tracked.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
        await stream.__anext__()

    await partial()
    gc.collect()
    (call,) = records.calls
    assert call.status == "success" and call.usage_source == "estimated"
    gc.collect()
    assert len(records.calls) == 1


def test_interleaved_streams_in_one_thread(fake, records) -> None:
    fake.add("POST", "/chat/completions", usage_aware_stream(STREAM))
    fake.add("POST", "/responses", fixture_responder("responses_stream_gpt41_nano"))
    tracked, _, _ = make_clients(fake, is_async=False)
    with tracked_openai.track("a"):
        s1 = tracked.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
    with tracked_openai.track("b"):
        s2 = tracked.responses.create(model="gpt-4.1-nano", input="2+2", stream=True)
    it1, it2 = iter(s1), iter(s2)
    done1 = done2 = False
    while not (done1 and done2):
        if not done1:
            done1 = next(it1, None) is None
        if not done2:
            done2 = next(it2, None) is None
    calls = {c.feature: c for c in records.calls}
    assert calls["a"].endpoint == "chat.completions" and calls["a"].usage.input_tokens == 12
    assert calls["b"].endpoint == "responses" and calls["b"].usage.input_tokens == 14


# -- a corrupt compressed body -------------------------------------------------------------------


def _corrupt_gzip(data: bytes) -> bytes:
    """``data`` gzipped, with eight bytes in the middle of the compressed stream flipped."""
    packed = gzip.compress(data)
    mid = len(packed) // 2
    return packed[:mid] + bytes(b ^ 0xFF for b in packed[mid : mid + 8]) + packed[mid + 8 :]


def _corrupt_responder(request) -> FakeResponse:
    if json.loads(request.content).get("stream"):
        sse = FakeResponse.from_fixture(STREAM).sse
        data, ctype = (sse * 20).encode(), "text/event-stream"
    else:
        body = load_fixture("chat_gpt5_nano_reasoning")["response_body"]
        data, ctype = json.dumps(body).encode(), "application/json"
    return FakeResponse(
        content=_corrupt_gzip(data),
        headers={"content-type": ctype, "content-encoding": "gzip", "x-request-id": "req_corrupt"},
        chunk_size=64,
    )


CORRUPT_MODES = ("stream", "raw-stream", "streaming-stream", "streaming-json")


async def _read_corrupt(client, mode: str, is_async: bool) -> tuple[list, BaseException]:
    """What the caller got before the body failed to decode, and the exception it got."""
    stream = mode != "streaming-json"
    kw = dict(model="gpt-4" if stream else "gpt-5-nano", messages=MSG, stream=stream)
    got: list = []
    with pytest.raises(Exception) as info:
        if mode == "stream" or mode == "raw-stream":
            if mode == "stream":
                out = client.chat.completions.create(**kw)
                out = await out if is_async else out
            else:
                raw = client.with_raw_response.chat.completions.create(**kw)
                out = (await raw if is_async else raw).parse()
            if is_async:
                async for chunk in out:
                    got.append(normalize(chunk))
            else:
                got.extend(normalize(chunk) for chunk in out)
        elif is_async:
            async with client.with_streaming_response.chat.completions.create(**kw) as r:
                if stream:
                    async for part in r.iter_bytes():
                        got.append(part)
                else:
                    await r.read()
        else:
            with client.with_streaming_response.chat.completions.create(**kw) as r:
                if stream:
                    got.extend(r.iter_bytes())
                else:
                    r.read()
    return got, info.value


@pytest.mark.parametrize("mode", CORRUPT_MODES)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_corrupt_gzip_body_is_recorded_as_the_error_the_caller_got(
    fake, records, monkeypatch, is_async: bool, mode: str
) -> None:
    """The SDK decodes above the tee: a body that fails to decode mid-way raises
    ``DecodingError`` (a ``Stream`` raises ``APIConnectionError`` from it). The record says so,
    and the kept bytes are not decoded a second time for it (no internal error either)."""
    import tracked_openai.capture.tee as instrument

    decoded_again: list = []
    decoder_for = instrument.decoder_for
    monkeypatch.setattr(instrument, "decoder_for", lambda *a: decoded_again.append(a) or decoder_for(*a))
    fake.add("POST", "/chat/completions", _corrupt_responder)
    tracked, plain, _ = make_clients(fake, is_async=is_async)

    got, exc = await _read_corrupt(tracked, mode, is_async)
    want, plain_exc = await _read_corrupt(plain, mode, is_async)
    assert got == want
    assert (type(exc), str(exc)) == (type(plain_exc), str(plain_exc))
    cause = exc if isinstance(exc, httpx2.DecodingError) else exc.__cause__
    assert isinstance(cause, httpx2.DecodingError)
    if mode in ("stream", "raw-stream"):
        assert isinstance(exc, openai.APIConnectionError)
    (call,) = records.calls
    assert call.status == "error"
    assert (call.error_type, call.error_message) == ("DecodingError", str(cause))
    assert call.request_ids == ["req_corrupt"]
    assert call.stream_end == ("error" if mode != "streaming-json" else None)
    assert decoded_again == []


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_corrupt_gzip_body_through_a_legacy_httpx_client(records, is_async: bool) -> None:
    data = _corrupt_gzip((FakeResponse.from_fixture(STREAM).sse * 20).encode())

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
        return httpx.Response(200, headers=headers, stream=_LegacyChunks(data, 64))

    transport = httpx.MockTransport(handler)
    kw = dict(model="gpt-4", messages=MSG, stream=True)
    if is_async:
        client = tracked_openai.AsyncOpenAI(
            api_key=API_KEY, http_client=httpx.AsyncClient(transport=transport), max_retries=0
        )
        with pytest.raises(httpx.DecodingError) as info:
            async with client.with_streaming_response.chat.completions.create(**kw) as r:
                async for _ in r.iter_bytes():
                    pass
    else:
        client = tracked_openai.OpenAI(
            api_key=API_KEY, http_client=httpx.Client(transport=transport), max_retries=0
        )
        with (
            pytest.raises(httpx.DecodingError) as info,
            client.with_streaming_response.chat.completions.create(**kw) as r,
        ):
            for _ in r.iter_bytes():
                pass
    (call,) = records.calls
    assert call.status == "error" and call.stream_end == "error"
    assert (call.error_type, call.error_message) == ("DecodingError", str(info.value))


def test_corrupt_gzip_body_read_raw_is_no_error_of_ours(fake, records) -> None:
    """Read with ``iter_raw`` the body is never decoded for the caller, who sees no error; the
    parser then finds it undecodable: no usage read, and no internal error counted."""
    fake.add("POST", "/chat/completions", _corrupt_responder)
    tracked, plain, _ = make_clients(fake, is_async=False)

    def run(client) -> bytes:
        kw = dict(model="gpt-4", messages=MSG, stream=True)
        with client.with_streaming_response.chat.completions.create(**kw) as r:
            return b"".join(r.http_response.iter_raw())

    assert run(tracked) == run(plain)
    (call,) = records.calls
    assert call.status == "success" and call.error_type is None
    # What decoded before the bad bytes is read (an estimate from those events); the rest is not.
    assert call.usage_source == "estimated" and call.stream_end == "complete"

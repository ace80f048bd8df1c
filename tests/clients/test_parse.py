"""``.parse()`` (chat and Responses), ``LengthFinishReasonError`` after a billed 200, ``copy()`` /
``with_options()`` staying tracked, and free calls not being recorded."""

from __future__ import annotations

import openai
import pytest
from pydantic import BaseModel

import tracked_openai
from tests.helpers.clients import fixture_responder, make_clients, normalize
from tests.helpers.fakeopenai import FakeResponse

MSG = [{"role": "user", "content": "Alice is 30"}]


class Person(BaseModel):
    name: str
    age: int


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_chat_parse(fake, records, is_async: bool) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_parse_structured"))
    tracked, plain, plain_fake = make_clients(fake, is_async=is_async)
    kw = dict(model="gpt-4o-mini", messages=MSG, response_format=Person)
    if is_async:
        got, want = await tracked.chat.completions.parse(**kw), await plain.chat.completions.parse(**kw)
    else:
        got, want = tracked.chat.completions.parse(**kw), plain.chat.completions.parse(**kw)
    assert got.choices[0].message.parsed == Person(name="Alice", age=30)
    assert normalize(got) == normalize(want)
    assert fake.bodies == plain_fake.bodies
    (call,) = records.calls
    assert call.endpoint == "chat.completions" and call.stream is False
    assert call.usage.input_tokens == 1200 and call.usage.cached_input_tokens == 1024
    assert call.usage.output_tokens == 9
    assert call.service_tier == "flex"
    assert call.response_model == "gpt-4o-mini-2024-07-18"
    assert call.request_ids == ["req_chat_parse_structured"]
    assert call.params.get("response_format") is not None


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_chat_parse_length_error_keeps_usage(fake, records, is_async: bool) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_parse_length"))
    tracked, plain, _ = make_clients(fake, is_async=is_async)
    kw = dict(model="gpt-4o-mini", messages=MSG, response_format=Person, max_completion_tokens=5)
    excs = []
    for client in (tracked, plain):
        with pytest.raises(openai.LengthFinishReasonError) as info:
            if is_async:
                await client.chat.completions.parse(**kw)
            else:
                client.chat.completions.parse(**kw)
        excs.append(info.value)
    assert type(excs[0]) is type(excs[1]) and str(excs[0]) == str(excs[1])
    assert excs[0].completion.model_dump() == excs[1].completion.model_dump()
    (call,) = records.calls
    assert call.status == "error"
    assert call.error_type == "LengthFinishReasonError"
    assert call.usage.input_tokens == 60 and call.usage.output_tokens == 5
    assert call.usage_source == "response"
    assert call.http_status == 200 or call.http_status is None
    assert call.request_ids == ["req_chat_parse_length"]


def test_chat_with_raw_response_parse(fake, records) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_parse_structured"))
    tracked, plain, _ = make_clients(fake, is_async=False)
    kw = dict(model="gpt-4o-mini", messages=MSG, response_format=Person)
    got = tracked.chat.completions.with_raw_response.parse(**kw)
    want = plain.chat.completions.with_raw_response.parse(**kw)
    assert got.content == want.content
    assert normalize(got.parse()) == normalize(want.parse())
    (call,) = records.calls
    assert call.usage.input_tokens == 1200


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_responses_parse(fake, records, is_async: bool) -> None:
    fake.add("POST", "/responses", fixture_responder("responses_parse_structured"))
    tracked, plain, plain_fake = make_clients(fake, is_async=is_async)
    kw = dict(model="gpt-4.1-mini", input="Alice is 30", text_format=Person)
    if is_async:
        got, want = await tracked.responses.parse(**kw), await plain.responses.parse(**kw)
    else:
        got, want = tracked.responses.parse(**kw), plain.responses.parse(**kw)
    assert got.output_parsed == Person(name="Alice", age=30)
    assert normalize(got) == normalize(want)
    assert fake.bodies == plain_fake.bodies
    (call,) = records.calls
    assert call.endpoint == "responses"
    assert call.usage.input_tokens == 2048 and call.usage.cached_input_tokens == 1536
    assert call.usage.output_tokens == 12 and call.usage.reasoning_tokens == 0
    assert call.service_tier == "priority"
    assert call.response_model == "gpt-4.1-mini-2025-04-14"


# -- copies stay tracked --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["copy", "with_options"])
def test_copies_stay_tracked(fake, records, how: str) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_gpt5_nano_reasoning"))
    tracked, _, _ = make_clients(fake, is_async=False)
    other = getattr(tracked, how)(timeout=12.5, max_retries=1)
    assert isinstance(other, tracked_openai.OpenAI)
    assert other.max_retries == 1
    other.chat.completions.create(model="gpt-5-nano", messages=MSG)
    other.with_raw_response.chat.completions.create(model="gpt-5-nano", messages=MSG)
    calls = records.calls
    assert len(calls) == 2
    assert {c.usage.output_tokens for c in calls} == {228}


@pytest.mark.parametrize("how", ["copy", "with_options"])
async def test_async_copies_stay_tracked(fake, records, how: str) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_gpt5_nano_reasoning"))
    tracked, _, _ = make_clients(fake, is_async=True)
    other = getattr(tracked, how)(max_retries=1)
    assert isinstance(other, tracked_openai.AsyncOpenAI)
    await other.chat.completions.create(model="gpt-5-nano", messages=MSG)
    (call,) = records.calls
    assert call.usage.output_tokens == 228


def test_azure_copy_stays_tracked(fake, records) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_azure_gpt35_content_filter"))
    tracked, _, _ = make_clients(fake, is_async=False, azure=True)
    other = tracked.with_options(max_retries=1)
    assert isinstance(other, tracked_openai.AzureOpenAI)
    other.chat.completions.create(model="openllmetry-testing", messages=MSG)
    (call,) = records.calls
    assert call.provider == "azure"


# -- free calls --------------------------------------------------------------------------------


def test_free_calls_are_not_recorded(fake, records) -> None:
    fake.add("GET", "/models", FakeResponse(json_body={"object": "list", "data": []}))
    fake.add(
        "GET",
        "/models/gpt-4o",
        FakeResponse(json_body={"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "openai"}),
    )
    fake.add("GET", "/files", FakeResponse(json_body={"object": "list", "data": [], "has_more": False}))
    fake.add(
        "GET",
        "/responses/resp_1",
        FakeResponse.from_fixture("responses_gpt5_mini_reasoning"),
    )
    fake.add(
        "GET",
        "/chat/completions/chatcmpl-1",
        FakeResponse.from_fixture("chat_gpt5_nano_reasoning"),
    )
    tracked, plain, _ = make_clients(fake, is_async=False)
    assert list(tracked.models.list()) == list(plain.models.list())
    assert tracked.models.retrieve("gpt-4o") == plain.models.retrieve("gpt-4o")
    assert list(tracked.files.list()) == list(plain.files.list())
    got = tracked.responses.retrieve("resp_1")
    assert got.usage is not None and got.usage.input_tokens == 54
    assert tracked.chat.completions.retrieve("chatcmpl-1").usage.total_tokens == 239
    tracked.with_raw_response.models.list()
    assert records.calls == []
    assert records.records == []


async def test_async_free_calls_are_not_recorded(fake, records) -> None:
    fake.add("GET", "/responses/resp_1", FakeResponse.from_fixture("responses_gpt5_mini_reasoning"))
    tracked, _, _ = make_clients(fake, is_async=True)
    await tracked.responses.retrieve("resp_1")
    assert records.records == []


def test_other_clients_in_process_are_untouched(fake, records) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_gpt5_nano_reasoning"))
    _, plain, _ = make_clients(fake, is_async=False)
    plain.chat.completions.create(model="gpt-5-nano", messages=MSG)
    assert type(plain).request is openai.OpenAI.request
    assert records.records == []


def test_responses_stream_by_id_is_a_free_retrieve(fake, records) -> None:
    # `responses.stream(response_id=...)` re-reads a stored response (GET): not billed again.
    fake.add("GET", "/responses/resp_1", fixture_responder("responses_stream_gpt41_nano"))
    tracked, plain, _ = make_clients(fake, is_async=False)

    def run(client):
        with client.responses.stream(response_id="resp_1") as stream:
            return [e.type for e in stream]

    assert run(tracked) == run(plain)
    assert records.records == []

"""Azure clients: same matrix as OpenAI; records keep the deployment name (``model``) and the
served model (``response_model``); ``include_usage`` is injected for Azure hosts too, and Azure's
own empty-``choices`` content-filter chunk is never hidden."""

from __future__ import annotations

import pytest

from tests.helpers.clients import (
    Case,
    Expect,
    case_params,
    check_case_async,
    check_case_sync,
    fixture_responder,
    make_clients,
    normalize,
    request_id_of,
    usage_aware_stream,
    usage_dict,
)

MSG = [{"role": "user", "content": "Tell me a joke"}]

AZURE = [
    Case(
        "azure-chat",
        "POST",
        "/chat/completions",
        fixture_responder("chat_azure_gpt35_content_filter"),
        lambda c: c.chat.completions.create(model="openllmetry-testing", messages=MSG),
        Expect(
            "chat.completions",
            "openllmetry-testing",
            "gpt-35-turbo",
            usage_dict(input_tokens=15, output_tokens=24),
            request_ids=[request_id_of("chat_azure_gpt35_content_filter")],
            provider="azure",
        ),
        azure=True,
    ),
    Case(
        "azure-chat-stream",
        "POST",
        "/chat/completions",
        usage_aware_stream("chat_azure_stream_content_filter"),
        lambda c: c.chat.completions.create(model="gpt-4o-deploy", messages=MSG, stream=True),
        Expect(
            "chat.completions",
            "gpt-4o-deploy",
            "gpt-4o-2024-08-06",
            usage_dict(
                input_tokens=14,
                output_tokens=7,
                cached_input_tokens=0,
                audio_input_tokens=0,
                reasoning_tokens=0,
                audio_output_tokens=0,
            ),
            request_ids=[request_id_of("chat_azure_stream_content_filter")],
            stream=True,
            provider="azure",
        ),
        estimated_in=("raw", "streaming"),
        azure=True,
    ),
]


@pytest.mark.parametrize(("case", "mode"), case_params(AZURE))
def test_sync_matches_plain_sdk_and_records_once(case: Case, mode: str, fake, records) -> None:
    check_case_sync(case, mode, fake, records)
    assert fake.requests[0].url.path.startswith("/openai/deployments/")
    assert fake.requests[0].url.params["api-version"] == "2024-10-21"


@pytest.mark.parametrize(("case", "mode"), case_params(AZURE))
async def test_async_matches_plain_sdk_and_records_once(case: Case, mode: str, fake, records) -> None:
    await check_case_async(case, mode, fake, records)


def test_azure_url_and_deployment(fake, records) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_azure_gpt35_content_filter"))
    tracked, _, _ = make_clients(fake, is_async=False, azure=True)
    tracked.chat.completions.create(model="openllmetry-testing", messages=MSG)
    assert fake.requests[0].url.path == "/openai/deployments/openllmetry-testing/chat/completions"
    (call,) = records.calls
    assert call.model == "openllmetry-testing" and call.response_model == "gpt-35-turbo"


def test_azure_content_filter_chunk_is_kept(fake, records) -> None:
    fake.add("POST", "/chat/completions", usage_aware_stream("chat_azure_stream_content_filter"))
    tracked, plain, _ = make_clients(fake, is_async=False, azure=True)
    kw = dict(model="gpt-4o-deploy", messages=MSG, stream=True)
    got = [normalize(c) for c in tracked.chat.completions.create(**kw)]
    assert got == [normalize(c) for c in plain.chat.completions.create(**kw)]
    # Azure's leading prompt-filter chunk has empty choices and no usage: it is the caller's.
    assert got[0][2]["choices"] == [] and got[0][2]["usage"] is None
    assert all(c[2]["usage"] is None for c in got)
    (call,) = records.calls
    assert call.usage.input_tokens == 14 and call.usage_source == "response"
    assert call.response_model == "gpt-4o-2024-08-06"


def test_azure_deployment_client_option(fake, records) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_azure_gpt35_content_filter"))
    tracked, plain, _ = make_clients(fake, is_async=False, azure=True, azure_deployment="my-deploy")
    got = tracked.chat.completions.create(model="gpt-35-turbo", messages=MSG)
    assert normalize(got) == normalize(plain.chat.completions.create(model="gpt-35-turbo", messages=MSG))
    assert fake.requests[0].url.path == "/openai/deployments/my-deploy/chat/completions"
    (call,) = records.calls
    assert call.provider == "azure" and call.response_model == "gpt-35-turbo"

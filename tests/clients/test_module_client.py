"""The SDK's module-level client (``openai.chat.completions.create(...)``): tracked through the
import swap (``import tracked_openai.openai as openai``) or the opt-in
``tracked_openai.instrument_module_client()``; every other client stays untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import tracked_openai
import tracked_openai.openai as topenai
from tests.helpers.clients import fixture_responder, normalize, request_id_of, usage_aware_stream
from tests.helpers.fakeopenai import API_KEY, FakeOpenAI
from tracked_openai import _module_client

MSG = [{"role": "user", "content": "Say this is a test"}]
CHAT = "chat_gpt5_nano_reasoning"


@pytest.fixture
def sdk_module(fake: FakeOpenAI, records: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """The ``openai`` module's settings pointed at the fake, its client unbuilt; all restored."""
    names = [n for n in (*_module_client.settings_names(), "_client") if hasattr(openai, n)]
    saved = {n: getattr(openai, n) for n in names}
    monkeypatch.setattr(_module_client, "_view_state", (None, None, False))
    openai._client = None
    openai.api_key = API_KEY
    openai.http_client = fake.sync_client()
    openai.max_retries = 0
    fake.add("POST", "/chat/completions", fixture_responder(CHAT))
    try:
        yield fake
    finally:
        tracked_openai.uninstrument_module_client()
        for name, value in saved.items():
            setattr(openai, name, value)


def _create(module: Any, **kw: Any) -> Any:
    return module.chat.completions.create(model="gpt-5-nano", messages=MSG, **kw)


def _plain_result() -> Any:
    fake = FakeOpenAI().add("POST", "/chat/completions", fixture_responder(CHAT))
    return openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)


# -- the import swap --------------------------------------------------------------------------------


def test_import_swap_records_module_calls(sdk_module, records) -> None:
    got = _create(topenai)
    assert normalize(got) == normalize(_create(_plain_result()))
    (call,) = records.calls
    assert call.endpoint == "chat.completions" and call.model == "gpt-5-nano"
    assert call.status == "success" and call.usage_source == "response"
    assert call.usage.input_tokens == got.usage.prompt_tokens
    assert call.usage.output_tokens == got.usage.completion_tokens
    assert call.request_ids == [request_id_of(CHAT)]


def test_import_swap_leaves_the_sdk_module_and_explicit_clients_untracked(sdk_module, records) -> None:
    _create(openai)
    _create(openai.OpenAI(api_key=API_KEY, http_client=sdk_module.sync_client(), max_retries=0))
    assert records.calls == []
    with tracked_openai.track("checkout", "summary"):
        _create(topenai)
    (call,) = records.calls
    assert (call.feature, call.operation) == ("checkout", "summary")
    assert type(openai._client) is openai._ModuleClient  # the SDK's own client, unchanged
    assert len(sdk_module.requests) == 3


def test_import_swap_streams_are_recorded_with_usage(sdk_module, records) -> None:
    sdk_module.add("POST", "/chat/completions", usage_aware_stream("chat_stream_gpt4_include_usage"))
    chunks = [normalize(c) for c in _create(topenai, stream=True)]
    plain = [normalize(c) for c in _create(openai, stream=True)]
    assert chunks == plain  # the injected usage chunk is withheld from the caller
    (call,) = records.calls
    assert call.stream and call.stream_end == "complete" and call.usage_source == "response"
    assert sdk_module.bodies[0]["stream_options"] == {"include_usage": True}
    assert "stream_options" not in sdk_module.bodies[1]


def test_settings_are_the_openai_modules_own(sdk_module, records) -> None:
    topenai.api_key = "sk-one"
    assert openai.api_key == "sk-one"
    _create(topenai)
    openai.api_key = "sk-two"  # set on the SDK module: the swapped module reads the same setting
    assert topenai.api_key == "sk-two"
    _create(topenai)
    assert [r.headers["authorization"] for r in sdk_module.requests] == ["Bearer sk-one", "Bearer sk-two"]
    assert len(records.calls) == 2


def test_base_url_changed_after_first_use_is_honoured(sdk_module, records) -> None:
    sdk_module.add("POST", "/chat/completions", usage_aware_stream("chat_stream_gpt4_include_usage"))
    list(_create(topenai, stream=True))
    # A proxy or local server: requests go there, and no stream_options is added to its body.
    topenai.base_url = "http://127.0.0.1:8000/v1/"  # the SDK module client adds no trailing slash
    list(_create(topenai, stream=True))
    first, second = sdk_module.requests
    assert (first.url.host, second.url.host) == ("api.openai.com", "127.0.0.1")
    assert "stream_options" in sdk_module.bodies[0] and "stream_options" not in sdk_module.bodies[1]
    calls = records.calls
    assert len(calls) == 2 and calls[1].usage_source == "estimated"


def test_errors_are_the_sdks_and_recorded(sdk_module, records) -> None:
    sdk_module.routes.clear()  # the fake answers 404
    with pytest.raises(openai.NotFoundError) as tracked_error:
        _create(topenai)
    with pytest.raises(openai.NotFoundError) as plain_error:
        _create(openai)
    assert str(tracked_error.value) == str(plain_error.value)
    (call,) = records.calls
    assert call.status == "error" and call.http_status == 404 and call.error_type == "NotFoundError"


def test_azure_settings_pick_the_azure_module_client(sdk_module, records) -> None:
    topenai.api_type = "azure"
    topenai.azure_endpoint = "https://example-resource.openai.azure.com"
    topenai.api_version = "2024-10-21"
    _create(topenai)
    (call,) = records.calls
    assert call.provider == "azure" and call.model == "gpt-5-nano"
    assert sdk_module.requests[0].url.path == "/openai/deployments/gpt-5-nano/chat/completions"
    assert isinstance(openai._client, openai.AzureOpenAI)


def test_module_reexports_the_sdk() -> None:
    assert topenai.OpenAI is tracked_openai.OpenAI and topenai.Client is tracked_openai.OpenAI
    assert topenai.AsyncOpenAI is tracked_openai.AsyncOpenAI
    assert topenai.AsyncClient is tracked_openai.AsyncOpenAI
    assert topenai.AzureOpenAI is tracked_openai.AzureOpenAI
    assert topenai.AsyncAzureOpenAI is tracked_openai.AsyncAzureOpenAI
    clients = {"OpenAI", "AsyncOpenAI", "AzureOpenAI", "AsyncAzureOpenAI", "Client", "AsyncClient"}
    for name in openai.__all__:
        if name not in clients:
            assert getattr(topenai, name) is getattr(openai, name), name
    assert topenai.types is openai.types and topenai.__version__ == openai.__version__
    assert topenai.NotFoundError is openai.NotFoundError
    resources = _module_client.resource_names()
    assert {"chat", "completions", "embeddings", "responses", "images", "audio"} <= set(resources)
    for name in resources:
        assert getattr(topenai, name) is not getattr(openai, name)
    assert set(resources) | set(openai.__all__) <= set(dir(topenai))
    with pytest.raises(AttributeError):
        topenai.no_such_name  # noqa: B018


# -- the opt-in ---------------------------------------------------------------------------------------


def test_instrument_tracks_the_sdk_module_client_and_nothing_else(sdk_module, records) -> None:
    _create(openai)
    assert records.calls == []
    assert tracked_openai.instrument_module_client() is True
    _create(openai)
    explicit = openai.OpenAI(api_key=API_KEY, http_client=sdk_module.sync_client(), max_retries=0)
    _create(explicit)
    assert len(records.calls) == 1
    assert type(explicit) is openai.OpenAI


def test_instrument_keeps_the_built_client_and_its_resources(sdk_module, records) -> None:
    client = openai._load_client()
    completions = openai.chat.completions  # a resource object bound to the built client
    http = client._client
    tracked_openai.instrument_module_client()
    assert openai._client is client and client._client is http  # same client, same connections
    assert isinstance(client, tracked_openai.OpenAI) and isinstance(client, openai._ModuleClient)
    completions.create(model="gpt-5-nano", messages=MSG)
    assert len(records.calls) == 1


def test_instrument_before_first_use_and_idempotent(sdk_module, records) -> None:
    assert tracked_openai.instrument_module_client() and tracked_openai.instrument_module_client()
    _create(openai)
    client = openai._client
    tracked_bases = [c for c in type(client).__mro__ if c.__module__ == "tracked_openai._module_client"]
    assert len(tracked_bases) == 1  # not wrapped twice
    assert len(records.calls) == 1


def test_uninstrument_restores_the_sdk_classes(sdk_module, records) -> None:
    originals = {n: getattr(openai, n) for n in ("_ModuleClient", "_AzureModuleClient") if hasattr(openai, n)}
    tracked_openai.instrument_module_client()
    _create(openai)
    tracked_openai.uninstrument_module_client()
    tracked_openai.uninstrument_module_client()  # twice is harmless
    assert {n: getattr(openai, n) for n in originals} == originals
    assert type(openai._client) is openai._ModuleClient
    _create(openai)
    assert len(records.calls) == 1
    _create(topenai)  # the import swap keeps tracking on its own
    assert len(records.calls) == 2


def test_import_swap_and_instrument_together_record_each_call_once(sdk_module, records) -> None:
    _create(topenai)
    tracked_openai.instrument_module_client()
    _create(topenai)
    _create(openai)
    assert len(records.calls) == 3
    assert len(sdk_module.requests) == 3


def test_disabled_module_client_is_a_pass_through(sdk_module, records) -> None:
    tracked_openai.instrument_module_client()
    tracked_openai.configure(enabled=False)
    try:
        got = _create(openai), _create(topenai)
    finally:
        tracked_openai.configure(enabled=True)
    assert normalize(got[0]) == normalize(got[1])
    assert records.calls == []


def test_fault_in_our_code_never_breaks_a_module_call(sdk_module, records, monkeypatch) -> None:
    errors: list[BaseException] = []
    from tracked_openai._errors import set_internal_error_hook

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected fault")

    monkeypatch.setattr("tracked_openai._client.begin", boom)
    set_internal_error_hook(errors.append)
    try:
        got = _create(topenai)
    finally:
        set_internal_error_hook(records.internal_errors.append)
    assert normalize(got) == normalize(_create(_plain_result()))
    assert [str(e) for e in errors] == ["injected fault"]
    assert json.loads(sdk_module.requests[0].content)["model"] == "gpt-5-nano"


def test_fault_building_the_view_leaves_the_call_untracked(sdk_module, records, monkeypatch) -> None:
    errors: list[BaseException] = []
    from tracked_openai._errors import set_internal_error_hook

    def boom(base: type) -> type:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(_module_client, "tracked_class", boom)
    set_internal_error_hook(errors.append)
    try:
        got = _create(topenai)
    finally:
        set_internal_error_hook(records.internal_errors.append)
    assert normalize(got) == normalize(_create(_plain_result()))
    assert [str(e) for e in errors] == ["injected fault"]
    assert records.calls == []

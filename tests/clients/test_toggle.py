"""Toggle and never-break-the-host: disabled tracking is a pass-through (zero records, identical
behaviour, no threads); injected faults in our code never change what the caller gets."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import openai
import pytest

import tracked_openai
from tests.helpers.clients import fixture_responder, make_clients, normalize, usage_aware_stream
from tests.helpers.fakeopenai import FakeResponse
from tracked_openai._errors import set_internal_error_hook
from tracked_openai.export import runtime as _runtime
from tracked_openai.sinks import InMemorySink

MSG = [{"role": "user", "content": "Say this is a test"}]
ROOT = Path(__file__).resolve().parents[2]


# -- configure(enabled=False) -----------------------------------------------------------------------


@pytest.fixture
def disabled(records):
    tracked_openai.configure(enabled=False)
    try:
        yield records
    finally:
        tracked_openai.configure(enabled=True)


def test_disabled_means_zero_records_and_identical_behaviour(fake, disabled) -> None:
    fake.add("POST", "/chat/completions", usage_aware_stream("chat_stream_gpt4_include_usage"))
    fake.add("POST", "/responses", fixture_responder("responses_gpt5_mini_reasoning"))
    tracked, plain, plain_fake = make_clients(fake, is_async=False)

    def run(client):
        out = [normalize(c) for c in client.chat.completions.create(model="gpt-4", messages=MSG, stream=True)]
        out.append(normalize(client.responses.create(model="gpt-5-mini", input="x")))
        raw = client.with_raw_response.responses.create(model="gpt-5-mini", input="x")
        out.append(raw.content)
        return out

    with tracked_openai.track("feature_x", "op") as op:
        got = run(tracked)
    assert op is None
    assert got == run(plain)
    # No include_usage injected either: the request bodies are the plain SDK's.
    assert fake.bodies == plain_fake.bodies
    assert disabled.records == []


async def test_disabled_async_and_decorators(fake, disabled) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_gpt5_nano_reasoning"))
    tracked, plain, _ = make_clients(fake, is_async=True)

    @tracked_openai.track("feature_x")
    async def work(client):
        return await client.chat.completions.create(model="gpt-5-nano", messages=MSG)

    def plain_fn():
        return 1

    # Decorating while disabled hands back the function itself.
    assert tracked_openai.track("f")(plain_fn) is plain_fn
    assert normalize(await work(tracked)) == normalize(await work(plain))
    async with tracked_openai.track("feature_y"):
        await tracked.chat.completions.create(model="gpt-5-nano", messages=MSG)
    assert disabled.records == []


def test_disabled_errors_unchanged(fake, disabled) -> None:
    tracked, plain, _ = make_clients(fake, is_async=False)  # no route: the fake answers 404
    excs = []
    for client in (tracked, plain):
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model="gpt-5-nano", messages=MSG)
        excs.append(info.value)
    assert str(excs[0]) == str(excs[1])
    assert disabled.records == []


_SUBPROCESS = textwrap.dedent(
    """
    import json, threading, openai
    import tracked_openai
    from tracked_openai._compat import sdk_http_module
    httpx2 = sdk_http_module()  # httpx on openai 2.x
    from tracked_openai.export import runtime as _runtime

    body = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    seen = []
    def handler(request):
        seen.append(json.loads(request.content))
        return httpx2.Response(200, json=body)
    threads = threading.active_count()
    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    client = tracked_openai.OpenAI(api_key="sk-x", http_client=http)

    def f():
        return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])

    decorated = tracked_openai.track("feat")(f)
    with tracked_openai.track("feat") as op:
        out = decorated()
    from tracked_openai.decorators import track_gpt_text
    g = track_gpt_text("feat", "op")(f)
    g()
    print(json.dumps({
        "enabled": _runtime.settings.enabled,
        "op": op is None,
        "same_function": decorated is f and g is f,
        "content": out.choices[0].message.content,
        "exporter": _runtime._exporter is None,
        "threads_added": threading.active_count() - threads,
        "internal_errors": _runtime.stats()["internal_errors"],
    }))
    """
)


@pytest.mark.parametrize(
    "env",
    [
        {"MLFLOW_ENABLED": "false"},
        {"TRACKED_OPENAI_ENABLED": "0"},
        {"MLFLOW_ENABLED": "true", "TRACKED_OPENAI_ENABLED": "false"},
    ],
    ids=["mlflow-false", "tracked-0", "tracked-wins"],
)
def test_env_toggle_read_at_import(env: dict[str, str]) -> None:
    import json

    clean = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_ENABLED", "TRACKED_OPENAI_ENABLED")}
    out = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {
        "enabled": False,
        "op": True,
        "same_function": True,
        "content": "hi",
        "exporter": True,
        "threads_added": 0,
        "internal_errors": 0,
    }


# -- never break the host --------------------------------------------------------------------------


@pytest.fixture
def faults(records):
    """Collect swallowed internal errors here instead of failing the test."""
    errors: list[BaseException] = []
    set_internal_error_hook(errors.append)
    try:
        yield errors
    finally:
        records.flush()
        set_internal_error_hook(records.internal_errors.append)


def _boom(*args, **kwargs):
    raise RuntimeError("injected fault")


def test_usage_extraction_fault(fake, records, faults, monkeypatch) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_gpt5_nano_reasoning"))
    monkeypatch.setattr("tracked_openai.capture.usage.usage_from_body", _boom)
    tracked, plain, _ = make_clients(fake, is_async=False)
    got = tracked.chat.completions.create(model="gpt-5-nano", messages=MSG)
    assert normalize(got) == normalize(plain.chat.completions.create(model="gpt-5-nano", messages=MSG))
    records.flush()
    assert any("injected fault" in str(e) for e in faults)


def test_stream_observer_fault(fake, records, faults, monkeypatch) -> None:
    fake.add("POST", "/chat/completions", usage_aware_stream("chat_stream_gpt4_include_usage"))
    monkeypatch.setattr("tracked_openai.capture.usage.usage_from_body", _boom)
    monkeypatch.setattr("tracked_openai.capture.sse.usage_from_body", _boom)
    tracked, plain, _ = make_clients(fake, is_async=False)
    kw = dict(model="gpt-4", messages=MSG, stream=True)
    got = [normalize(c) for c in tracked.chat.completions.create(**kw)]
    assert got == [normalize(c) for c in plain.chat.completions.create(**kw)]
    records.flush()
    assert any("injected fault" in str(e) for e in faults)


@pytest.mark.parametrize("stream", [False, True])
def test_submit_fault(fake, records, faults, monkeypatch, stream: bool) -> None:
    fake.add("POST", "/chat/completions", usage_aware_stream("chat_stream_gpt4_include_usage"))
    fake.add("POST", "/responses", fixture_responder("responses_gpt5_mini_reasoning"))
    monkeypatch.setattr("tracked_openai.export.runtime.submit", _boom)
    tracked, plain, _ = make_clients(fake, is_async=False)

    def run(client):
        with tracked_openai.track("f", "op"):
            if stream:
                return [
                    normalize(c)
                    for c in client.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
                ]
            return normalize(client.responses.create(model="gpt-5-mini", input="x"))

    assert run(tracked) == run(plain)
    assert len([e for e in faults if "injected fault" in str(e)]) >= 2  # the call and the operation


def test_begin_fault_falls_back_to_plain_call(fake, records, faults, monkeypatch) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_gpt5_nano_reasoning"))
    monkeypatch.setattr("tracked_openai._client.begin", _boom)
    tracked, plain, plain_fake = make_clients(fake, is_async=False)
    got = tracked.chat.completions.create(model="gpt-5-nano", messages=MSG)
    assert normalize(got) == normalize(plain.chat.completions.create(model="gpt-5-nano", messages=MSG))
    assert fake.bodies == plain_fake.bodies
    assert any("injected fault" in str(e) for e in faults)


async def test_async_fault_in_stream_observer(fake, records, faults, monkeypatch) -> None:
    fake.add("POST", "/responses", fixture_responder("responses_stream_gpt41_nano"))
    monkeypatch.setattr("tracked_openai.capture.sse.apply_body", _boom)
    tracked, plain, _ = make_clients(fake, is_async=True)
    kw = dict(model="gpt-4.1-nano", input="What is 2+2?", stream=True)
    got = [normalize(e) async for e in await tracked.responses.create(**kw)]
    assert got == [normalize(e) async for e in await plain.responses.create(**kw)]
    records.flush()
    assert any("injected fault" in str(e) for e in faults)


def test_bad_usage_shape_is_tolerated(fake, records) -> None:
    # A response whose usage fields have unexpected types: the caller gets the SDK's object and the
    # record simply has no usage (the `records` fixture fails the test on any swallowed error).
    body = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-x",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": "eleven", "completion_tokens": None, "prompt_tokens_details": "n/a"},
    }
    fake.add("POST", "/chat/completions", lambda r: FakeResponse(json_body=body))
    tracked, plain, _ = make_clients(fake, is_async=False)
    got = tracked.chat.completions.create(model="gpt-x", messages=MSG)
    want = plain.chat.completions.create(model="gpt-x", messages=MSG)
    assert got.usage.prompt_tokens == want.usage.prompt_tokens == "eleven"
    (call,) = records.calls
    assert call.status == "success" and call.usage.input_tokens is None
    assert call.response_model == "gpt-x"


class _BrokenSink:
    def __init__(self) -> None:
        self.calls = 0

    def export(self, records) -> None:
        self.calls += 1
        raise RuntimeError("sink down")


def test_sink_export_fault(fake, records, monkeypatch, tmp_path) -> None:
    fake.add("POST", "/chat/completions", fixture_responder("chat_gpt5_nano_reasoning"))
    for key, value in (("retry_attempts", 1), ("retry_initial", 0.01), ("retry_max", 0.01)):
        monkeypatch.setattr(_runtime.settings, key, value, raising=False)
    monkeypatch.setattr(_runtime.settings, "spool_dir", str(tmp_path / "spool"), raising=False)
    broken = _BrokenSink()
    good = InMemorySink()
    tracked_openai.configure(sinks=[broken, good])
    tracked, plain, _ = make_clients(fake, is_async=False)
    with tracked_openai.track("f", "op"):
        got = tracked.chat.completions.create(model="gpt-5-nano", messages=MSG)
    assert normalize(got) == normalize(plain.chat.completions.create(model="gpt-5-nano", messages=MSG))
    tracked_openai.flush(timeout=10)
    assert broken.calls >= 1
    # The healthy sink still got the call and the operation.
    assert {r.kind for r in good.records} == {"call", "operation"}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_observe_fault_keeps_the_record_and_releases_its_operation(
    fake, records, faults, monkeypatch, is_async: bool
) -> None:
    """A fault while installing the stream observer: the caller's stream is untouched, the call
    is still recorded once and its operation is not held back waiting for it."""
    fake.add("POST", "/chat/completions", usage_aware_stream("chat_stream_gpt4_include_usage"))
    monkeypatch.setattr("tracked_openai.capture.observe.make_tee", _boom)
    tracked, plain, _ = make_clients(fake, is_async=is_async)
    kw = dict(model="gpt-4", messages=MSG, stream=True)
    with tracked_openai.track("f", "op"):
        if is_async:
            got = [normalize(c) async for c in await tracked.chat.completions.create(**kw)]
            want = [normalize(c) async for c in await plain.chat.completions.create(**kw)]
        else:
            got = [normalize(c) for c in tracked.chat.completions.create(**kw)]
            want = [normalize(c) for c in plain.chat.completions.create(**kw)]
    assert got == want
    records.flush()
    assert any("injected fault" in str(e) for e in faults)
    (call,) = records.calls
    (op,) = records.operations
    assert call.parent_id == op.record_id and op.call_count == 1


def test_audio_measuring_fault(fake, records, faults, monkeypatch) -> None:
    fake.add("POST", "/audio/transcriptions", fixture_responder("audio_transcription_text"))
    monkeypatch.setattr("tracked_openai.capture.request.capture_upload", _boom)
    tracked, plain, _ = make_clients(fake, is_async=False)
    kw = dict(model="whisper-1", file=("a.wav", b"RIFF....WAVE", "audio/wav"), response_format="text")
    assert tracked.audio.transcriptions.create(**kw) == plain.audio.transcriptions.create(**kw)
    records.flush()
    assert any("injected fault" in str(e) for e in faults)

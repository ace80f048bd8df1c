from __future__ import annotations

from typing import Any

import tracked_openai
from tests.helpers.fakeopenai import FakeOpenAI, FakeResponse


def test_chat_create_records_usage(client: tracked_openai.OpenAI, fake: FakeOpenAI, records) -> None:
    fake.add("POST", "/chat/completions", FakeResponse.from_fixture("chat_gpt5_nano_reasoning"))
    with tracked_openai.track("pid_verification", "diagram_analysis"):
        out = client.chat.completions.create(model="gpt-5-nano", messages=[{"role": "user", "content": "x"}])
    assert out.usage is not None and out.usage.total_tokens == 239
    (call,) = records.calls
    assert call.usage.input_tokens == 11
    assert call.usage.output_tokens == 228
    assert call.usage.reasoning_tokens == 192
    assert call.response_model == "gpt-5-nano-2025-08-07"
    assert call.feature == "pid_verification"
    (op,) = records.operations
    assert op.call_count == 1 and op.usage.output_tokens == 228


def test_every_call_record_gets_its_own_id(client: tracked_openai.OpenAI, fake: FakeOpenAI, records) -> None:
    # A call's id is given when the exporter prepares it, not on the caller's path: every record
    # that reaches a sink must still carry one, distinct from every other, threads included.
    import re
    from concurrent.futures import ThreadPoolExecutor

    fake.add("POST", "/chat/completions", FakeResponse.from_fixture("chat_gpt5_nano_reasoning"))

    def one(_: int) -> None:
        client.chat.completions.create(model="gpt-5-nano", messages=[{"role": "user", "content": "x"}])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(40)))
    with tracked_openai.track("ids", "nested"):
        one(0)
    ids = [c.record_id for c in records.calls]
    assert len(ids) == 41 and len(set(ids)) == 41
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    (op,) = records.operations
    assert op.record_id not in ids and records.calls[-1].parent_id == op.record_id


def test_call_records_are_built_off_the_callers_thread(
    client: tracked_openai.OpenAI, fake: FakeOpenAI, records, monkeypatch
) -> None:
    """A finished call reaches the exporter as it is; its record (thirty-odd fields) is built on
    the exporter thread, so the caller never waits for it, streamed or not."""
    import threading

    import tracked_openai.capture.call as instrument

    built_on: list[int] = []
    real = instrument.CallRecord

    def spy(**fields: Any) -> Any:
        built_on.append(threading.get_ident())
        return real(**fields)

    monkeypatch.setattr(instrument, "CallRecord", spy)
    fake.add("POST", "/chat/completions", FakeResponse.from_fixture("chat_gpt5_nano_reasoning"))
    msgs = [{"role": "user", "content": "x"}]
    client.chat.completions.create(model="gpt-5-nano", messages=msgs)
    with tracked_openai.track("threads", "stream"):
        for _ in client.chat.completions.create(model="gpt-5-nano", messages=msgs, stream=True):
            pass
    calls = records.calls
    assert len(calls) == 2 and all(c.duration_s is not None and c.duration_s > 0 for c in calls)
    assert len(built_on) == 2 and threading.get_ident() not in built_on
    assert calls[1].parent_id == records.operations[0].record_id


def test_a_call_keeps_the_feature_and_tags_it_began_with(
    client: tracked_openai.OpenAI, fake: FakeOpenAI, records
) -> None:
    """The record is built after the call, but from what held when it began: tags the
    operation gains later and a default feature changed later are not the call's."""
    fake.add("POST", "/chat/completions", FakeResponse.from_fixture("chat_gpt5_nano_reasoning"))
    msgs = [{"role": "user", "content": "x"}]
    from tracked_openai.export import runtime as _runtime

    settings = _runtime.settings
    before = settings.default_feature
    try:
        stream = client.chat.completions.create(model="gpt-5-nano", messages=msgs, stream=True)
        tracked_openai.configure(default_feature="changed_later")
        with tracked_openai.track("tagged", "op", team="a") as op:
            inner = client.chat.completions.create(model="gpt-5-nano", messages=msgs, stream=True)
            op.set_tags(step="later")
            list(inner)
        list(stream)
    finally:
        tracked_openai.configure(default_feature=before)
    first, second = sorted(records.calls, key=lambda c: c.started_at)
    assert first.feature == before and first.parent_id is None
    assert second.feature == "tagged" and second.tags == {"team": "a"}
    assert records.operations[0].tags == {"team": "a", "step": "later"}


def test_a_fault_making_the_record_still_exports_what_the_call_knew(
    client: tracked_openai.OpenAI, fake: FakeOpenAI, records, monkeypatch
) -> None:
    """Injected fault: making a finished call into its record fails on the exporter thread. The
    caller is unaffected, the fault is reported, and the record still reaches the sinks with
    what the call knew (and is priced as far as that goes)."""
    import tracked_openai.capture.call as instrument

    def boom(self: Any) -> Any:
        raise RuntimeError("to_record fault")

    monkeypatch.setattr(instrument.Call, "to_record", boom)
    fake.add("POST", "/chat/completions", FakeResponse.from_fixture("chat_gpt5_nano_reasoning"))
    out = client.chat.completions.create(model="gpt-5-nano", messages=[{"role": "user", "content": "x"}])
    assert out.usage is not None and out.usage.total_tokens == 239
    (call,) = records.calls
    assert call.model == "gpt-5-nano" and call.endpoint == "chat.completions" and call.record_id
    assert call.status == "success" and call.usage_source == "none"
    assert [str(e) for e in records.internal_errors] == ["to_record fault"]
    records.internal_errors.clear()  # expected here; the fixture fails tests on any other

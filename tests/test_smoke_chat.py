from __future__ import annotations

import tracked_openai
from tests.fakeopenai import FakeOpenAI, FakeResponse


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

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

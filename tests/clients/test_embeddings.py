"""Drop-in client matrix, embeddings: sync/async x plain/raw/streaming-response (x stream where the API
allows). The caller's value equals a plain `openai` client's for the same bytes; one record each."""

from __future__ import annotations

import pytest

from tests.helpers.cases import EMBEDDINGS
from tests.helpers.clients import Case, case_params, check_case_async, check_case_sync


@pytest.mark.parametrize(("case", "mode"), case_params(EMBEDDINGS))
def test_sync_matches_plain_sdk_and_records_once(case: Case, mode: str, fake, records) -> None:
    check_case_sync(case, mode, fake, records)


@pytest.mark.parametrize(("case", "mode"), case_params(EMBEDDINGS))
async def test_async_matches_plain_sdk_and_records_once(case: Case, mode: str, fake, records) -> None:
    await check_case_async(case, mode, fake, records)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_default_float_encoding_decoded_by_sdk(fake, records, is_async: bool) -> None:
    # Without encoding_format the SDK asks for base64 on the wire and decodes it to floats.
    import base64
    import struct

    from tests.helpers.clients import make_clients, normalize
    from tests.helpers.fakeopenai import FakeResponse

    vec = base64.b64encode(struct.pack("<4f", 0.5, -0.25, 0.125, 1.0)).decode()
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": vec}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    fake.add("POST", "/embeddings", lambda r: FakeResponse(json_body=body))
    tracked, plain, plain_fake = make_clients(fake, is_async=is_async)
    if is_async:
        got = await tracked.embeddings.create(model="text-embedding-3-small", input="hello")
        want = await plain.embeddings.create(model="text-embedding-3-small", input="hello")
    else:
        got = tracked.embeddings.create(model="text-embedding-3-small", input="hello")
        want = plain.embeddings.create(model="text-embedding-3-small", input="hello")
    assert got.data[0].embedding == [0.5, -0.25, 0.125, 1.0]
    assert normalize(got) == normalize(want)
    assert fake.bodies == plain_fake.bodies
    (call,) = records.calls
    assert call.usage.input_tokens == 3 and call.usage.output_tokens is None

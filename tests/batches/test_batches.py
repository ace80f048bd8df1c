"""The Batch API through a tracked client: attribution stored in the batch's metadata, output and
error lines recorded once each at batch rates, never a fault of ours in the caller's way.

Bodies: tests/batches/fake_batch_api.py (shaped as OpenAI's API reference documents them; the
source is cited there). Records are read from memory here; tests/batches/test_store.py reads
them back from a real MLflow store.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest

import tracked_openai
from tests.batches.fake_batch_api import (
    BATCH_ID,
    ERROR_FILE,
    INPUT_FILE,
    MODEL,
    OK_LINES,
    OUTPUT_FILE,
    FakeBatchAPI,
    error_file,
    output_file,
)
from tests.helpers.fakeopenai import API_KEY, FakeOpenAI
from tracked_openai import track
from tracked_openai._config import settings
from tracked_openai.batches import lines, wait, worker
from tracked_openai.batches.lines import BATCH_ID_TAG, CUSTOM_ID_TAG, batch_record_id, record_id_for
from tracked_openai.batches.meta import FEATURE_KEY, OPERATION_KEY, TAGS_KEY
from tracked_openai.testing import TrackedRecords

# Batch rates of gpt-4o-mini (pricing/openai.yaml `tiers: batch`), USD per 1M tokens.
BATCH_IN, BATCH_OUT = Decimal("0.075"), Decimal("0.3")


def line_usd(prompt: int, completion: int) -> Decimal:
    return (prompt * BATCH_IN + completion * BATCH_OUT) / Decimal(1_000_000)


@pytest.fixture(autouse=True)
def fresh_worker() -> Iterator[None]:
    """Each test starts as a new process would: no batch known, no line submitted."""
    worker._known.clear()
    worker._recent.clear()
    yield
    wait(10)
    worker._known.clear()
    worker._recent.clear()


@pytest.fixture
def api(fake: FakeOpenAI) -> FakeBatchAPI:
    return FakeBatchAPI(fake)


def submit_batch(client: tracked_openai.OpenAI, **metadata: str) -> str:
    upload = client.files.create(
        file=("batchinput.jsonl", io.BytesIO(b'{"custom_id": "request-1"}\n')), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **({"metadata": metadata} if metadata else {}),
    )
    return batch.id


def calls_of_batch(records: TrackedRecords) -> list[tracked_openai.CallRecord]:
    wait(30)
    return sorted((c for c in records.calls if c.tags.get(BATCH_ID_TAG)), key=lambda c: c.tags[CUSTOM_ID_TAG])


def test_create_stores_the_attribution_in_the_batch_metadata(
    client: tracked_openai.OpenAI, api: FakeBatchAPI, records: TrackedRecords
) -> None:
    with track("crs_analysis", "nightly_review", team="docs"):
        batch_id = submit_batch(client, customer="acme")
    sent = api.created_bodies[0]["metadata"]
    assert sent == {
        "customer": "acme",
        FEATURE_KEY: "crs_analysis",
        OPERATION_KEY: "nightly_review",
        TAGS_KEY: '{"team":"docs"}',
    }
    # The batch itself is a record: an operation of the feature in force, named by its id.
    (batch_op,) = [op for op in records.operations if op.function == "batches.create"]
    assert batch_op.record_id == batch_record_id(batch_id)
    assert (batch_op.feature, batch_op.operation, batch_op.status) == (
        "crs_analysis",
        "nightly_review",
        "success",
    )
    assert batch_op.tags["team"] == "docs"
    assert batch_op.tags[BATCH_ID_TAG] == BATCH_ID
    assert batch_op.params == {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    enclosing = [op for op in records.operations if op.function != "batches.create"]
    assert batch_op.parent_id == enclosing[0].record_id


def test_the_callers_metadata_keys_win_and_full_metadata_is_sent_as_given(
    client: tracked_openai.OpenAI,
    api: FakeBatchAPI,
    records: TrackedRecords,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with track("crs_analysis", "nightly_review"):
        submit_batch(client, **{FEATURE_KEY: "theirs"})
        full = {f"k{i}": "v" for i in range(16)}
        submit_batch(client, **full)
        submit_batch(client, **full)
    assert api.created_bodies[0]["metadata"] == {FEATURE_KEY: "theirs", OPERATION_KEY: "nightly_review"}
    assert api.created_bodies[1]["metadata"] == full
    assert api.created_bodies[2]["metadata"] == full
    warnings = [r for r in caplog.records if "metadata already has 16 keys" in r.getMessage()]
    assert len(warnings) <= 1  # once per process (an earlier test may have logged it already)


def test_a_tags_value_over_openais_limit_is_left_out(
    client: tracked_openai.OpenAI, api: FakeBatchAPI, records: TrackedRecords
) -> None:
    with track("crs_analysis", "nightly_review", note="x" * 600):
        submit_batch(client)
    sent = api.created_bodies[0]["metadata"]
    assert TAGS_KEY not in sent
    assert all(len(v) <= 512 and len(k) <= 64 for k, v in sent.items())


def test_output_lines_are_priced_at_batch_rates(
    client: tracked_openai.OpenAI, api: FakeBatchAPI, records: TrackedRecords
) -> None:
    with track("crs_analysis", "nightly_review", team="docs"):
        batch_id = submit_batch(client)
    api.complete(batch_id)
    batch = client.batches.retrieve(batch_id)
    assert batch.output_file_id == OUTPUT_FILE
    content = client.files.content(batch.output_file_id)
    assert content.content == output_file()
    calls = calls_of_batch(records)
    assert [c.tags[CUSTOM_ID_TAG] for c in calls] == [cid for cid, _, _ in OK_LINES]
    for call, (custom_id, prompt, completion) in zip(calls, OK_LINES, strict=True):
        assert call.record_id == record_id_for(BATCH_ID, custom_id)
        assert call.parent_id == batch_record_id(BATCH_ID)
        assert (call.feature, call.operation, call.tags["team"]) == ("crs_analysis", "nightly_review", "docs")
        assert (call.endpoint, call.response_model, call.service_tier) == ("chat.completions", MODEL, "batch")
        assert (call.usage.input_tokens, call.usage.output_tokens) == (prompt, completion)
        assert call.cost is not None and call.cost.total_usd == line_usd(prompt, completion)
        assert call.cost_status == "priced" and "tier=batch" in (call.pricing_rule or "")
        assert call.status == "success" and call.http_status == 200
    total = sum((c.cost.total_usd for c in calls if c.cost), Decimal(0))
    assert total == Decimal("0.0053181")  # half of the standard $0.0106362


def test_error_file_lines_are_error_records(
    client: tracked_openai.OpenAI, api: FakeBatchAPI, records: TrackedRecords
) -> None:
    with track("crs_analysis", "nightly_review"):
        batch_id = submit_batch(client)
    api.complete(batch_id)
    client.batches.retrieve(batch_id)
    assert client.files.content(ERROR_FILE).content == error_file()
    bad_request, expired = calls_of_batch(records)
    assert (bad_request.status, bad_request.http_status, bad_request.error_type) == (
        "error",
        400,
        "invalid_request_error",
    )
    assert "max_tokens" in (bad_request.error_message or "")
    assert bad_request.request_ids == ["req_e001"]
    assert (expired.status, expired.error_type, expired.http_status) == ("error", "batch_expired", None)
    for call in (bad_request, expired):
        assert call.cost is None and call.cost_status == "no_usage"
        assert call.feature == "crs_analysis"


def test_a_streamed_download_gives_the_same_bytes_and_the_same_records(
    client: tracked_openai.OpenAI, api: FakeBatchAPI, records: TrackedRecords
) -> None:
    api.add_completed(BATCH_ID, {FEATURE_KEY: "crs_analysis"})
    client.batches.retrieve(BATCH_ID)
    with client.files.with_streaming_response.content(OUTPUT_FILE) as response:
        body = b"".join(response.iter_bytes(chunk_size=333))
    assert body == output_file()
    raw = client.files.with_raw_response.content(OUTPUT_FILE)
    assert raw.content == output_file()
    calls = calls_of_batch(records)
    assert [c.record_id for c in calls] == [record_id_for(BATCH_ID, cid) for cid, _, _ in OK_LINES]


def test_lines_are_attributed_from_the_batch_metadata_in_another_process(
    client: tracked_openai.OpenAI, api: FakeBatchAPI, records: TrackedRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Process A created the batch inside track(): what it stored is all process B has.
    with track("pfd_conversion", "spec_generation", version="2.0"):
        batch_id = submit_batch(client)
    api.complete(batch_id)
    # Process B: new settings, nothing remembered, a client that never saw the batch.
    worker._known.clear()
    worker._recent.clear()
    monkeypatch.setattr(settings, "default_feature", "somewhere_else")
    fake_b = FakeOpenAI()
    fake_b.routes = api.fake.routes
    other = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake_b.sync_client(), max_retries=0)
    other.files.content(OUTPUT_FILE)
    calls = calls_of_batch(records)
    assert len(calls) == 3
    assert {(c.feature, c.operation, c.tags.get("version")) for c in calls} == {
        ("pfd_conversion", "spec_generation", "2.0")
    }
    # Found by listing the batches (the one request made for it, off the caller's thread).
    assert [r.url.path for r in fake_b.requests] == ["/v1/files/file-cvaTdG/content", "/v1/batches"]


def test_a_second_download_in_the_same_process_makes_no_second_record(
    client: tracked_openai.OpenAI, api: FakeBatchAPI, records: TrackedRecords
) -> None:
    api.add_completed(BATCH_ID, {FEATURE_KEY: "crs_analysis"})
    client.batches.retrieve(BATCH_ID)
    client.files.content(OUTPUT_FILE)
    client.files.content(OUTPUT_FILE)
    assert len(calls_of_batch(records)) == 3


def test_other_downloads_are_not_recorded(
    client: tracked_openai.OpenAI, fake: FakeOpenAI, api: FakeBatchAPI, records: TrackedRecords
) -> None:
    input_lines = b'{"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    fake.add("GET", f"/files/{INPUT_FILE}/content", tracked_openai_response(input_lines))
    fake.add("GET", "/files/file-pdf/content", tracked_openai_response(b"%PDF-1.7 ..."))
    assert client.files.content(INPUT_FILE).content == input_lines
    assert client.files.content("file-pdf").content == b"%PDF-1.7 ..."
    assert calls_of_batch(records) == []
    assert not [r for r in fake.requests if r.url.path == "/v1/batches"]  # no lookup for them


def tracked_openai_response(content: bytes) -> object:
    from tests.helpers.fakeopenai import FakeResponse

    return FakeResponse(content=content)


def test_a_fault_in_our_batch_parsing_never_reaches_the_caller(
    client: tracked_openai.OpenAI, api: FakeBatchAPI, records: TrackedRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.add_completed(BATCH_ID, {FEATURE_KEY: "crs_analysis"})
    client.batches.retrieve(BATCH_ID)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected fault in batch parsing")

    monkeypatch.setattr(worker, "line_record", broken)
    assert client.files.content(OUTPUT_FILE).content == output_file()
    with client.files.with_streaming_response.content(OUTPUT_FILE) as response:
        assert response.read() == output_file()
    wait(30)
    monkeypatch.setattr(worker, "end", broken)  # the caller's side of the hand-over fails too
    assert client.files.content(OUTPUT_FILE).content == output_file()
    assert calls_of_batch(records) == []
    faults = [e for e in records.internal_errors if "injected fault" in str(e)]
    assert len(faults) >= 2
    records.internal_errors.clear()  # seen: the fixture would fail the test on them


def test_the_plain_sdk_gets_the_same_answers(
    fake: FakeOpenAI, api: FakeBatchAPI, records: TrackedRecords
) -> None:
    api.add_completed(BATCH_ID, {"customer": "acme"})
    plain = openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    tracked = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    for c in (plain, tracked):
        c.batches.retrieve(BATCH_ID)
    assert tracked.files.content(OUTPUT_FILE).content == plain.files.content(OUTPUT_FILE).content
    assert tracked.batches.retrieve(BATCH_ID) == plain.batches.retrieve(BATCH_ID)
    # A batch created by no tracked client: its lines are calls of the default feature, not nested.
    calls = calls_of_batch(records)
    assert len(calls) == 3 and {(c.feature, c.parent_id) for c in calls} == {(settings.default_feature, None)}


async def test_async_client_download_is_recorded(
    aclient: tracked_openai.AsyncOpenAI, api: FakeBatchAPI, records: TrackedRecords
) -> None:
    api.add_completed(BATCH_ID, {FEATURE_KEY: "crs_analysis"})
    await aclient.batches.retrieve(BATCH_ID)
    content = await aclient.files.content(OUTPUT_FILE)
    assert content.content == output_file()
    async with aclient.files.with_streaming_response.content(ERROR_FILE) as response:
        assert await response.read() == error_file()
    calls = calls_of_batch(records)
    assert len(calls) == 5
    assert sum(c.status == "error" for c in calls) == 2


def test_unknown_batch_is_left_for_collect(
    client: tracked_openai.OpenAI, fake: FakeOpenAI, records: TrackedRecords, caplog: pytest.LogCaptureFixture
) -> None:
    # An output file whose batch the listing does not show: nothing recorded now, said once.
    from tests.helpers.fakeopenai import FakeResponse

    fake.add("GET", "/batches", FakeResponse(json_body={"object": "list", "data": [], "has_more": False}))
    fake.add("GET", f"/files/{OUTPUT_FILE}/content", FakeResponse(content=output_file()))
    with caplog.at_level(logging.WARNING, logger="tracked_openai"):
        assert client.files.content(OUTPUT_FILE).content == output_file()
        assert calls_of_batch(records) == []
    assert any("batches collect" in r.getMessage() for r in caplog.records)


def test_line_record_ids_are_stable() -> None:
    assert record_id_for("batch_1", "a") == record_id_for("batch_1", "a")
    assert record_id_for("batch_1", "a") != record_id_for("batch_2", "a")
    assert len(record_id_for("batch_1", "a")) == 32
    assert lines.is_batch_line({"custom_id": "x", "response": None, "error": {"code": "c"}})
    assert not lines.is_batch_line({"custom_id": "x", "method": "POST", "url": "/v1/x", "body": {}})


def big_output(n: int) -> bytes:
    """An output file of ``n`` lines (about 750 bytes each)."""
    import json

    from tests.batches.fake_batch_api import CREATED, chat_body

    out = []
    for i in range(n):
        body = chat_body(f"doc-{i:05d}", 1_000 + i, 200, CREATED + 60 + i)
        out.append(
            {
                "id": f"batch_req_{i}",
                "custom_id": f"doc-{i:05d}",
                "response": {"status_code": 200, "request_id": f"req_{i}", "body": body},
                "error": None,
            }
        )
    return ("\n".join(json.dumps(line) for line in out) + "\n").encode()


def test_a_long_streamed_download_is_handed_over_in_pieces(
    client: tracked_openai.OpenAI,
    fake: FakeOpenAI,
    api: FakeBatchAPI,
    records: TrackedRecords,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.helpers.fakeopenai import FakeResponse

    handed: list[int] = []
    real_feed = worker.feed

    def spy(job: worker.FileJob, chunks: list[bytes]) -> None:
        handed.append(sum(map(len, chunks)))
        real_feed(job, chunks)

    monkeypatch.setattr(worker, "feed", spy)

    data = big_output(3_000)
    assert len(data) > 2 * 1024 * 1024  # past the tee's 1 MB hand-over twice
    fake.add("GET", f"/files/{OUTPUT_FILE}/content", FakeResponse(content=data, chunk_size=65_536))
    api.add_completed(BATCH_ID, {FEATURE_KEY: "crs_analysis"})
    client.batches.retrieve(BATCH_ID)
    with client.files.with_streaming_response.content(OUTPUT_FILE) as response:
        got = b"".join(response.iter_bytes())
    assert got == data
    assert len(handed) == 2 and min(handed) > 1024 * 1024  # while the caller was still reading
    calls = calls_of_batch(records)
    assert len(calls) == 3_000
    expected = sum((line_usd(1_000 + i, 200) for i in range(3_000)), Decimal(0))
    assert sum((c.cost.total_usd for c in calls if c.cost), Decimal(0)) == expected


def test_a_long_download_that_is_not_json_lines_is_let_go(
    client: tracked_openai.OpenAI, fake: FakeOpenAI, records: TrackedRecords
) -> None:
    from tests.helpers.fakeopenai import FakeResponse

    blob = b"%PDF-1.7\n" + bytes(range(256)) * 8_192  # 2 MB, not JSON lines
    fake.add("GET", "/files/file-pdf/content", FakeResponse(content=blob, chunk_size=65_536))
    with client.files.with_streaming_response.content("file-pdf") as response:
        assert response.read() == blob
    assert calls_of_batch(records) == []
    assert not [r for r in fake.requests if r.url.path == "/v1/batches"]


def test_a_gzip_encoded_download_is_read_decoded(
    client: tracked_openai.OpenAI, fake: FakeOpenAI, api: FakeBatchAPI, records: TrackedRecords
) -> None:
    import gzip

    from tests.helpers.fakeopenai import FakeResponse

    packed = gzip.compress(output_file())
    fake.add(
        "GET",
        f"/files/{OUTPUT_FILE}/content",
        FakeResponse(content=packed, headers={"content-encoding": "gzip"}),
    )
    api.add_completed(BATCH_ID, {FEATURE_KEY: "crs_analysis"})
    client.batches.retrieve(BATCH_ID)
    with client.files.with_streaming_response.content(OUTPUT_FILE) as response:
        assert response.read() == output_file()
    assert client.files.content(OUTPUT_FILE).content == output_file()
    assert len(calls_of_batch(records)) == 3


def test_embeddings_and_responses_lines_are_priced_at_their_batch_rates(
    client: tracked_openai.OpenAI, fake: FakeOpenAI, api: FakeBatchAPI, records: TrackedRecords
) -> None:
    import json

    from tests.helpers.fakeopenai import FakeResponse

    embedding = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0023064255, -0.009327292]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8_000, "total_tokens": 8_000},
    }
    line = {
        "id": "batch_req_e",
        "custom_id": "emb-1",
        "response": {"status_code": 200, "request_id": "req_e", "body": embedding},
        "error": None,
    }
    api.add_completed("batch_emb", {FEATURE_KEY: "crs_analysis"})
    api.batches["batch_emb"].update(endpoint="/v1/embeddings", output_file_id="file-emb", error_file_id=None)
    fake.add("GET", "/files/file-emb/content", FakeResponse(content=json.dumps(line).encode() + b"\n"))
    response_body = {
        "id": "resp_1",
        "object": "response",
        "created_at": 1_765_000_100,
        "status": "completed",
        "model": "gpt-4.1-mini-2025-04-14",
        "output": [],
        "usage": {
            "input_tokens": 10_000,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 2_000,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 12_000,
        },
        "service_tier": "default",
    }
    line2 = {
        "id": "batch_req_r",
        "custom_id": "resp-1",
        "response": {"status_code": 200, "request_id": "req_r", "body": response_body},
        "error": None,
    }
    api.add_completed("batch_resp", {FEATURE_KEY: "crs_analysis"})
    api.batches["batch_resp"].update(endpoint="/v1/responses", output_file_id="file-resp", error_file_id=None)
    fake.add("GET", "/files/file-resp/content", FakeResponse(content=json.dumps(line2).encode() + b"\n"))
    client.batches.list()
    client.files.content("file-emb")
    client.files.content("file-resp")
    by_endpoint = {c.endpoint: c for c in calls_of_batch(records)}
    # text-embedding-3-small batch: $0.01 / 1M; gpt-4.1-mini batch: $0.20 in, $0.80 out / 1M.
    emb, resp = by_endpoint["embeddings"], by_endpoint["responses"]
    assert emb.cost is not None and emb.cost.total_usd == Decimal("0.00008")
    assert resp.cost is not None and resp.cost.total_usd == Decimal("0.0036")
    assert "tier=batch" in (emb.pricing_rule or "") and "tier=batch" in (resp.pricing_rule or "")


def test_raw_and_failed_creates_are_recorded(
    client: tracked_openai.OpenAI, fake: FakeOpenAI, api: FakeBatchAPI, records: TrackedRecords
) -> None:
    from tests.helpers.fakeopenai import FakeResponse

    with track("crs_analysis", "nightly_review"):
        raw = client.batches.with_raw_response.create(
            input_file_id=INPUT_FILE, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert raw.parse().id == BATCH_ID
        fake.add(
            "POST",
            "/batches",
            FakeResponse(
                status=400,
                json_body={
                    "error": {
                        "message": "Invalid 'input_file_id'",
                        "type": "invalid_request_error",
                        "param": "input_file_id",
                        "code": None,
                    }
                },
            ),
        )
        with pytest.raises(openai.BadRequestError):
            client.batches.create(
                input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
            )
    ok, failed = sorted(
        (op for op in records.operations if op.function == "batches.create"),
        key=lambda op: op.status,
        reverse=True,
    )
    assert ok.record_id == batch_record_id(BATCH_ID) and ok.status == "success"
    assert (failed.status, failed.error_type) == ("error", "BadRequestError")
    assert BATCH_ID_TAG not in failed.tags and failed.feature == "crs_analysis"


async def test_an_async_client_finds_an_unknown_batch_with_a_sync_lookup(
    fake: FakeOpenAI, api: FakeBatchAPI, records: TrackedRecords
) -> None:
    # The worker cannot use an async client off its loop: it lists the batches with a plain
    # client of the same key and base URL (here over loopback HTTP, as against OpenAI).
    from tracked_openai._fake_server import FakeOpenAIServer

    api.add_completed(BATCH_ID, {FEATURE_KEY: "pfd_conversion", OPERATION_KEY: "spec_generation"})
    with FakeOpenAIServer(fake=fake) as server:
        aclient = tracked_openai.AsyncOpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0)
        content = await aclient.files.content(OUTPUT_FILE)
        assert content.content == output_file()
        calls = calls_of_batch(records)
        await aclient.close()
    assert len(calls) == 3
    assert {(c.feature, c.operation) for c in calls} == {("pfd_conversion", "spec_generation")}
    assert any(r.url.path == "/v1/batches" for r in fake.requests)


def test_a_forked_child_records_its_own_downloads(
    client: tracked_openai.OpenAI, api: FakeBatchAPI, records: TrackedRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import threading
    import time

    api.add_completed(BATCH_ID, {FEATURE_KEY: "crs_analysis"})
    client.batches.retrieve(BATCH_ID)
    real_handle = worker._handle
    busy = threading.Event()

    def slow(*args: object) -> None:
        busy.set()
        time.sleep(0.5)
        real_handle(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(worker, "_handle", slow)
    client.files.content(ERROR_FILE)
    assert busy.wait(10)  # the parent's worker is in the middle of it when the fork happens
    pid = os.fork()
    if pid == 0:  # the child: a download is handed to a worker of its own, and waited for
        code = 1
        try:
            worker._recent.clear()
            client.files.content(OUTPUT_FILE)
            code = 0 if wait(5) and worker._thread is not None and worker._thread.is_alive() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # 2: the child waited on its parent's work
    assert wait(30)

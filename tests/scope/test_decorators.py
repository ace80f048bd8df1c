"""The AIFlow tracking decorators (``tracked_openai.decorators``) on sync and async functions, success and
failure, with tracked and plain clients."""

from __future__ import annotations

import time

import pytest

from tests.helpers.clients import fixture_responder, make_clients
from tracked_openai.decorators import (
    track_custom_operation,
    track_dalle_generation,
    track_gpt_text,
    track_gpt_vision,
    track_rag_operation,
)

MSG = [{"role": "user", "content": "x"}]


@pytest.fixture
def routes(fake):
    fake.add("POST", "/chat/completions", fixture_responder("chat_gpt5_nano_reasoning"))
    fake.add("POST", "/images/generations", fixture_responder("images_dalle3_generate"))
    return fake


def test_rag_metrics_from_documents_and_scores(records) -> None:
    @track_rag_operation("search", "retrieve")
    def retrieve(query: str) -> dict:
        return {"documents": ["a", "b", "c"], "similarity_scores": [0.2, 0.5, 0.8], "confidence": 0.7}

    assert retrieve("q")["documents"] == ["a", "b", "c"]
    (op,) = records.operations
    assert op.feature == "search" and op.operation == "retrieve"
    assert op.metrics["retrieved_docs_count"] == 3
    assert op.metrics["similarity_min"] == pytest.approx(0.2)
    assert op.metrics["similarity_mean"] == pytest.approx(0.5)
    assert op.metrics["similarity_max"] == pytest.approx(0.8)
    assert op.metrics["confidence_score"] == pytest.approx(0.7)
    assert op.tags.get("tracking_type") == "rag"
    assert op.status == "success"


async def test_rag_metrics_from_scored_docs_async(records) -> None:
    @track_rag_operation("search", "retrieve")
    async def retrieve() -> list:
        return [{"id": 1, "score": 0.9}, {"id": 2, "score": 0.3}]

    await retrieve()
    (op,) = records.operations
    assert op.metrics == {
        "retrieved_docs_count": 2.0,
        "similarity_min": pytest.approx(0.3),
        "similarity_mean": pytest.approx(0.6),
        "similarity_max": pytest.approx(0.9),
    }


def test_rag_without_scores(records) -> None:
    @track_rag_operation("search", "retrieve")
    def retrieve() -> dict:
        return {"docs": ["a"]}

    retrieve()
    (op,) = records.operations
    assert op.metrics == {"retrieved_docs_count": 1.0}


def test_custom_numeric_metrics(records) -> None:
    @track_custom_operation("scoring", "score")
    def score() -> dict:
        return {
            "precision": 0.9,
            "count": 12,
            "label": "ok",
            "confidence": 0.42,
            "flag": True,
            "nan": float("nan"),
        }

    assert score()["label"] == "ok"
    (op,) = records.operations
    assert op.metrics["precision"] == pytest.approx(0.9)
    assert op.metrics["count"] == 12
    assert op.metrics["confidence_score"] == pytest.approx(0.42)
    assert "label" not in op.metrics and "nan" not in op.metrics and "confidence" not in op.metrics
    assert op.tags.get("tracking_type") == "custom"


def test_custom_non_dict_result_has_no_metrics(records) -> None:
    @track_custom_operation("scoring", "score")
    def score() -> list:
        return [1, 2]

    assert score() == [1, 2]
    (op,) = records.operations
    assert op.metrics == {}


@pytest.mark.parametrize("decorator", [track_gpt_vision, track_gpt_text])
def test_gpt_decorators_with_tracked_client(routes, records, decorator) -> None:
    client, _, _ = make_clients(routes, is_async=False)

    @decorator("pid_verification", "diagram_analysis")
    def analyse() -> dict:
        out = client.chat.completions.create(model="gpt-5-nano", messages=MSG)
        return {"answer": out.choices[0].message.content, "confidence_score": 0.88}

    analyse()
    (op,) = records.operations
    (call,) = records.calls
    assert call.parent_id == op.record_id and call.feature == "pid_verification"
    assert call.operation == "diagram_analysis"
    assert op.call_count == 1 and op.usage.output_tokens == 228
    assert op.metrics == {"confidence_score": pytest.approx(0.88)}
    assert op.function.endswith("analyse")


async def test_dalle_decorator_async_default_operation(routes, records) -> None:
    client, _, _ = make_clients(routes, is_async=True)

    @track_dalle_generation("marketing")
    async def draw() -> str:
        out = await client.images.generate(model="dall-e-3", prompt="a cat", size="1024x1024")
        return out.data[0].url

    assert await draw() == "https://example.invalid/img-1.png"
    (op,) = records.operations
    assert op.operation == "image_generation" and op.feature == "marketing"
    assert op.tags.get("tracking_type") == "image_generation"
    (call,) = records.calls
    assert call.endpoint == "images.generate" and call.usage.images == 1 and call.parent_id == op.record_id


@pytest.mark.parametrize(
    "decorator",
    [
        track_gpt_vision("f", "o"),
        track_gpt_text("f", "o"),
        track_dalle_generation("f"),
        track_rag_operation("f", "o"),
        track_custom_operation("f", "o"),
    ],
    ids=["vision", "text", "dalle", "rag", "custom"],
)
def test_sync_failure_recorded_and_reraised(records, decorator) -> None:
    err = RuntimeError("model unavailable")

    @decorator
    def fails() -> None:
        raise err

    with pytest.raises(RuntimeError) as info:
        fails()
    assert info.value is err
    (op,) = records.operations
    assert op.status == "error"
    assert op.error_type == "RuntimeError"
    assert op.error_message == "model unavailable"
    assert "fails" in (op.traceback or "") and "RuntimeError" in (op.traceback or "")
    assert op.metrics == {}
    assert op.duration_s is not None and op.duration_s >= 0


async def test_async_failure_recorded_and_reraised(records) -> None:
    @track_gpt_text("f", "o")
    async def fails() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError):
        await fails()
    (op,) = records.operations
    assert op.status == "error" and op.error_type == "KeyError"


def test_decorator_on_plain_openai_client(routes, records) -> None:
    _, plain, _ = make_clients(routes, is_async=False)

    @track_gpt_text("legacy_feature", "summarize")
    def summarize() -> dict:
        time.sleep(0.01)
        out = plain.chat.completions.create(model="gpt-5-nano", messages=MSG)
        return {"text": out.choices[0].message.content, "confidence": 0.5}

    summarize()
    assert records.calls == []
    (op,) = records.operations
    assert op.status == "success" and op.duration_s >= 0.01
    assert op.call_count == 0 and op.usage.input_tokens is None
    assert op.metrics == {"confidence_score": 0.5}
    assert op.function.endswith("summarize")


async def test_async_decorator_on_plain_openai_client_failure(routes, records) -> None:
    import openai

    _, plain, _ = make_clients(routes, is_async=True)

    @track_gpt_vision("legacy_feature", "look")
    async def look() -> None:
        await plain.chat.completions.create(model="gpt-5-nano", messages=MSG)
        await plain.embeddings.create(model="text-embedding-3-small", input="x")  # no route: 404

    with pytest.raises(openai.NotFoundError):
        await look()
    assert records.calls == []
    (op,) = records.operations
    assert op.status == "error" and op.error_type == "NotFoundError"
    assert op.call_count == 0


@pytest.mark.xfail(
    strict=True,
    reason="design: a function decorated while tracking is disabled is returned undecorated (zero "
    "overhead), so turning tracking on later with configure(enabled=True) never tracks it",
)
def test_enabling_after_decoration_tracks_the_function(records) -> None:
    import tracked_openai

    tracked_openai.configure(enabled=False)
    try:

        @track_custom_operation("late", "op")
        def work() -> dict:
            return {"n": 1}

    finally:
        tracked_openai.configure(enabled=True)
    work()
    (op,) = records.operations
    assert op.metrics == {"n": 1.0}

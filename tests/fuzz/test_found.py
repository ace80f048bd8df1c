"""Cases the fuzz tests found, pinned as plain tests (each names the fix it guards)."""

from __future__ import annotations

from typing import Any

import pytest

from ._wire import Delivery, Server, load_cases, read, request_headers

SSE = load_cases("response_sse")
CONTENT_TYPE = "text/event-stream; charset=utf-8"


@pytest.mark.parametrize("name", ["images_stream_gpt_image_1_n2", "audio_transcription_stream_gpt4o"])
@pytest.mark.parametrize("mode", ["typed", "bytes"])
def test_a_stream_without_done_read_to_its_end_is_complete(name: str, mode: str, records: Any) -> None:
    """Image and transcription streams end with the body, not with [DONE]: read whole, they were
    recorded ``closed_early``."""
    case = SSE[name]
    raw = case["response_sse"].encode()
    out = read(
        True, False, case, Server(lambda r: raw, CONTENT_TYPE, Delivery(), request_headers(case)), mode, {}
    )
    assert out.error is None
    (call,) = records.calls
    assert (call.status, call.stream_end, call.usage_source) == ("success", "complete", "response")


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"data: {not json}\n\n", "JSONDecodeError"),
        (b'data: {"type": "response.created"}\n\ndata: \x80\n\n', "UnicodeDecodeError"),
    ],
    ids=["json", "utf8"],
)
def test_an_error_the_sdk_stream_raises_is_the_records_error(
    body: bytes, error: str, is_async: bool, records: Any
) -> None:
    """The SDK's stream raised on bytes it could not decode; the record said ``success``."""
    case = SSE["responses_stream_gpt4o_2025"]
    out = read(True, is_async, case, Server(lambda r: body, CONTENT_TYPE, Delivery()), "typed", {})
    assert type(out.error).__name__ == error
    (call,) = records.calls
    assert (call.status, call.error_type, call.stream_end) == ("error", error, "error")
    assert call.error_message == str(out.error)


def test_the_callers_own_error_while_reading_is_not_the_calls(records: Any) -> None:
    """An exception of the caller's, raised while it reads a stream inside ``with``, passes the
    closing body on its way out: the call itself did not fail."""
    import tracked_openai

    from ._wire import http

    raw = SSE["responses_stream_gpt4o_2025"]["response_sse"].encode()
    server = Server(lambda r: raw, CONTENT_TYPE, Delivery(cuts=tuple(range(64, len(raw), 64))))
    client = tracked_openai.OpenAI(
        api_key="sk-test",
        max_retries=0,
        http_client=http.Client(transport=http.MockTransport(server.handler)),
    )
    with pytest.raises(KeyError), client.responses.create(model="gpt-4o", input="Hello!", stream=True) as s:
        for _ in s:
            raise KeyError("the caller's")
    (call,) = records.calls
    assert (call.status, call.error_type, call.stream_end) == ("success", None, "closed_early")


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_an_unfinished_event_held_by_the_usage_filter_reaches_the_caller_before_a_reset(
    is_async: bool, records: Any
) -> None:
    """With include_usage injected, bytes of an unfinished event are held until it ends; a
    connection reset then hid them, so the caller got APIConnectionError where the plain SDK
    raises on those bytes (here: not UTF-8)."""
    case = SSE["chat_stream_gpt4_include_usage"]
    body = b"\x80\r"
    tracked = read(
        True, is_async, case, Server(lambda r: body, CONTENT_TYPE, Delivery(reset=True)), "typed", {}
    )
    plain = read(
        False, is_async, case, Server(lambda r: body, CONTENT_TYPE, Delivery(reset=True)), "typed", {}
    )
    assert type(plain.error) is UnicodeDecodeError
    assert type(tracked.error) is type(plain.error)
    (call,) = records.calls
    assert (call.status, call.error_type) == ("error", "UnicodeDecodeError")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "version: v\nmodels:\n  m:\n    source: s\n    input: 1\n    history:\n"
            "      - until: 2024-02-30\n        input: 2\n",
            "prices.yaml:7: models.m.history[0].until: Input should be a valid date or datetime, "
            "day value is outside expected range",
        ),
        ("version: 2024-01-01 25:00:00\nmodels: {}\n", None),  # shaped like a timestamp: a string
        (
            "version: v\nmodels:\n  m: {source: s, input: 1:30.5}\n",
            "prices.yaml:3: models.m.input: Input should be a valid decimal",
        ),
        (
            "version: v\nmodels:\n  m: {source: \x1f}\n",
            "prices.yaml:3: invalid YAML: character #x001f: special characters are not allowed",
        ),
        ("version: v\nmodels: &a\n  m: *a\n", "prices.yaml:3: models.m: refers to itself (a YAML alias)"),
        ("version: " + "[" * 3000 + "\n", "prices.yaml:1: invalid YAML: nested too deeply"),
    ],
    ids=["impossible-date", "timestamp-version", "sexagesimal", "control-char", "recursive-alias", "deep"],
)
def test_price_files_that_raised_other_exceptions(text: str, message: str | None) -> None:
    """Each raised ValueError, decimal.InvalidOperation, yaml ReaderError or RecursionError
    instead of a ``file:line: field: problem`` PricingError."""
    from tracked_openai.pricing import PricingError, parse_price_text

    if message is None:
        assert parse_price_text(text, "prices.yaml").version == "2024-01-01 25:00:00"
        return
    with pytest.raises(PricingError) as info:
        parse_price_text(text, "prices.yaml")
    assert str(info.value) == message


def test_a_422_answer_matches_the_schema_the_app_documents(tmp_path: Any) -> None:
    """The schema documented FastAPI's default 422 body (``detail``: a list); the app sends its
    own envelope (``detail``: a string, ``errors``: the list)."""
    pytest.importorskip("fastapi", reason="the REST API needs the [api] extra")
    jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="installed with schemathesis (dev extra)")
    from starlette.testclient import TestClient

    from tracked_openai.contrib.fastapi import PREFIX, create_app

    app = create_app(tracking_uri=f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}")
    documented = app.openapi()["paths"][f"{PREFIX}/runs/"]["get"]["responses"]["422"]
    with TestClient(app) as api:
        answer = api.get(f"{PREFIX}/runs/", params={"limit": 0})
    assert answer.status_code == 422
    jsonschema_rs.validate(documented["content"]["application/json"]["schema"], answer.json())
    assert isinstance(answer.json()["detail"], str)

"""TrackedOpenAIMiddleware through Django's test clients (sync and async), with real HTTP calls
to the fake OpenAI server and the records read back from memory."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import tracked_openai
from tracked_openai._fake_server import FakeOpenAIServer
from tracked_openai.records import OperationRecord
from tracked_openai.testing import TrackedRecords

from . import views


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_scale=0.0) as s:
        yield s


@pytest.fixture
def openai_clients(server: FakeOpenAIServer, records: TrackedRecords) -> Iterator[None]:
    views.CLIENT = tracked_openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0)
    yield
    views.CLIENT.close()
    views.CLIENT = None


@pytest.fixture
async def async_openai(server: FakeOpenAIServer, records: TrackedRecords) -> AsyncIterator[None]:
    views.ACLIENT = tracked_openai.AsyncOpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0)
    yield
    await views.ACLIENT.close()
    views.ACLIENT = None


@pytest.fixture
def web() -> Any:
    from django.test import Client

    return Client()


@pytest.fixture
def aweb() -> Any:
    from django.test import AsyncClient

    return AsyncClient()


def _request_ops(records: TrackedRecords) -> list[OperationRecord]:
    # Operations the views open inside it inherit its tags (request id...); it has no parent.
    return [op for op in records.operations if op.parent_id is None]


pytestmark = pytest.mark.usefixtures("openai_clients")


def test_decorated_view_one_request_operation_with_its_step(web: Any, records: TrackedRecords) -> None:
    r = web.get("/decorated/", headers={"X-Request-ID": "req-42"})
    assert r.status_code == 200
    (req,) = _request_ops(records)
    assert (req.feature, req.operation) == ("pid_verification", "decorated")
    assert req.tags["django_view"] == "decorated"
    assert req.tags["http_method"] == "GET"
    assert req.tags["http_status"] == "200"
    assert req.tags["request_id"] == "req-42"
    assert "user_id" not in req.tags
    assert req.call_count == 1
    # The decorator's own operation is a step of the same feature inside the request's.
    (step,) = [op for op in records.operations if op is not req]
    assert step.parent_id == req.record_id
    assert step.feature == "pid_verification"
    (call,) = records.calls
    assert call.feature == "pid_verification"


def test_class_based_view_attributes(web: Any, records: TrackedRecords) -> None:
    assert web.post("/class-based/").status_code == 405
    assert web.get("/class-based/").status_code == 200
    ops = _request_ops(records)
    assert [(o.feature, o.operation, o.tags["http_status"]) for o in ops] == [
        ("crs_analysis", "analyze_document", "405"),
        ("crs_analysis", "analyze_document", "200"),
    ]
    assert [o.call_count for o in ops] == [0, 1]
    assert records.calls[0].feature == "crs_analysis"


def test_views_setting_maps_url_names(web: Any, records: TrackedRecords) -> None:
    assert web.get("/reports/7/").status_code == 200
    (req,) = _request_ops(records)
    assert (req.feature, req.operation, req.tags["django_view"]) == (
        "pid_verification",
        "report_detail",
        "report_detail",
    )
    assert req.call_count == 1


def test_undeclared_view_passes_through(web: Any, records: TrackedRecords) -> None:
    assert web.get("/undeclared/").status_code == 200
    assert records.operations == []
    assert records.calls[0].feature == "default"
    assert web.get("/no-such-page/").status_code == 404
    assert records.operations == []


def test_a_failing_view_is_a_500_error_operation(records: TrackedRecords) -> None:
    from django.test import Client

    r = Client(raise_request_exception=False).get("/failing/")
    assert r.status_code == 500
    (req,) = _request_ops(records)
    assert req.status == "error"
    assert req.tags["http_status"] == "500"
    assert req.call_count == 1


def test_request_id_header_is_configurable(settings: Any, web: Any, records: TrackedRecords) -> None:
    settings.TRACKED_OPENAI = {**settings.TRACKED_OPENAI, "request_id_header": "X-Correlation-ID"}
    web.get("/decorated/", headers={"X-Correlation-ID": "corr-1", "X-Request-ID": "ignored"})
    assert _request_ops(records)[0].tags["request_id"] == "corr-1"


@pytest.mark.django_db
@pytest.mark.parametrize("mode", ["id", "hashed"])
def test_user_tag_is_the_id_or_its_hash_never_the_name(
    settings: Any, web: Any, records: TrackedRecords, django_user_model: Any, mode: str
) -> None:
    settings.TRACKED_OPENAI = {**settings.TRACKED_OPENAI, "user": mode}
    user = django_user_model.objects.create_user("alice", email="alice@example.com", password="x")
    web.force_login(user)
    web.get("/decorated/")
    tags = _request_ops(records)[0].tags
    digest = hmac.new(b"tests-only", f"tracked_openai.user:{user.pk}".encode(), hashlib.sha256)
    expected = str(user.pk) if mode == "id" else digest.hexdigest()[:16]
    assert tags["user_id"] == expected
    assert not any("alice" in value for value in tags.values())


@pytest.mark.django_db  # closing a response closes old DB connections
def test_streaming_response_keeps_its_calls(web: Any, records: TrackedRecords) -> None:
    r = web.get("/streaming/")
    assert r.status_code == 200
    text = b"".join(r.streaming_content).decode()
    r.close()
    assert text
    (req,) = _request_ops(records)
    assert req.feature == "visual_generation"
    # Both calls were made while the content was read, after the view had returned.
    assert req.call_count == 2
    assert [c.feature for c in records.calls] == ["visual_generation"] * 2
    assert all(c.parent_id == req.record_id for c in records.calls)


@pytest.mark.django_db
def test_streaming_response_never_read_still_ends_its_operation(web: Any, records: TrackedRecords) -> None:
    r = web.get("/streaming/")
    r.close()
    (req,) = _request_ops(records)
    assert req.call_count == 0
    assert req.status == "success"


@pytest.mark.asyncio
@pytest.mark.usefixtures("async_openai")
async def test_async_view(aweb: Any, records: TrackedRecords) -> None:
    r = await aweb.get("/async/", headers={"X-Request-ID": "a-1"})
    assert r.status_code == 200
    (req,) = _request_ops(records)
    assert (req.feature, req.tags["request_id"], req.tags["http_status"]) == ("pfd_conversion", "a-1", "200")
    assert req.call_count == 1


@pytest.mark.django_db
@pytest.mark.asyncio
@pytest.mark.usefixtures("async_openai")
async def test_async_streaming_response_keeps_its_calls(aweb: Any, records: TrackedRecords) -> None:
    r = await aweb.get("/async-streaming/")
    chunks = [chunk async for chunk in r.streaming_content]
    r.close()
    assert chunks
    (req,) = _request_ops(records)
    assert req.feature == "visual_generation"
    assert req.call_count == 1
    assert records.calls[0].parent_id == req.record_id


@pytest.mark.asyncio
@pytest.mark.usefixtures("async_openai")
async def test_sync_view_under_the_async_handler(aweb: Any, records: TrackedRecords) -> None:
    r = await aweb.get("/class-based/")
    assert r.status_code == 200
    (req,) = _request_ops(records)
    assert (req.feature, req.call_count) == ("crs_analysis", 1)


def test_disabled_tracking_opens_nothing(web: Any, records: TrackedRecords) -> None:
    tracked_openai.configure(enabled=False)
    try:
        assert web.get("/reports/3/").status_code == 200
    finally:
        tracked_openai.configure(enabled=True)
    assert records.records == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.usefixtures("async_openai")
async def test_async_view_user_tag(settings: Any, records: TrackedRecords, django_user_model: Any) -> None:
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    settings.TRACKED_OPENAI = {**settings.TRACKED_OPENAI, "user": "id"}
    user = await sync_to_async(django_user_model.objects.create_user)("bob", password="x")
    aweb = AsyncClient()
    await aweb.aforce_login(user)
    assert (await aweb.get("/async/")).status_code == 200
    (req,) = _request_ops(records)
    assert req.tags["user_id"] == str(user.pk)

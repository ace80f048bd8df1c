from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

os.environ.pop("OPENAI_API_KEY", None)

import tracked_openai
from tests.helpers.fakeopenai import API_KEY, FakeOpenAI
from tracked_openai.testing import TrackedRecords

# No test writes to a default store by accident: tests that need MLflow configure their own sink.
tracked_openai.configure(sinks=[])


# Fixtures that start a real `mlflow server` (tests/mlflow_server.py). A test using one is marked
# `server` even when its module forgot to say so, so `make test-fast` (-m "not server ...") never
# waits for a server.
_SERVER_FIXTURES = frozenset({"mlflow_server", "mlflow_pg_server", "restartable_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


@pytest.fixture
def records(tracked_records: TrackedRecords) -> TrackedRecords:
    """Records of this test (in memory); swallowed internal errors fail the test."""
    return tracked_records


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
def client(fake: FakeOpenAI, records: TrackedRecords) -> Iterator[tracked_openai.OpenAI]:
    c = tracked_openai.OpenAI(api_key=API_KEY, http_client=fake.sync_client(), max_retries=0)
    yield c
    c.close()


@pytest.fixture
async def aclient(fake: FakeOpenAI, records: TrackedRecords) -> AsyncIterator[tracked_openai.AsyncOpenAI]:
    c = tracked_openai.AsyncOpenAI(api_key=API_KEY, http_client=fake.async_client(), max_retries=0)
    yield c
    await c.close()

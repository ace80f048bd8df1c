"""The fake OpenAI endpoint the tests use: tracked-openai's own (``tracked_openai._fake_transport``,
the same one the demo and the examples serve over HTTP), plus the recorded responses kept with
the tests. Real ``openai`` clients talk to it through ``httpx2.MockTransport``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tracked_openai import _fake_transport
from tracked_openai._fake_transport import FakeOpenAI, Responder

__all__ = ["API_KEY", "RECORDED", "FakeOpenAI", "FakeResponse", "Responder", "httpx2", "load_fixture"]

API_KEY = "sk-test-hardcoded"  # hardcoded so a key in the environment is never used

# The SDK's own HTTP library: httpx2 on openai 3.x, httpx (same API) on 2.x.
httpx2 = _fake_transport.httpx2

# Real responses recorded by other public projects (provenance in each file and the README there).
RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "recorded"
# Bodies we wrote from the SDK's types and OpenAI's docs (each says so in its `notes`).
LOCAL_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def load_fixture(name: str) -> dict[str, Any]:
    """A recorded response case by name (``tests/fixtures/recorded`` or ``tests/fixtures``)."""
    for folder in (LOCAL_FIXTURES, RECORDED):
        path = folder / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())
    raise FileNotFoundError(name)


class FakeResponse(_fake_transport.FakeResponse):
    """``tracked_openai._fake_transport.FakeResponse`` that also loads the recorded cases."""

    @classmethod
    def from_fixture(cls, name: str, **kw: Any) -> FakeResponse:
        return cls.from_case(load_fixture(name), **kw)

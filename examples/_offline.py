"""Offline stand-in for api.openai.com, shared by the examples (not part of what you copy).

``offline_openai()`` starts tracked-openai's fake OpenAI-compatible server on a free loopback
port and points the standard environment variables at it (``OPENAI_BASE_URL``,
``OPENAI_API_KEY``, ``AZURE_OPENAI_ENDPOINT``, ...), so each example's code is exactly what you
would write against the real API. Set ``TRACKED_OPENAI_EXAMPLES_LIVE=1`` (and your real
``OPENAI_API_KEY``) to run an example against OpenAI itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from tracked_openai._fake_server import serve_fake_openai

_KEYS = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "OPENAI_API_VERSION")


@contextmanager
def offline_openai() -> Iterator[None]:
    if os.environ.get("TRACKED_OPENAI_EXAMPLES_LIVE") == "1":
        yield
        return
    saved = {key: os.environ.get(key) for key in _KEYS}
    with serve_fake_openai() as server:
        os.environ.update(
            OPENAI_BASE_URL=server.base_url,
            OPENAI_API_KEY="sk-demo",
            AZURE_OPENAI_ENDPOINT=server.azure_endpoint,
            AZURE_OPENAI_API_KEY="sk-demo",
            OPENAI_API_VERSION="2024-10-21",
        )
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

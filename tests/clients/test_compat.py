"""SDK compatibility: the installed openai has every internal the clients hook (the tox matrix runs
this on the oldest, a middle and the newest supported release), and an SDK whose internals moved
gives plain pass-through clients with one warning, never an import error or a broken call."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import openai
import pytest

import tracked_openai
from tracked_openai import _client, _compat

ROOT = Path(__file__).resolve().parents[2]


def test_installed_sdk_has_every_hooked_internal() -> None:
    assert _compat.sdk_problem() is None, openai.__version__
    assert _client.TRACKING and _client.SDK_PROBLEM is None
    # The overrides are in place (a fallback removes them).
    for cls in (tracked_openai.OpenAI, tracked_openai.AsyncOpenAI, tracked_openai.AzureOpenAI):
        assert "request" in vars(cls) and "_send_request" in vars(cls)


def test_http_libraries_follow_the_sdk() -> None:
    expected = "httpx2" if openai.__version__.startswith("3.") else "httpx"
    assert _compat.sdk_http_module().__name__ == expected
    httpx2, httpx = _compat.http_modules()
    # Responses from either library are observed: both are known when installed.
    assert httpx2.__name__ in ("httpx2", "httpx") and (httpx is None or httpx.__name__ == "httpx")
    if expected == "httpx2":
        assert httpx2.__name__ == "httpx2"


# Each scenario changes one internal the way a future SDK might, keeping the SDK itself working,
# before tracked_openai is imported.
_MOVED = {
    # The stream keeps its chunk iterator under another name: hiding the injected usage chunk
    # by replacing ``_iterator`` would no longer work, and the caller would see an extra chunk.
    "stream-iterator": """
        from openai import Stream
        init, nxt = Stream.__init__, Stream.__next__
        def __init__(self, **kw):
            init(self, **kw)
            self._chunks = self.__dict__.pop("_iterator")
        def __next__(self):
            return self._chunks.__next__()
        def __iter__(self):
            for item in self._chunks:
                yield item
        Stream.__init__, Stream.__next__, Stream.__iter__ = __init__, __next__, __iter__
    """,
    # ``request()``'s parameters renamed.
    "request-signature": """
        from openai._base_client import SyncAPIClient
        orig = SyncAPIClient.request
        def request(self, cast_to, final_options, *, stream=False, stream_cls=None):
            return orig(self, cast_to, final_options, stream=stream, stream_cls=stream_cls)
        SyncAPIClient.request = request
    """,
    # ``_send_request()``'s parameters renamed.
    "send-request-signature": """
        orig = openai.OpenAI._send_request
        def _send_request(self, http_request, *, stream, **kwargs):
            return orig(self, http_request, stream=stream, **kwargs)
        openai.OpenAI._send_request = _send_request
    """,
    # A private module the hooks import moved away.
    "module-moved": """
        import sys
        sys.modules["openai._legacy_response"] = None
    """,
}

_SCRIPT = """
import json
import openai
{patch}
import tracked_openai
from tracked_openai._compat import sdk_http_module
from tracked_openai.sinks import InMemorySink

memory = InMemorySink()
tracked_openai.configure(sinks=[memory])
httpx2 = sdk_http_module()
chunk = {{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
          "choices": [{{"index": 0, "delta": {{"content": "hi"}}, "finish_reason": None}}]}}
usage = {{**chunk, "choices": [], "usage": {{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}}}
message = {{"role": "assistant", "content": "hi"}}
body = {{"id": "c", "object": "chat.completion", "created": 1, "model": "m",
         "choices": [{{"index": 0, "finish_reason": "stop", "message": message}}],
         "usage": {{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}}}

MSGS = [{{"role": "user", "content": "x"}}]

def handler(request):
    sent = json.loads(request.content)
    if not sent.get("stream"):
        return httpx2.Response(200, json=body)
    events = [chunk] + ([usage] if (sent.get("stream_options") or {{}}).get("include_usage") else [])
    data = "".join(f"data: {{json.dumps(e)}}\\n\\n" for e in events) + "data: [DONE]\\n\\n"
    return httpx2.Response(200, content=data.encode(), headers={{"content-type": "text/event-stream"}})

def run(client):
    create = client.chat.completions.create
    out = [create(model="m", messages=MSGS).model_dump()]
    out.append([c.model_dump() for c in create(model="m", messages=MSGS, stream=True)])
    return out

http = httpx2.Client(transport=httpx2.MockTransport(handler))
with tracked_openai.track("feat", "op"):
    got = run(tracked_openai.OpenAI(api_key="sk-x", http_client=http, max_retries=0))
want = run(openai.OpenAI(api_key="sk-x", http_client=http, max_retries=0))
instrumented = tracked_openai.instrument_module_client()
import tracked_openai.openai as topenai
topenai.api_key, topenai.http_client = "sk-x", http
module_out = topenai.chat.completions.create(model="m", messages=MSGS).model_dump()
tracked_openai.flush()
print(json.dumps({{
    "same": got == want and module_out == want[0],
    "kinds": sorted(r.kind for r in memory.records),
    "instrumented": instrumented,
    "tracking": tracked_openai._client.TRACKING,
    "internal_errors": tracked_openai.stats()["internal_errors"],
}}))
"""


@pytest.mark.parametrize("scenario", sorted(_MOVED))
def test_moved_internal_gives_a_pass_through_client_and_one_warning(scenario: str) -> None:
    script = _SCRIPT.format(patch=textwrap.dedent(_MOVED[scenario]))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "same": True,  # the caller got exactly what the plain SDK returns, chunks included
        "kinds": ["operation"],  # track() still records the operation; no call records
        "instrumented": False,
        "tracking": False,
        "internal_errors": 0,
    }
    warnings = [line for line in done.stderr.splitlines() if "tracked_openai" in line]
    assert len(warnings) == 1, done.stderr
    assert "is not supported" in warnings[0] and "pass through untracked" in warnings[0]


def test_supported_sdk_in_a_subprocess_records_calls() -> None:
    # The same script with nothing moved: the control for the scenarios above.
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(patch="")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same"] and result["tracking"] and result["instrumented"]
    assert result["kinds"] == ["call", "call", "call", "operation"]
    assert result["internal_errors"] == 0


@pytest.mark.skipif(
    _compat.sdk_http_module().__name__ != "httpx",
    reason="needs an SDK on httpx (openai 2.x: tox -e openai2.31)",
)
def test_sdk_on_httpx_needs_no_httpx2() -> None:
    # openai 2.x installs httpx only; httpx2 is here through a dev dependency, so hide it.
    patch = "import sys\nsys.modules['httpx2'] = None"
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(patch=patch)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same"] and result["tracking"] and result["instrumented"]
    assert result["kinds"] == ["call", "call", "call", "operation"]
    assert result["internal_errors"] == 0

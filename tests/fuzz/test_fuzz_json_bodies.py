"""Non-stream JSON bodies, whole, truncated, mutated, replaced by garbage or by JSON of the wrong
shape (usage members of every type), read as a caller would: the parsed result of ``create``,
``with_raw_response.create(...).parse()``, or ``with_streaming_response``'s bytes (hypothesis).

The caller gets exactly what the plain SDK's caller gets (result or exception, type and message);
one record says what happened: ``error`` when the call raised into the caller (the exception's
type, or the API error the body names), ``success`` when it returned; a raw response is returned
before the caller parses it, so a parse that fails afterwards leaves the record ``success`` (the
call itself succeeded). Nothing is swallowed as an internal error, whatever the body holds.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ._tally import counted, fuzz_settings, outcome
from ._wire import MODES, Delivery, Server, call_for, load_cases, read, request_headers

# Hypothesis properties: make test runs them, make test-fast skips them (README, Development).
pytestmark = pytest.mark.slow

_SUPPORTED = re.compile(
    r"/v1/(chat/completions|completions|responses|embeddings|images/(generations|edits)|audio/(transcriptions|translations))$"
    r"|/openai/deployments/[^/]+/chat/completions$"
)
JSON = {
    name: case for name, case in load_cases("response_body").items() if _SUPPORTED.search(case["endpoint"])
}
CONTENT_TYPE = "application/json"
PROP = "json bodies: whole / truncated / mutated / garbage / wrong-shape usage"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
USAGE_KEYS = [
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "input_tokens",
    "output_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "input_tokens_details",
    "output_tokens_details",
    "cached_tokens",
    "reasoning_tokens",
    "audio_tokens",
    "image_tokens",
    "text_tokens",
    "seconds",
    "type",
]


def _mangle_usage(body: Any, draw: st.DrawFn) -> Any:
    """The body with its usage (and model, service tier) replaced by values of any type."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    target = body["response"] if isinstance(body.get("response"), dict) else body
    how = draw(st.sampled_from(["values", "whole", "drop"]))
    if how == "whole":
        target["usage"] = draw(json_values)
    elif how == "drop":
        target.pop("usage", None)
    else:
        keys = st.sampled_from(USAGE_KEYS)
        target["usage"] = draw(
            st.dictionaries(keys, json_values | st.dictionaries(keys, json_values), max_size=6)
        )
    for key in ("model", "service_tier"):
        if draw(st.booleans()):
            target[key] = draw(json_values)
    return body


@st.composite
def bodies(draw: st.DrawFn, case: dict[str, Any]) -> bytes:
    raw = json.dumps(case["response_body"]).encode()
    how = draw(st.sampled_from(["whole", "truncate", "mutate", "garbage", "json", "usage", "usage"]))
    if how == "whole":
        return raw
    if how == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "garbage":
        return draw(st.binary(max_size=300))
    if how == "json":
        return json.dumps(draw(json_values)).encode()
    if how == "usage":
        return json.dumps(_mangle_usage(case["response_body"], draw)).encode()
    data = raw
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(data)))
        span = draw(st.integers(0, 16))
        data = (
            data[:at]
            + draw(st.binary(max_size=8) | st.sampled_from([b"{", b"}", b"null", b'"', b"\xff"]))
            + data[at + span :]
        )
    return data


def _names(exc: BaseException | None) -> set[str]:
    out = set()
    while exc is not None:
        out.add(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return out


@given(data=st.data())
@fuzz_settings(200)
def test_damaged_json_body_reads_as_the_plain_sdk_and_is_recorded_once(data: Any, records: Any) -> None:
    name = data.draw(st.sampled_from(sorted(JSON)), label="fixture")
    case = JSON[name]
    body = data.draw(bodies(case), label="body")
    mode = data.draw(st.sampled_from(MODES), label="mode")
    is_async = data.draw(st.booleans(), label="async")
    cuts = data.draw(st.lists(st.integers(1, len(body) + 1), max_size=6), label="cuts")
    delivery = Delivery(cuts=tuple(cuts), gzip=data.draw(st.booleans(), label="gzip"))
    with counted(PROP):
        before = len(records.calls)
        headers, status = request_headers(case), case["status"]
        tracked = Server(lambda r: body, CONTENT_TYPE, delivery, headers, status)
        plain = Server(lambda r: body, CONTENT_TYPE, delivery, headers, status)
        got = read(True, is_async, case, tracked, mode, {})
        want = read(False, is_async, case, plain, mode, {})
        assert got.key() == want.key()
        calls = records.calls[before:]
        assert len(calls) == 1, calls
        assert records.internal_errors == [], records.internal_errors
        (call,) = calls
        json.dumps(call.to_dict())
        outcome(PROP, type(got.error).__name__ if got.error else "no error")
        # A typed result is read without its HTTP response: the status is not always known.
        assert call.http_status in (None, status)
        returned = mode == "raw" and status < 400  # the raw response was returned; parse() failed
        if got.error is not None and not returned:
            assert call.status == "error", (call.status, repr(got.error))
            assert call.error_type in _names(got.error) or call.error_type.encode() in body, (
                call.error_type,
                repr(got.error),
            )
        else:
            assert call.status == "success", (call.status, call.error_type, call.error_message)
        if body == json.dumps(case["response_body"]).encode() and status == 200 and got.error is None:
            assert call.usage_source == "response" or "usage" not in body.decode(), call.usage_source


def test_every_supported_fixture_is_drawn_from() -> None:
    """The fixtures the property draws from: every JSON body of an endpoint ``call_for`` covers."""
    assert len(JSON) >= 30
    assert {
        "error_400_dalle2_unknown_param",
        "embeddings_3small_token_ids",
        "chat_azure_gpt35_content_filter",
    } <= set(JSON)
    assert all(case["endpoint"] != "/v1/responses/compact" for case in JSON.values())
    with pytest.raises(LookupError):
        call_for({"endpoint": "/v1/decisions", "request": {}})

"""The budgets' one-frame path for plain chat requests (``_cost.plain_chat_bound``) gives exactly
what the general worst case gives (``_cost._worst_case`` counting bytes as tokens), or declines:
chat requests of text messages in every shape the SDK passes on (roles, unicode and long texts,
output caps of every kind, ``n``, service tiers, tools, names, image parts, unknown models and keys).
A reservation made by one path must hold what the other would have held, or a budget drifts."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tracked_openai.budgets import _cost

from ._tally import counted, fuzz_settings, outcome

PROP = "budgets: plain chat bound = general worst case"

ROLES = st.sampled_from(["system", "user", "user", "assistant", "developer", "tool", "function", "critic"])
TEXTS = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="aé漢🙂 ", min_size=60, max_size=200),
    st.just("word " * 30),
)
COUNTS = st.one_of(st.integers(-2, 5_000), st.integers(0, 50), st.none(), st.sampled_from([True, "12", 1.5]))


@st.composite
def message(draw: st.DrawFn) -> Any:
    shape = draw(st.sampled_from(["plain"] * 12 + ["name", "parts", "image", "odd"]))
    msg: dict[str, Any] = {"role": draw(ROLES), "content": draw(TEXTS)}
    if shape == "name":
        msg["name"] = "bob"
    elif shape == "parts":
        msg["content"] = [{"type": "text", "text": draw(TEXTS)}]
    elif shape == "image":
        msg["content"] = [{"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]
    elif shape == "odd":
        return draw(st.sampled_from([None, "text", {"role": "user"}, {"role": "user", "content": None}]))
    return msg


@st.composite
def chat_request(draw: st.DrawFn) -> tuple[dict[str, Any], str | None]:
    model = draw(
        st.sampled_from(["gpt-4o", "gpt-4o-mini", "gpt-4.1-nano", "o3", "gpt-5", "no-such-model", None])
    )
    request: dict[str, Any] = {"messages": draw(st.lists(message(), max_size=5))}
    if model is not None:
        request["model"] = model
    for key in draw(
        st.sets(st.sampled_from(["max_tokens", "max_completion_tokens", "max_output_tokens", "n"]))
    ):
        request[key] = draw(COUNTS)
    if draw(st.booleans()):
        request["service_tier"] = draw(
            st.sampled_from(["flex", "priority", "default", "batch", "auto", None, 3])
        )
    extra = draw(
        st.sampled_from([None] * 4 + ["temperature", "tools", "response_format", "functions", "unknown"])
    )
    if extra == "temperature":
        request["temperature"] = 0.2
    elif extra in ("tools", "functions"):
        request[extra] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    elif extra == "response_format":
        request[extra] = {"type": "json_object"}
    elif extra == "unknown":
        request["prediction"] = {"type": "content", "content": "x"}
    return request, model


def _general(request: dict[str, Any], model: str | None) -> tuple[int | None, bool]:
    tally = _cost._Tally(False)
    return _cost._worst_case("chat.completions", request, model, "openai", None, tally), not tally.bounded


@given(case=chat_request())
@fuzz_settings(600)
def test_plain_chat_bound_equals_the_general_worst_case(case: tuple[dict[str, Any], str | None]) -> None:
    request, model = case
    with counted(PROP):
        try:
            general: tuple[int | None, bool] | str = _general(request, model)
        except Exception as exc:  # the general path's own answer to a malformed request
            general = type(exc).__name__
        fast = _cost.plain_chat_bound(request, model, "openai")
        if fast is None:
            outcome(PROP, "declined (general path)")
            return
        assert fast == general, (request, model)
        outcome(PROP, "unpriced" if fast[0] is None else ("bounded" if not fast[1] else "exact"))


def test_the_usual_request_takes_the_plain_path() -> None:
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say something short."}]}
    fast = _cost.plain_chat_bound(request, "gpt-4o-mini", "openai")
    assert fast is not None and fast == _general(request, "gpt-4o-mini")
    assert fast[0] is not None and fast[0] > 0 and fast[1] is True

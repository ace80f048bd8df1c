"""Views for the middleware tests. They call a tracked client pointed at the fake OpenAI server
(set by the tests' fixture), so what the middleware records comes from real HTTP calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views import View

from tracked_openai import track

CLIENT: Any = None
ACLIENT: Any = None


def _ask(prompt: str) -> str:
    r = CLIENT.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    return str(r.choices[0].message.content)


@track("pid_verification")
def decorated(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"answer": _ask("check this diagram")})


class ClassBased(View):
    tracked_feature = "crs_analysis"
    tracked_operation = "analyze_document"

    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"answer": _ask("analyze")})


def mapped(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse({"answer": _ask(f"report {pk}")})


def undeclared(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"answer": _ask("nothing declared")})


def failing(request: HttpRequest) -> HttpResponse:
    _ask("before failing")
    raise RuntimeError("view bug")


failing.tracked_feature = "pid_verification"  # type: ignore[attr-defined]


def streaming(request: HttpRequest) -> StreamingHttpResponse:
    def body() -> Iterator[str]:
        # Calls made while the response is read, after the view returned.
        for word in ("one", "two"):
            stream = CLIENT.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": word}], stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

    return StreamingHttpResponse(body(), content_type="text/plain")


streaming.tracked_feature = "visual_generation"  # type: ignore[attr-defined]


@track("pfd_conversion")
async def async_view(request: HttpRequest) -> JsonResponse:
    r = await ACLIENT.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    return JsonResponse({"answer": r.choices[0].message.content})


async def async_streaming(request: HttpRequest) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[str]:
        stream = await ACLIENT.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "stream"}], stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    return StreamingHttpResponse(body(), content_type="text/plain")


async_streaming.tracked_feature = "visual_generation"  # type: ignore[attr-defined]

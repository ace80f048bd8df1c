"""The soak's Django app: one module, served by gunicorn as ``app:application``.

Views call a tracked client against the fake OpenAI server named by ``SOAK_OPENAI_URL`` over real
HTTP, the way an AIFlow app's views do: under ``track`` blocks and the AIFlow decorators. Every
request to OpenAI carries the worker's pid (``X-Soak-Worker``) so the harness can say which
worker a served call belonged to. ``MLFLOW_ENABLED=false`` gives the same app with tracking off.
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    SECRET_KEY="soak-only",
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
)
django.setup()

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

import tracked_openai  # noqa: E402
from tracked_openai import OpenAI, track  # noqa: E402
from tracked_openai.decorators import track_dalle_generation, track_gpt_text  # noqa: E402

_clients: dict[int, OpenAI] = {}


def _client() -> OpenAI:
    # One client per process: gunicorn forks workers, and each needs its own connection pool.
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        client = _clients[pid] = OpenAI(
            api_key="sk-soak",
            base_url=os.environ["SOAK_OPENAI_URL"],
            max_retries=0,
            default_headers={"X-Soak-Worker": str(pid)},
        )
    return client


def _prompt(request: HttpRequest) -> str:
    return request.GET.get("q", "Check the P&ID for missing isolation valves")


def chat(request: HttpRequest) -> JsonResponse:
    with track("pid_verification", "verify_diagram", tags={"tenant": request.GET.get("t", "a")}):
        answer = _client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": _prompt(request)}]
        )
    return JsonResponse({"id": answer.id})


@track_gpt_text("crs_analysis", "summarise_stream")
def _stream_words(prompt: str) -> list[str]:
    stream = _client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], stream=True
    )
    return [c.choices[0].delta.content or "" for c in stream if c.choices]


def stream(request: HttpRequest) -> StreamingHttpResponse:
    words = _stream_words(_prompt(request))
    return StreamingHttpResponse(iter(words), content_type="text/plain")


def embed(request: HttpRequest) -> JsonResponse:
    with track("crs_analysis", "embed_document"):
        result = _client().embeddings.create(model="text-embedding-3-small", input=_prompt(request))
    return JsonResponse({"dims": len(result.data[0].embedding)})


@track_dalle_generation("visual_generation")
def _image(prompt: str) -> Any:
    return _client().images.generate(model="gpt-image-1", prompt=prompt, size="1024x1024")


def image(request: HttpRequest) -> JsonResponse:
    result = _image(_prompt(request))
    return JsonResponse({"images": len(result.data or [])})


def untracked_feature(request: HttpRequest) -> JsonResponse:
    # A call outside any block: it lands in the default feature.
    answer = _client().chat.completions.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": _prompt(request)}]
    )
    return JsonResponse({"id": answer.id})


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True, "pid": os.getpid()})


urlpatterns = [
    path("health", health),
    path("chat", chat),
    path("stream", stream),
    path("embed", embed),
    path("image", image),
    path("plain", untracked_feature),
]

# Started here, in each worker after gunicorn forks it (post_fork in gunicorn.conf.py), so the
# first request does not pay for it; nothing is done in the master.
from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
__all__ = ["application", "tracked_openai"]

"""Cost of TrackedOpenAIMiddleware per request (Django's test client, no OpenAI call, records
to an in-memory sink): a view that declares no feature (passes through: one extra URL resolve)
and one that declares a feature (one operation opened, tagged and submitted), against the same
views without the middleware. Prints medians of N requests.

    .venv/bin/python benchmarks/django_middleware.py [N]
"""

from __future__ import annotations

import statistics
import sys
import time

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path

MIDDLEWARE = "tracked_openai.contrib.django.middleware.TrackedOpenAIMiddleware"


def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def declared(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


declared.tracked_feature = "pid_verification"  # type: ignore[attr-defined]

urlpatterns = [path("plain/", plain, name="plain"), path("declared/", declared, name="declared")]

settings.configure(
    SECRET_KEY="bench",
    ALLOWED_HOSTS=["testserver"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["tracked_openai.contrib.django"],
    MIDDLEWARE=[],
    TRACKED_OPENAI={"start": False},
)
django.setup()

from django.test import Client, override_settings  # noqa: E402

import tracked_openai  # noqa: E402
from tracked_openai.sinks import InMemorySink  # noqa: E402


def median_us(url: str, n: int) -> float:
    client = Client()
    for _ in range(50):
        client.get(url)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.get(url)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    sink = InMemorySink()
    tracked_openai.configure(sinks=[sink])
    rows = []
    for url in ("/plain/", "/declared/"):
        without = median_us(url, n)
        with override_settings(MIDDLEWARE=[MIDDLEWARE]):
            with_mw = median_us(url, n)
        rows.append((url, without, with_mw))
    tracked_openai.flush(timeout=30)
    print(f"{'view':<12} {'without':>10} {'with':>10} {'added':>10}   (median of {n} requests)")
    for url, without, with_mw in rows:
        print(f"{url:<12} {without:>8.0f}us {with_mw:>8.0f}us {with_mw - without:>8.0f}us")
    print(f"operations recorded: {len(sink.operations)}")


if __name__ == "__main__":
    main()

"""Two views that declare their feature: a vision check (``@track``) that queues a Celery task,
and a streamed spec (``tracked_feature``) whose calls happen while the response is read."""

import json

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_POST

from tracked_openai import track

from .openai_client import openai_client
from .tasks import summarize_findings

# A 1x1 PNG: the fake server counts image tokens, the real API looks at it.
PIXEL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGMAAQAABQABDQottAAAAABJRU5ErkJggg=="


@require_POST
@track("pid_verification", "verify_diagram")
def verify_diagram(request: HttpRequest) -> JsonResponse:
    diagram = json.loads(request.body or b"{}").get("diagram", "P&ID-101")
    r = openai_client().chat.completions.create(
        model="gpt-4o",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"List the issues in {diagram}"},
                    {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}},
                ],
            }
        ],
    )
    findings = r.choices[0].message.content or ""
    task = summarize_findings.delay(diagram, findings)  # runs as a child operation of this request's
    return JsonResponse({"diagram": diagram, "findings": findings, "summary_task": task.id})


def generate_spec(request: HttpRequest) -> StreamingHttpResponse:
    def body():
        stream = openai_client().chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Write the pump spec for PFD-7"}],
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    return StreamingHttpResponse(body(), content_type="text/plain")


generate_spec.tracked_feature = "pfd_conversion"
generate_spec.tracked_operation = "generate_spec"

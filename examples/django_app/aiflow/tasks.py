"""A Celery task: queued by a view, it runs as an operation of the view's feature."""

from celery import shared_task

from .openai_client import openai_client


@shared_task(name="aiflow.summarize_findings")
def summarize_findings(diagram: str, findings: str) -> str:
    r = openai_client().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Summarize the findings for {diagram}: {findings}"}],
    )
    return r.choices[0].message.content or ""

"""The Celery app of the Celery tests: imported by the test process (to queue tasks) and by the
real worker it starts (``celery -A tests.celery_worker.app worker``). Its tasks call a tracked
client against the fake OpenAI server named by ``OPENAI_BASE_URL``."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

import tracked_openai
from tracked_openai.contrib.celery import install

BROKER = os.environ.get("TRACKED_OPENAI_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")

app = Celery("tracked_openai_tests", broker=BROKER, backend="rpc://")
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    result_expires=600,
)
install()

_client: tracked_openai.OpenAI | None = None


def _openai() -> tracked_openai.OpenAI:
    # One per worker process, made after the fork.
    global _client
    if _client is None:
        _client = tracked_openai.OpenAI(max_retries=0)
    return _client


def _ask(prompt: str) -> str:
    r = _openai().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    return str(r.choices[0].message.content)


@app.task(name="tests.analyze")
def analyze(prompt: str, hold: float = 0.0) -> dict[str, Any]:
    text = _ask(prompt)
    time.sleep(hold)  # long enough that a prefork pool spreads a batch over its processes
    return {"pid": os.getpid(), "text": text}


@app.task(bind=True, name="tests.flaky", max_retries=5)
def flaky(self: Any, prompt: str, failures: int) -> dict[str, Any]:
    _ask(prompt)  # one call per attempt
    attempt = self.request.retries + 1
    if attempt <= failures:
        raise self.retry(exc=RuntimeError(f"attempt {attempt} failed"), countdown=0)
    return {"attempts": attempt}

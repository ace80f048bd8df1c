"""Where budget alerts go: the ``tracked_openai`` logger, Python callbacks, webhooks.

Callbacks run on the budgets' background thread (an exception in one is logged, never raised).
Webhooks are JSON POSTs sent by their own daemon thread from a bounded queue, each tried up to
``_ATTEMPTS`` times with backoff; a full queue drops and counts. With ``slack=True`` the body is
Slack's incoming-webhook shape (``{"text": ...}``) with the alert's fields alongside.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .._errors import logger

__all__ = ["Alert", "AlertDispatcher"]

_ATTEMPTS = 4
_QUEUE = 1_000


@dataclass(frozen=True)
class Alert:
    """One budget alert: ``threshold`` of ``limit_usd`` was reached in ``window``."""

    budget: str
    scope: str
    window: str
    threshold: float
    spent_usd: str
    limit_usd: str
    action: str
    at: float

    def text(self) -> str:
        return (
            f"tracked_openai budget {self.budget!r} reached {self.threshold * 100:g}% of ${self.limit_usd} "
            f"in {self.window}: ${self.spent_usd} spent ({self.action} budget)"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Hook:
    url: str
    slack: bool = False
    timeout: float = 5.0


class AlertDispatcher:
    def __init__(self, parent: AlertDispatcher | None = None) -> None:
        # ``parent``: the dispatcher of a forked parent, whose destinations the child keeps.
        self.callbacks: list[Callable[[Alert], Any]] = list(parent.callbacks) if parent else []
        self.webhooks: list[_Hook] = list(parent.webhooks) if parent else []
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[tuple[_Hook, Alert]] = queue.Queue(_QUEUE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add_webhook(self, url: str, slack: bool = False, timeout: float = 5.0) -> None:
        self.webhooks.append(_Hook(url, slack, timeout))

    def dispatch(self, alert: Alert) -> None:
        logger.warning("%s", alert.text())
        for callback in list(self.callbacks):
            try:
                callback(alert)
            except Exception as exc:
                logger.warning(
                    "tracked_openai: budget alert callback %r raised %s: %s",
                    callback,
                    type(exc).__name__,
                    exc,
                )
        for hook in self.webhooks:
            try:
                self._queue.put_nowait((hook, alert))
            except queue.Full:
                self.dropped += 1
                continue
            self._ensure_thread()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="tracked-openai-budget-webhooks", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            hook, alert = self._queue.get()
            try:
                self._post(hook, alert)
            finally:
                self._queue.task_done()

    def _post(self, hook: _Hook, alert: Alert) -> None:
        body: dict[str, Any] = alert.as_dict()
        if hook.slack:
            body = {"text": alert.text(), **body}
        import urllib.request

        data = json.dumps(body).encode()
        delay = 0.5
        for attempt in range(_ATTEMPTS):
            try:
                request = urllib.request.Request(
                    hook.url, data=data, method="POST", headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=hook.timeout) as response:
                    if response.status < 300:
                        self.sent += 1
                        return
            except Exception as exc:
                if attempt == _ATTEMPTS - 1:
                    self.failed += 1
                    logger.warning("tracked_openai: budget webhook %s failed: %s", hook.url, exc)
                    return
            time.sleep(delay)
            delay *= 2
        self.failed += 1

    def wait(self, timeout: float) -> bool:
        """Wait for queued webhooks to be sent (tests, exit); whether the queue emptied in time."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

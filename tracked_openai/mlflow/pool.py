"""The MLflow sink's writer threads: a batch's runs are written in parallel, because against
``mlflow server`` the time goes in per-request latency, not in the server's work."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["WriterPool"]


class WriterPool:
    """A few daemon threads running the sink's writes.

    Not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined at interpreter exit,
    before atexit hooks run, so writes queued against a hung server would keep the process
    alive past the exporter's exit deadline (what is unwritten then is spooled anyway).
    """

    def __init__(self, size: int, initializer: Callable[[], None]) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[Any], Any], Any] | None] = (
            queue.SimpleQueue()
        )
        self._initializer = initializer
        self._threads = [
            threading.Thread(target=self._work, name=f"tracked-openai-mlflow-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        self._initializer()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, item = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(item)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, fn, item))
        return future

    def shutdown(self, wait: bool = True) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()

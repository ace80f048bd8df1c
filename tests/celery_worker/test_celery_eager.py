"""The Celery signal handlers in-process (tasks run eagerly: no broker): what ``install()``
records without a worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("celery", reason="the Celery integration needs the [celery] extra")

from tracked_openai import track
from tracked_openai.contrib import celery as tracked_celery
from tracked_openai.testing import TrackedRecords


@pytest.fixture
def eager() -> Iterator[Any]:
    from celery import Celery

    app = Celery("eager-tests", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True

    @app.task(name="tests.eager.double")
    def double(x: int) -> int:
        return 2 * x

    yield double
    tracked_celery.install(track_all=False)


def test_untracked_task_is_not_an_operation_by_default(eager: Any, records: TrackedRecords) -> None:
    tracked_celery.install()
    assert eager.delay(2).get() == 4
    assert records.operations == []


def test_track_all_records_every_task(eager: Any, records: TrackedRecords) -> None:
    tracked_celery.install(track_all=True)
    assert eager.delay(3).get() == 6
    (op,) = records.operations
    assert (op.feature, op.operation) == ("default", "tests.eager.double")
    assert (op.tags["celery_state"], op.tags["celery_attempt"]) == ("SUCCESS", "1")


def test_an_eager_task_inside_a_block_is_a_step_of_it(eager: Any, records: TrackedRecords) -> None:
    tracked_celery.install(track_all=True)
    with track("pid_verification", "verify") as outer:
        assert outer is not None
        eager.delay(4).get()
    task_op, outer_rec = records.operations
    assert outer_rec.record_id == outer.record_id
    assert (task_op.feature, task_op.parent_id) == ("pid_verification", outer.record_id)


def test_uninstall_disconnects(eager: Any, records: TrackedRecords) -> None:
    tracked_celery.install(track_all=True)
    tracked_celery.uninstall()
    try:
        eager.delay(5).get()
        assert records.operations == []
    finally:
        tracked_celery.install()

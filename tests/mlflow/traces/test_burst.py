"""A burst in ``traces`` mode across a crash of the ``mlflow server`` (SIGKILL, restart): every
call is one span afterwards, none twice, read back with MLflow's own ``search_traces``
(``benchmarks/burst_traces.py`` is the 10,000-call version with timings)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.helpers.mlflow_server import MlflowServer, restartable_server  # noqa: F401 - fixture
from tracked_openai.export import runtime as _runtime
from tracked_openai.export.queue import Exporter
from tracked_openai.records import CallRecord, OperationRecord, Record, Usage
from tracked_openai.sinks.modes import mode_sinks

N_CALLS = 500


def _one_call_ops(n: int, feature: str) -> list[Record]:
    out: list[Record] = []
    now = time.time()
    for i in range(n):
        op = OperationRecord(
            started_at=now + i * 1e-4, duration_s=0.3, feature=feature, operation="op", function="f"
        )
        call = CallRecord(
            parent_id=op.record_id,
            started_at=now + i * 1e-4 + 0.01,
            duration_s=0.2,
            feature=feature,
            operation="op",
            function="f",
            endpoint="chat.completions",
            model="gpt-4o-mini",
            response_model="gpt-4o-mini-2024-07-18",
            usage=Usage(input_tokens=100, output_tokens=10),
            usage_source="response",
        )
        op.calls = [call]  # as prepare() does for a tracked operation
        out += [call, op]
    return out


def _call_span_record_ids(uri: str, experiment_id: str) -> tuple[int, list[str]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    traces, ids, token = 0, [], None
    while True:
        # Small pages: the paging itself is part of what is checked.
        page = client.search_traces(locations=[experiment_id], max_results=100, page_token=token)
        for trace in page:
            traces += 1
            ids += [
                str(span.get_attribute("tracked_openai.record_id"))
                for span in trace.data.spans
                if span.get_attribute("tracked_openai.endpoint") is not None
            ]
        token = page.token
        if not token:
            return traces, ids


def test_burst_across_a_server_crash_lands_every_call_once(
    restartable_server: MlflowServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    server = restartable_server
    server.start(timeout=300)  # a loaded machine (2 cores, parallel suites) starts it slowly
    sinks = mode_sinks("traces", server.url, timeout=30)
    feature = f"burst-{time.time_ns()}"
    exp = sinks[0]._runs.experiment_id(feature)
    exporter = Exporter(
        sinks,
        prepare=_runtime.prepare,
        spool_dir=tmp_path / "spool",
        flush_interval=0.05,
        batch_size=64,  # several requests, so the crash lands between (and inside) some
        retry_attempts=3,
        retry_initial=0.05,
        retry_max=0.5,
        exit_hook=False,
    )
    records = _one_call_ops(N_CALLS, feature)
    calls = {r.record_id for r in records if isinstance(r, CallRecord)}

    def written() -> int:
        # Every record delivered, replays from the spool included.
        return exporter.stats()["exported"]

    try:
        for record in records:
            exporter.submit(record)
        deadline = time.monotonic() + 120
        while written() < len(records) // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        at_kill = written()
        server.kill()
        assert 0 < at_kill < len(records), "the crash must fall mid-way through the burst"
        time.sleep(1.0)
        server.start(timeout=300)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            stats = exporter.stats()
            if written() >= len(records) and stats["queued"] == 0 and stats["held"] == 0:
                break
            time.sleep(0.1)
        assert written() == len(records), exporter.stats()
    finally:
        exporter.shutdown(10)
    traces, ids = _call_span_record_ids(server.url, exp)
    assert traces == N_CALLS
    assert len(ids) == N_CALLS  # no call twice
    assert set(ids) == calls  # and none missing

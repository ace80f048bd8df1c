"""``TracesSink`` behind the exporter: records made by the library reach MLflow as traces; a
batch the receiver refuses is split until the refused trace is alone, which is set apart."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import tracked_openai
from tests.helpers.fakeopenai import FakeOpenAI
from tests.helpers.mlflow_server import mlflow_server  # noqa: F401 - fixture
from tracked_openai.mlflow.otlp import RejectedError
from tracked_openai.mlflow.traces import TraceData
from tracked_openai.sinks.traces import TracesSink
from tracked_openai.testing import TrackedRecords

from .helpers import check_traces, make_records, read_traces


@pytest.fixture(params=["embedded", "server-sqlite"])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "embedded":
        yield f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        yield request.getfixturevalue("mlflow_server").url


def test_library_to_traces(uri: str, fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path) -> None:
    sink = TracesSink(uri, experiment_prefix=f"t{tmp_path.name[-6:]}-", timeout=120)
    tracked_openai.configure(sinks=[sink, records.sink], spool_dir=str(tmp_path / "spool"))
    made = make_records(fake, records)
    assert tracked_openai.flush(timeout=120)
    assert tracked_openai.stats().get("spooled", 0) == 0
    for feature in {r.feature for r in made.records}:
        found = read_traces(uri, sink._runs.experiment_id(feature))
        mine = [r for r in made.records if r.feature == feature]
        check_traces(found, type(made)(mine), feature)


class _Refusing:
    """A transport that refuses any request holding one of ``bad`` record ids."""

    def __init__(self, bad: set[str]) -> None:
        self.bad = bad
        self.sent: list[str] = []
        self.requests = 0

    def send(self, experiment_id: str, traces: Sequence[TraceData], *, run_id: str | None = None) -> None:
        self.requests += 1
        if any(set(t.record_ids) & self.bad for t in traces):
            raise RejectedError(400, "INVALID_PARAMETER_VALUE: span attribute too large")
        self.sent.extend(rid for t in traces for rid in t.record_ids)


def test_refused_batch_is_split_and_the_bad_trace_set_apart(
    fake: FakeOpenAI, records: TrackedRecords, tmp_path: Path
) -> None:
    made = make_records(fake, records)
    refund = made.op("refund")
    refund_ids = {refund.record_id, *(c.record_id for c in made.calls_of(refund))}
    sink = TracesSink(f"sqlite:///{tmp_path / 'unused.db'}", rejected_dir=tmp_path / "rejected")
    transport = _Refusing({refund.record_id})
    sink._transport = transport
    sink._runs.experiment_id = lambda feature: "1"  # type: ignore[method-assign]
    sink.export(made.records)
    # Everything but the refused trace was written, once.
    assert sorted(transport.sent) == sorted(
        r.record_id for r in made.records if r.record_id not in refund_ids
    )
    assert sink.rejected == len(refund_ids)
    [kept] = list((tmp_path / "rejected").glob("*.jsonl"))
    header, *lines = kept.read_text().splitlines()
    assert json.loads(header)["rejected"] == "INVALID_PARAMETER_VALUE: span attribute too large"
    assert json.loads(header)["status"] == 400
    assert {json.loads(line)["record_id"] for line in lines} == refund_ids


def test_transient_failure_raises_for_the_exporter(tmp_path: Path) -> None:
    """Connection errors are not 'refused': the exporter must retry and spool them."""

    class Down:
        def send(self, *args: Any, **kwargs: Any) -> None:
            raise ConnectionError("connection refused")

    from tracked_openai.records import CallRecord

    sink = TracesSink(f"sqlite:///{tmp_path / 'unused.db'}", rejected_dir=tmp_path / "rejected")
    sink._transport = Down()
    sink._runs.experiment_id = lambda feature: "1"  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        sink.export([CallRecord(record_id="a" * 32, endpoint="chat.completions")])
    assert not (tmp_path / "rejected").exists()

"""What the default sinks write to MLflow: ``TRACKED_OPENAI_MLFLOW_MODE`` /
``configure(mlflow_mode=...)``.

* ``runs``: today's mapping (an operation is a run, each call inside it a nested run, a call
  outside any operation a run of its own).
* ``traces``: traces only (an operation is a trace, its calls its spans; a call outside any
  operation a one-span trace), in OTLP batches: the fast path through ``mlflow server``.
* ``runs+traces`` (default): operations stay runs with the AIFlow names (the REST API and
  ``log_experiment_result`` users read them), and every call is a span of its operation's trace
  instead of a nested run. A call outside any operation and a late call (finished after its
  operation was written) are still runs too, so reports over runs keep counting them; reports
  count each call once by its record id. Each operation's trace is linked to its run, so
  MLflow's run page lists it.

The link is one ``link_traces_to_run`` request per operation, made by the runs sink's writer
that wrote the run, right after it (the trace id is derived from the record id, so it is known
before the trace is written; MLflow stores the link without checking the trace exists). It
costs the runs path a fourth request per operation run, made in parallel with the other runs'
writes, and nothing on the traces path, whose rate is the one the 10x bar is about. Not the
OTLP ``x-mlflow-run-id`` header: that names one run per request, which would cut the traces'
batches into one request per operation. ``benchmarks/exporter_modes.py`` measures
``runs+traces`` with and without the link.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..mlflow.otlp import OTLP_ENDPOINT_ENV, GenericOtlpTransport
from ..mlflow.store import predicted_spool_key
from ..mlflow.traces import mlflow_trace_id
from ..records import LATE_TAG, CallRecord, OperationRecord, Record
from .mlflow import MlflowSink
from .traces import TracesSink

__all__ = ["OperationRunsSink", "mode_sinks", "mode_spool_keys"]


def _is_span_only(record: Record) -> bool:
    """A call made inside an operation and not late: its operation's trace holds it."""
    return isinstance(record, CallRecord) and record.parent_id is not None and LATE_TAG not in record.tags


class OperationRunsSink(MlflowSink):
    """The runs half of ``runs+traces``: operations (and calls outside any operation, and late
    calls) as runs, each operation's trace linked to its run; calls inside operations are left
    to the traces sink."""

    # Off only to measure what the link costs (benchmarks/exporter_modes.py).
    link_traces = True

    def export(self, records: Sequence[Record]) -> None:
        super().export([r for r in records if not _is_span_only(r)])

    def _write(self, exp_id: str, record: Record, *, existing: Mapping[str, Any]) -> str:
        run_id = super()._write(exp_id, record, existing=existing)
        if self.link_traces and isinstance(record, OperationRecord):
            # On the writer thread that wrote the run: in parallel with the batch's other runs,
            # not one by one on the exporter's thread after all of them. Idempotent (MLflow
            # skips a link it has), so a retried batch may link again.
            self.client._tracking_client.store.link_traces_to_run([mlflow_trace_id(record.record_id)], run_id)
        return run_id

    def _adopt_children(self, exp_id: str, op: Record, run_id: str, linked: int) -> None:
        assert isinstance(op, OperationRecord)
        # Nested operations are still adopted; its calls are spans, not runs to look for.
        super()._adopt_children(exp_id, op, run_id, max(linked, op.call_count))

    def __repr__(self) -> str:
        return f"OperationRunsSink({self.tracking_uri!r})"


def mode_sinks(
    mode: str,
    tracking_uri: str | None = None,
    *,
    timeout: float | None = None,
    features: Mapping[str, str] | None = None,
) -> list[Any]:
    """The sinks a mode writes with (runs sink first: it owns opening a local store)."""
    if mode == "runs":
        return [MlflowSink(tracking_uri, features=features, timeout=timeout)]
    if mode == "traces":
        return [TracesSink(tracking_uri, features=features, timeout=timeout)]
    runs = OperationRunsSink(tracking_uri, features=features, timeout=timeout)
    return [runs, TracesSink(runs=runs)]


def mode_spool_keys(mode: str) -> list[str]:
    """The spool keys :func:`mode_sinks` will have, known without importing MLflow (records
    spooled at exit before the sinks were built are filed under them)."""
    runs_key = predicted_spool_key()
    endpoint = os.environ.get(OTLP_ENDPOINT_ENV, "").strip()
    if endpoint:
        traces_key = f"mlflow-traces:{GenericOtlpTransport(endpoint).url}"
    else:
        traces_key = "mlflow-traces:" + runs_key[len("mlflow:") :]
    if mode == "runs":
        return [runs_key]
    if mode == "traces":
        return [traces_key]
    return [runs_key, traces_key]

"""The traces sink: records as MLflow traces, in batches (see ``tracked_openai/mlflow/traces.py``
for the mapping and ``tracked_openai/mlflow/otlp.py`` for the transports).

One ``export`` = one request per experiment (feature) and per ``max_spans`` spans: OTLP/HTTP to
``mlflow server`` (or to ``TRACKED_OPENAI_OTLP_ENDPOINT``), or one ``log_spans`` transaction on
the embedded store. The exporter gives it the same guarantees as the runs sink (bounded queue,
retry with backoff, spool and replay) under its own spool key, so an outage of one never holds
the other's records back. Ids are derived from record ids, so a retried or replayed batch
overwrites its spans: one trace per operation, whatever the number of attempts.

A batch the receiver refuses as such (4xx: retrying the same bytes fails again) is split in
halves until the refused trace is alone; the rest is written, and the refused records are set
apart in ``<spool>/rejected/`` with the receiver's reason (one JSON-lines file each, header
first), counted, and logged once per reason. Nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._config import settings
from .._errors import logger
from ..mlflow.otlp import EmbeddedTransport, GenericOtlpTransport, MlflowOtlpTransport, RejectedError
from ..mlflow.store import spool_key_for
from ..mlflow.traces import TraceData, traces_of
from ..records import LATE_TAG, CallRecord, OperationRecord, Record

__all__ = ["TracesSink", "traces_spool_key"]

# Spans per request: MLflow's server reads a request whole and stores it in one transaction;
# ~1,000 spans keep a request around a megabyte of protobuf before gzip.
_MAX_SPANS = 1000

# Operation records carry their calls' records (``OperationRecord.calls``, filled when prepared).
_CARRIES = "calls" in OperationRecord.__dataclass_fields__


def traces_spool_key(tracking_uri: str, otlp_url: str | None = None) -> str:
    """The spool key of a ``TracesSink``: its own (never the runs sink's), naming where its
    traces go, so they are only ever replayed there."""
    if otlp_url is not None:
        return f"mlflow-traces:{otlp_url}"
    return "mlflow-traces:" + spool_key_for(tracking_uri)[len("mlflow:") :]


def _rejected_dir() -> Path:
    """``<spool dir>/rejected``: next to the spool, outside what it replays (``*.jsonl`` at its
    top level only)."""
    if settings.spool_dir:
        return Path(settings.spool_dir) / "rejected"
    import platformdirs

    # The spool's default folder (tracked_openai.export.spool.default_spool_dir).
    return Path(platformdirs.user_cache_dir("tracked-openai")) / "spool" / "rejected"


def carried_calls(op: OperationRecord) -> Sequence[CallRecord]:
    """The call records an operation record carries (its own calls, for its trace)."""
    calls = getattr(op, "calls", None)
    return calls if isinstance(calls, list) else ()


class TracesSink:
    """Writes records as MLflow traces (one per operation, one per call outside any operation).

    Args:
        tracking_uri: As for ``MlflowSink`` (default: MLflow's own).
        experiment_prefix: Prepended to every experiment name (default from settings).
        features: Extra ``{feature key: experiment name}`` entries for this sink only.
        timeout: Seconds each request may take (default ``TRACKED_OPENAI_MLFLOW_TIMEOUT``).
        endpoint: Send to this OTLP/HTTP receiver instead of the tracking server (default
            ``TRACKED_OPENAI_OTLP_ENDPOINT``), with ``headers`` (``TRACKED_OPENAI_OTLP_HEADERS``).
            Experiments are still looked up (and created) in the tracking store.
        runs: An ``MlflowSink`` to share the experiment lookups (and its client) with.
        rejected_dir: Where refused records are set apart (default ``<spool dir>/rejected``).
        max_spans: Spans per request.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_prefix: str | None = None,
        features: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
        endpoint: str | None = None,
        headers: Mapping[str, str] | None = None,
        runs: Any = None,
        rejected_dir: str | os.PathLike[str] | None = None,
        max_spans: int = _MAX_SPANS,
    ) -> None:
        if runs is None:
            from .mlflow import MlflowSink

            runs = MlflowSink(tracking_uri, experiment_prefix, features, writers=1, timeout=timeout)
        self._runs = runs
        self.tracking_uri: str = runs.tracking_uri
        self.timeout: float = runs.timeout
        if endpoint is None:
            generic = GenericOtlpTransport.from_env(timeout=self.timeout)
        else:
            generic = GenericOtlpTransport(endpoint, headers, timeout=self.timeout)
        self._generic = generic
        # Its own key: the spool replays traces into traces, runs into runs.
        self.spool_key = traces_spool_key(self.tracking_uri, generic.url if generic is not None else None)
        self._rejected_dir = Path(rejected_dir) if rejected_dir is not None else None
        self.max_spans = max(1, int(max_spans))
        self._transport: Any = None
        self._unsupported = False
        self._lock = threading.Lock()
        self._reasons_logged: set[str] = set()
        self.rejected = 0

    # -- plumbing ------------------------------------------------------------------------------
    def _get_transport(self) -> Any:
        transport = self._transport
        if transport is None:
            if self._generic is not None:
                transport = self._generic
            elif self.tracking_uri.startswith(("http://", "https://")):
                transport = MlflowOtlpTransport(self.tracking_uri, timeout=self.timeout)
            else:
                transport = EmbeddedTransport(self._runs.client._tracking_client.store)
            self._transport = transport
        return transport

    def warm_up(self) -> None:
        """Open the store now (exporter thread), as the runs sink does."""
        self._runs.warm_up()

    def prepare_exit(self, timeout: float) -> None:
        self._runs.prepare_exit(timeout)

    # -- export --------------------------------------------------------------------------------
    def export(self, records: Sequence[Record]) -> None:
        """Write ``records`` as traces; raise on a transient failure (the exporter retries)."""
        if not records or self._unsupported:
            return
        calls_of = {r.record_id: carried_calls(r) for r in records if isinstance(r, OperationRecord)}
        if _CARRIES:
            # A call is written with the operation that carries it (all spans of a trace in one
            # request), so one whose operation is not in this batch waits for it. Late calls
            # are not carried: each joins its operation's trace on its own.
            records = [
                r
                for r in records
                if not (
                    isinstance(r, CallRecord)
                    and r.parent_id is not None
                    and r.parent_id not in calls_of
                    and LATE_TAG not in r.tags
                )
            ]
        by_feature: dict[str, list[TraceData]] = {}
        for trace in traces_of(records, calls_of):
            by_feature.setdefault(trace.feature, []).append(trace)
        index = _index(records)
        for feature, traces in by_feature.items():
            exp_id = self._runs.experiment_id(feature)
            chunk: list[TraceData] = []
            spans = 0
            for trace in traces:
                if chunk and spans + len(trace.spans) > self.max_spans:
                    self._send(exp_id, chunk, index)
                    chunk, spans = [], 0
                chunk.append(trace)
                spans += len(trace.spans)
            if chunk:
                self._send(exp_id, chunk, index)

    def _send(self, exp_id: str, traces: list[TraceData], index: Mapping[str, Record]) -> None:
        try:
            self._get_transport().send(exp_id, traces)
        except NotImplementedError as exc:
            # A store without trace support (a ./mlruns file store): say so once, write nothing.
            self._unsupported = True
            logger.warning("tracked_openai: this MLflow store can't hold traces (%s); traces are off", exc)
        except RejectedError as exc:
            if len(traces) == 1:
                self._set_apart(traces[0], exc, index)
                return
            half = len(traces) // 2
            self._send(exp_id, traces[:half], index)
            self._send(exp_id, traces[half:], index)

    def _set_apart(self, trace: TraceData, exc: RejectedError, index: Mapping[str, Record]) -> None:
        """Keep the records of a refused trace on disk with the reason (never replayed on their
        own: the same spans would be refused again), count and log it."""
        records = [index[rid] for rid in trace.record_ids if rid in index]
        folder = self._rejected_dir
        if folder is None:
            folder = _rejected_dir()
        header = {
            "rejected": exc.reason,
            "status": exc.status,
            "sink": self.spool_key,
            "trace_id": trace.mlflow_trace_id,
            "pid": os.getpid(),
            "at": time.time(),
        }
        lines = [json.dumps(header, separators=(",", ":"))]
        lines.extend(json.dumps(r.to_dict(), separators=(",", ":"), default=str) for r in records)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with self._lock:
            self.rejected += len(records)
            first = exc.reason not in self._reasons_logged
            self._reasons_logged.add(exc.reason)
        if first:
            logger.warning(
                "tracked_openai: the trace receiver refused %d record(s) (%s); set apart in %s",
                len(records),
                exc.reason[:300],
                folder,
            )

    def force_flush(self) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"TracesSink({self._generic.url if self._generic is not None else self.tracking_uri!r})"


def _index(records: Sequence[Record]) -> dict[str, Record]:
    index: dict[str, Record] = {}
    for record in records:
        index[record.record_id] = record
        if isinstance(record, OperationRecord):
            for call in carried_calls(record):
                index.setdefault(call.record_id, call)
    return index

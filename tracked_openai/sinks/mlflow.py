"""The default sink: one MLflow run per record, through ``mlflow.MlflowClient``.

Mapping (the contract reports and the REST API read; see ``docs/mlflow-mapping.md``):

* one experiment per feature, named by the feature registry (``tracked_openai.mlflow.names``), with
  the experiment tag ``tracked_openai.feature=<key>``;
* an operation record is a run; a call is a run whose ``mlflow.parentRunId`` is its operation's
  run (a call is always in its innermost operation's feature); an operation nested in one of
  another feature is top-level in its own experiment, linked by ``parent_record_id`` and
  ``parent_feature`` (MLflow cannot nest across experiments);
* run names ``<operation> · <model(s)> · <short id>`` and ``<endpoint> · <model>``; operations
  carry the ``model`` their calls used; ``mlflow.user``/``mlflow.source.name`` as on MLflow's
  own runs;
* run start/end are the record's real times; status FINISHED (success) or FAILED (error).

Speed: a run costs three requests (``create_run`` with every tag, ``log_batch`` with metrics and
params, ``update_run_info`` to finish it) instead of the fluent API's eight or more, and a
batch's runs are written by a small thread pool, because against ``mlflow server`` the time goes
in per-request latency, not in the server's work. Against embedded SQLite one writer is used:
SQLite serialises writers anyway.

Outages: over HTTP our own requests go through a store of ours that asks MLflow for no retries
and a short timeout (``timeout``, ``TRACKED_OPENAI_MLFLOW_TIMEOUT``), so an unreachable server
fails the export at once and the exporter's retry, spool and replay take over; MLflow's
defaults (7 retries backing off for minutes, 120 s timeouts) and the environment variables that
change them stay as they are for the host application's own MLflow use. Writes run on daemon
threads of ours, never joined at interpreter exit: the exporter's exit deadline bounds them.

Idempotency: before writing a batch, the runs already in the experiment whose start time falls
in the batch's window are read once (one ``search_runs`` per experiment). A record whose
``record_id`` is there and finished is skipped; one left unfinished by an interrupted attempt is
completed instead of duplicated. That holds across retries, spool replays and process restarts
because it asks the store, not process memory; it needs the writers of one record to take turns
(two at once both find nothing and both create a run). The exporter sees to that at exit: it
calls ``stop_writes`` once it has spooled the batch being written, and no other process replays
that batch while this one lives (``export/exit.py``).
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._config import settings
from ..mlflow.names import FEATURE_TAG, RECORD_ID_TAG, experiment_name
from ..mlflow.pool import WriterPool
from ..mlflow.runs import MAX_ENTITIES, MAX_METRICS, MAX_PARAMS, MAX_TAGS, ms, run_fields
from ..mlflow.store import (
    bounded_store,
    client_with_store,
    install_connection_close_provider,
    install_retry_filter,
    spool_key_for,
    writer_state,
)
from ..records import OperationRecord, Record

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["MlflowSink"]

_BAD_KEY = re.compile(r"[^\w\-. /]")
_LRU_SIZE = 50_000
_WINDOW_GAP_MS = 5_000


class _SkippedError(Exception):
    """A write not attempted because another write of the same phase had already failed."""


class _StoppedError(Exception):
    """A write not started because the process is exiting and its batch was spooled."""

    stopped_for_exit = True  # the exporter logs no outage for it


class _Existing:
    __slots__ = ("finished", "run_id")

    def __init__(self, run_id: str, finished: bool) -> None:
        self.run_id = run_id
        self.finished = finished


class MlflowSink:
    """Writes records as MLflow runs (see the module docstring for the mapping).

    Args:
        tracking_uri: Tracking URI; default ``MLFLOW_TRACKING_URI`` or MLflow's own default
            (``sqlite:///mlflow.db`` in the working directory, or ``./mlruns`` if it exists).
        experiment_prefix: Prepended to every experiment name (default from settings).
        features: Extra ``{feature key: experiment name}`` entries for this sink only.
        writers: Concurrent run writers (default 8 over HTTP, 1 for a local SQLite/file store).
        fresh_connections: Over HTTP, open a new connection per request (``Connection: close``)
            instead of reusing keep-alive ones. Off by default: on a settled server it measured
            no faster (``docs/exporter.md``); kept for networks where pooled connections stall.
        timeout: Over HTTP, seconds each of our requests may take (connecting: at most 5);
            our requests make no MLflow-level retries (the exporter retries and spools).
            Default ``TRACKED_OPENAI_MLFLOW_TIMEOUT`` (15 s). The host application's own MLflow
            requests keep MLflow's settings.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_prefix: str | None = None,
        features: Mapping[str, str] | None = None,
        *,
        writers: int | None = None,
        fresh_connections: bool = False,
        timeout: float | None = None,
    ) -> None:
        if timeout is None:
            timeout = settings.mlflow_timeout
        self.timeout = float(timeout)
        if tracking_uri is None:
            import mlflow

            # Reads MLFLOW_TRACKING_URI / mlflow.set_tracking_uri() or MLflow's default; sets nothing.
            tracking_uri = mlflow.get_tracking_uri()
        self.tracking_uri: str = str(tracking_uri)
        self.experiment_prefix = experiment_prefix
        self.features = dict(features or {})
        local = not self.tracking_uri.startswith(("http://", "https://", "databricks"))
        self.writers = max(1, writers if writers is not None else (1 if local else 8))
        self.fresh_connections = fresh_connections and not local
        if self.fresh_connections:
            install_connection_close_provider()
        # The spool replays a record only into the store it was meant for.
        self.spool_key = spool_key_for(self.tracking_uri)
        self._http = self.tracking_uri.startswith(("http://", "https://"))
        # True when our requests could not be bounded (see bounded_store): probe /health first.
        self._probe_health = False
        self._client: MlflowClient | None = None
        self._pool: WriterPool | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        # Held while MLflow opens a local store (see prepare_exit); _closing: open none now.
        self._opening = threading.Lock()
        self._closing = False
        # Set at exit once the batch being written was spooled: no new run is started.
        self._stopped = False
        self._experiments: dict[str, str] = {}
        # record_id -> (experiment_id, run_id) of recently written operations, for nesting calls.
        self._op_runs: OrderedDict[str, tuple[str, str]] = OrderedDict()
        # parent record_id -> [(experiment_id, run_id)] of calls written before their operation.
        self._orphans: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def client(self) -> MlflowClient:
        if self._pid != os.getpid():
            # Forked child: the parent's pool threads don't exist here; HTTP sessions are per pid.
            self._pid = os.getpid()
            self._client = None
            self._pool = None
            self._lock = threading.Lock()
            self._opening = threading.Lock()
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
                client = self._client
        return client

    def _make_client(self) -> MlflowClient:
        from mlflow import MlflowClient

        if self._http:
            install_retry_filter()
            store = bounded_store(self.tracking_uri, self.timeout)
            client = client_with_store(self.tracking_uri, store) if store is not None else None
            if client is not None:
                return client
            self._probe_health = True
            return MlflowClient(tracking_uri=self.tracking_uri)
        with self._opening:
            if self._closing:
                raise RuntimeError("not opening the MLflow store: the process is exiting")
            # For a local store this creates or upgrades its database (MlflowClient opens the
            # store when it is made).
            return MlflowClient(tracking_uri=self.tracking_uri)

    def warm_up(self) -> None:
        """Build the client now (for a local store: open it, creating or upgrading its
        database), so the first export doesn't pay for it. Called by the exporter's worker."""
        self.client  # noqa: B018 - building it is the point

    def prepare_exit(self, timeout: float) -> None:
        """At interpreter exit: open no store from now on, and wait up to ``timeout`` for one
        being opened. MLflow creates or upgrades a SQLite database in several steps that are
        not one transaction; a process stopped half-way leaves a store that no later process
        can write to ("duplicate column name"), so the exit waits for that, even past its
        deadline (only the very first use of a store, and only if the deadline falls there)."""
        self._closing = True
        if self._opening.acquire(timeout=timeout):
            self._opening.release()

    def stop_writes(self) -> None:
        """At exit, once the exporter has spooled the batch being written: start no new write
        (one already started finishes). What is left is replayed by the next process, after
        this one is gone, and a run left unfinished is completed then."""
        self._stopped = True

    def _check_health(self) -> None:
        """One ``GET /health``, no retries, short timeout: fail fast when the server is down
        (used only when our requests could not be bounded, see ``bounded_store``)."""
        import requests

        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            response = requests.get(url, timeout=(min(5.0, self.timeout), self.timeout))
        except requests.RequestException as exc:
            raise ConnectionError(f"MLflow tracking server {self.tracking_uri} unreachable: {exc}") from exc
        if response.status_code >= 500:
            raise ConnectionError(
                f"MLflow tracking server {self.tracking_uri} unhealthy: HTTP {response.status_code}"
            )

    def _init_writer_thread(self) -> None:
        writer_state.fresh_connections = self.fresh_connections
        writer_state.ours = True

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        if self.writers == 1 or len(items) <= 1:
            return [fn(item) for item in items]
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = WriterPool(self.writers, self._init_writer_thread)
                pool = self._pool
        # After a failure the writes not yet started are skipped: the store is likely down, and
        # the whole batch is retried (idempotently) or spooled anyway.
        failed = threading.Event()

        def guarded(item: Any) -> Any:
            if failed.is_set():
                raise _SkippedError()
            try:
                return fn(item)
            except BaseException:
                failed.set()
                raise

        futures = [pool.submit(guarded, item) for item in items]
        errors = []
        results = []
        for future in futures:
            try:
                results.append(future.result())
            except Exception as exc:
                errors.append(exc)
        # Re-raise the first real failure, after every write of this phase has finished.
        real = [e for e in errors if not isinstance(e, _SkippedError)]
        if real or errors:
            raise (real or errors)[0]
        return results

    def experiment_name(self, feature: str) -> str:

        return experiment_name(feature, self.experiment_prefix, self.features)

    def experiment_id(self, feature: str) -> str:
        """The experiment for ``feature``, created (and tagged) if missing, restored if deleted."""
        cached = self._experiments.get(feature)
        if cached is not None:
            return cached
        from mlflow.exceptions import MlflowException

        client = self.client
        name = self.experiment_name(feature)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                exp_id = client.create_experiment(name, tags={FEATURE_TAG: feature})
            except MlflowException:
                # Another writer created it first.
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                exp_id = experiment.experiment_id
        else:
            exp_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(exp_id)
            if experiment.tags.get(FEATURE_TAG) != feature:
                client.set_experiment_tag(exp_id, FEATURE_TAG, feature)
        self._experiments[feature] = exp_id
        return exp_id

    # -- export --------------------------------------------------------------------------------
    def export(self, records: Sequence[Record]) -> None:
        """Write each record as a run; skip (or complete) runs a previous attempt already wrote."""
        if not records:
            return
        # The exporter thread itself also talks to the server (searches, small batches).
        writer_state.fresh_connections = self.fresh_connections
        ours = getattr(writer_state, "ours", False)
        writer_state.ours = True
        try:
            self.client  # noqa: B018 - made first: it decides whether we probe
            if self._probe_health:
                self._check_health()
            self._export(records)
        finally:
            writer_state.ours = ours

    def _export(self, records: Sequence[Record]) -> None:
        by_exp: dict[str, list[Record]] = {}
        for record in records:
            by_exp.setdefault(self.experiment_id(record.feature), []).append(record)
        for exp_id, group in by_exp.items():
            existing = self._existing(exp_id, group)
            ops = [r for r in group if isinstance(r, OperationRecord)]
            calls = [r for r in group if not isinstance(r, OperationRecord)]
            # Operations first so calls of the same batch can name their parent run.
            write = functools.partial(self._write, exp_id, existing=existing)
            run_ids = self._map(write, ops)
            self._map(write, calls)
            written_ops = list(zip(ops, run_ids, strict=True))
            for op, run_id in written_ops:
                in_batch = sum(1 for r in group if r.parent_id == op.record_id)
                self._adopt_children(exp_id, op, run_id, in_batch)

    def _existing(self, exp_id: str, group: Sequence[Record]) -> dict[str, _Existing]:
        """Runs already in ``exp_id`` for these records: one paged search per time window.

        MLflow's search has no ``IN`` for tags, so we ask by start time instead. Start times are
        clustered first (an operation usually started well before the calls of the same batch)
        so a window never spans minutes of someone else's runs.
        """
        starts = sorted({ms(r.started_at) for r in group})
        windows: list[list[int]] = [[starts[0], starts[0]]]
        for start in starts[1:]:
            if start - windows[-1][1] > _WINDOW_GAP_MS:
                windows.append([start, start])
            else:
                windows[-1][1] = start
        wanted = {r.record_id for r in group}
        found: dict[str, _Existing] = {}
        for lo, hi in windows:
            token: str | None = None
            while True:
                page = self.client.search_runs(
                    [exp_id],
                    filter_string=f"attributes.start_time >= {lo} AND attributes.start_time <= {hi}",
                    max_results=1000,
                    page_token=token,
                )
                for run in page:
                    rid = run.data.tags.get(RECORD_ID_TAG)
                    if rid in wanted:
                        found[rid] = _Existing(run.info.run_id, run.info.status != "RUNNING")
                token = page.token
                if not token:
                    break
        return found

    def _write(self, exp_id: str, record: Record, *, existing: Mapping[str, _Existing]) -> str:
        from mlflow.entities import Metric, Param, RunStatus, RunTag

        if self._stopped:
            raise _StoppedError(record.record_id)
        client = self.client
        name, tags, metrics, params = run_fields(record)
        parent = record.parent_id
        if parent is not None:
            known = self._op_runs.get(parent)
            if known is not None and known[0] == exp_id:
                tags["mlflow.parentRunId"] = known[1]
        start = ms(record.started_at)
        end = ms(record.started_at + (record.duration_s or 0.0))
        prior = existing.get(record.record_id)
        if prior is not None and prior.finished:
            run_id = prior.run_id
        else:
            tag_items = list(tags.items())
            if prior is None:
                # record_id goes in with create_run, so the run is findable from its first byte.
                first = dict(tag_items[:MAX_TAGS])
                rest = tag_items[MAX_TAGS:]
                run = client.create_run(exp_id, start_time=start, tags=first, run_name=name)
                run_id = run.info.run_id
            else:
                # An earlier attempt created the run and died before finishing it: complete it.
                run_id = prior.run_id
                rest = tag_items
            metric_list = [Metric(k, v, end, 0) for k, v in metrics.items()]
            param_list = [Param(k, v) for k, v in params.items()]
            tag_list = [RunTag(k, v) for k, v in rest]
            while metric_list or param_list or tag_list:
                p = param_list[:MAX_PARAMS]
                t = tag_list[:MAX_TAGS]
                m = metric_list[: MAX_ENTITIES - len(p) - len(t)][:MAX_METRICS]
                client.log_batch(run_id, metrics=m, params=p, tags=t)
                metric_list = metric_list[len(m) :]
                param_list = param_list[len(p) :]
                tag_list = tag_list[len(t) :]
            status = RunStatus.FINISHED if record.status == "success" else RunStatus.FAILED
            # The store call, not MlflowClient.set_terminated: that one also fetches the run
            # again just to print its URL (one more request per run over HTTP).
            client._tracking_client.store.update_run_info(run_id, status, end, name)
        if isinstance(record, OperationRecord):
            with self._lock:
                self._op_runs[record.record_id] = (exp_id, run_id)
                if len(self._op_runs) > _LRU_SIZE:
                    self._op_runs.popitem(last=False)
        if parent is not None and "mlflow.parentRunId" not in tags:
            with self._lock:
                self._orphans.setdefault(parent, []).append((exp_id, run_id))
                if len(self._orphans) > _LRU_SIZE:
                    self._orphans.popitem(last=False)
        return run_id

    def _adopt_children(self, exp_id: str, op: Record, run_id: str, linked: int) -> None:
        """Nest the runs written before their operation (calls, inner operations) under its run."""
        assert isinstance(op, OperationRecord)
        with self._lock:
            waiting = self._orphans.pop(op.record_id, [])
        client = self.client
        for child_exp, child_run in waiting:
            if child_exp == exp_id:
                client.set_tag(child_run, "mlflow.parentRunId", run_id)
                linked += 1
        if op.call_count > linked:
            # Calls written by another process (before a restart) are only found in the store.
            for run in client.search_runs(
                [exp_id], filter_string=f"tags.parent_record_id = '{op.record_id}'", max_results=1000
            ):
                if run.data.tags.get("mlflow.parentRunId") != run_id:
                    client.set_tag(run.info.run_id, "mlflow.parentRunId", run_id)

    def force_flush(self) -> None:
        return None

    def shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)  # daemon threads: a write hung on a dead server ends on its own

    def __repr__(self) -> str:
        return f"MlflowSink({self.tracking_uri!r})"

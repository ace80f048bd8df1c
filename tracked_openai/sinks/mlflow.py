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
because it asks the store, not process memory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import queue
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .._config import settings
from ..mlflow.names import experiment_name
from ..records import CallRecord, OperationRecord, Record, tag_value

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["MlflowSink", "predicted_spool_key", "run_fields"]

# MLflow server limits per log_batch request and per value (mlflow.utils.validation).
_MAX_METRICS = 1000
_MAX_PARAMS = 100
_MAX_TAGS = 100
_MAX_ENTITIES = 1000
_MAX_TAG_VALUE = 8000
_MAX_PARAM_VALUE = 6000
_MAX_KEY = 250

_BAD_KEY = re.compile(r"[^\w\-. /]")
_LRU_SIZE = 50_000
_WINDOW_GAP_MS = 5_000


_tls = threading.local()
_provider_lock = threading.Lock()
_provider_installed = False
_filter_installed = False


def _on_our_thread() -> bool:
    return bool(getattr(_tls, "ours", False))


class _QuietRetries(logging.Filter):
    """Drops urllib3's "Retrying (Retry(total=…)) after connection broken by …" warnings raised
    by requests made on our threads (an outage would log one per probe). Anyone else's pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _on_our_thread():
            return True
        msg = record.msg if isinstance(record.msg, str) else ""
        return not msg.startswith("Retrying")


def _install_retry_filter() -> None:
    global _filter_installed
    if _filter_installed:
        return
    with _provider_lock:
        if not _filter_installed:
            _filter_installed = True
            logging.getLogger("urllib3.connectionpool").addFilter(_QuietRetries())


def _bounded_store(tracking_uri: str, timeout: float) -> Any | None:
    """A ``RestStore`` for ``tracking_uri`` whose requests make no MLflow-level retries and time
    out after ``timeout`` seconds (connect: at most 5 s); ``None`` if this MLflow's internals
    don't allow it (the sink then probes ``/health`` before writing instead).

    ``RestStore._call_endpoint`` is MLflow's one path for store requests; ours does what it
    does but passes ``max_retries``/``timeout`` to ``http_request`` (which MLflow itself does
    for its own ``/version`` probe) instead of reading them from the process-wide environment.
    """
    try:
        from functools import partial

        from mlflow.store.tracking.rest_store import RestStore
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.proto_json_utils import parse_dict
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        for name in ("_METHOD_TO_INFO", "_V3_METHOD_TO_INFO", "_V3_APIS", "_call_endpoint"):
            if not hasattr(RestStore, name):
                return None
    except Exception:
        return None
    request_timeout = (min(5.0, timeout), timeout)

    class _BoundedRestStore(RestStore):  # type: ignore[misc]
        def _call_endpoint(
            self,
            api: Any,
            json_body: Any = None,
            endpoint: str | None = None,
            retry_timeout_seconds: Any = None,
            response_proto: Any = None,
        ) -> Any:
            method_to_info = self._V3_METHOD_TO_INFO if api in self._V3_APIS else self._METHOD_TO_INFO
            validate = getattr(self, "_validate_workspace_support_if_specified", None)
            if validate is not None:
                validate()
            if endpoint:
                _, method = method_to_info[api]
            else:
                endpoint, method = method_to_info[api]
            response_proto = response_proto or api.Response()
            body = json.loads(json_body) if json_body is not None else None
            payload = {"params": body} if method == "GET" else {"json": body}
            response = http_request(  # type: ignore[no-untyped-call]
                self.get_host_creds(),
                endpoint,
                method,
                max_retries=0,
                backoff_factor=0,
                timeout=request_timeout,
                **payload,
            )
            response = verify_rest_response(response, endpoint)
            if response.status_code == 204:
                return response_proto
            parse_dict(js_dict=json.loads(response.text), message=response_proto)  # type: ignore[no-untyped-call]
            return response_proto

    try:
        return _BoundedRestStore(partial(get_default_host_creds, tracking_uri))  # type: ignore[no-untyped-call]
    except Exception:
        return None


def _client_with_store(tracking_uri: str, store: Any) -> MlflowClient | None:
    """An ``MlflowClient`` whose tracking requests go to ``store`` (MLflow caches one store per
    URI and shares it with the host application's clients: ours must be our own)."""
    try:
        from mlflow import MlflowClient
        from mlflow.tracking._tracking_service.client import TrackingServiceClient

        class _OwnStoreClient(TrackingServiceClient):  # type: ignore[misc]
            def __init__(self, uri: str) -> None:
                self._own_store = store
                super().__init__(uri)  # type: ignore[no-untyped-call]

            @property
            def store(self) -> Any:
                return self._own_store

        client = MlflowClient(tracking_uri=tracking_uri)
        if not hasattr(client, "_tracking_client"):
            return None
        client._tracking_client = _OwnStoreClient(tracking_uri)
        return client
    except Exception:
        return None


def _default_tracking_uri() -> str:
    """What ``mlflow.get_tracking_uri()`` returns, without importing MLflow if it isn't imported
    yet: MLflow 3's rule (``MLFLOW_TRACKING_URI``, else ``./mlruns`` if it holds experiment
    data, else ``mlflow.db`` in the working directory). ``tests/test_mlflow_faults.py`` checks it
    against MLflow's own answer."""
    mlflow = sys.modules.get("mlflow")
    get = getattr(mlflow, "get_tracking_uri", None)
    if get is not None:  # imported: it may have been set in code (mlflow.set_tracking_uri)
        return str(get())
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    try:
        with os.scandir("mlruns") as entries:
            has_runs = any(
                e.is_dir() and e.name.isdigit() and os.path.lexists(os.path.join(e.path, "meta.yaml"))
                for e in entries
            )
    except OSError:
        has_runs = False
    if has_runs:
        from pathlib import Path

        return Path(os.path.abspath("mlruns")).as_uri()
    import posixpath
    from urllib.request import pathname2url

    path = posixpath.abspath(pathname2url(os.path.abspath("mlflow.db")))
    return ("sqlite://" if sys.platform == "win32" else "sqlite:///") + path


def predicted_spool_key(tracking_uri: str | None = None) -> str:
    """The ``spool_key`` an ``MlflowSink(tracking_uri)`` will have, known without importing
    MLflow: records spooled at interpreter exit before the default sink was built (MLflow still
    importing) are filed under it, and replayed once a later process builds that sink."""
    return f"mlflow:{MlflowSink._absolute_uri(tracking_uri or _default_tracking_uri())}"


class _SkippedError(Exception):
    """A write not attempted because another write of the same phase had already failed."""


class _WriterPool:
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


def _install_connection_close_provider() -> None:
    """Register (once) a request-header provider that adds ``Connection: close`` to the MLflow
    requests made on our writer threads only.

    Why it exists: a reused keep-alive connection to ``mlflow server`` once measured ~45 ms per
    request against ~3-8 ms fresh. Re-measured on a server whose processes had finished starting,
    both cost the same, so it is opt-in (``MlflowSink(fresh_connections=True)``). MLflow has no
    per-client connection option; request-header providers are its plugin point for headers, and
    ``in_context()`` scopes this one to threads that set the flag, so the host application's own
    MLflow traffic is untouched.
    """
    global _provider_installed
    if _provider_installed:
        return
    with _provider_lock:
        if _provider_installed:
            return
        _provider_installed = True
        try:
            from mlflow.tracking.request_header.abstract_request_header_provider import (
                RequestHeaderProvider,
            )
            from mlflow.tracking.request_header.registry import _request_header_provider_registry

            class _ConnectionClose(RequestHeaderProvider):  # type: ignore[misc]
                def in_context(self) -> bool:
                    return bool(getattr(_tls, "fresh_connections", False))

                def request_headers(self) -> dict[str, str]:
                    return {"Connection": "close"}

            _request_header_provider_registry.register(_ConnectionClose)  # type: ignore[no-untyped-call]
        except Exception:  # an MLflow without the registry: keep-alive it is (slower, still correct)
            pass


def _key(name: str) -> str:
    # MLflow accepts alphanumerics, underscores, dashes, periods, spaces and slashes in keys.
    return _BAD_KEY.sub("_", str(name))[:_MAX_KEY] or "_"


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


# Usage kinds a response reports as 0 when they do not apply (a text chat says "0 audio
# tokens"): written only when non-zero. Cached and reasoning tokens keep their 0, which is an
# answer there (no cache hit, no reasoning) that hit rates and averages need.
_ZERO_MEANS_ABSENT = (
    "audio_input_tokens",
    "audio_output_tokens",
    "image_input_tokens",
    "image_output_tokens",
)
_SEP = " · "
_MAX_NAME_MODELS = 80  # characters of the model list shown in an operation run's name


@functools.cache
def _source_tags() -> tuple[tuple[str, str], ...]:
    """``mlflow.user``, ``mlflow.source.name`` and ``mlflow.source.type`` as MLflow's own runs
    get them (its default run context: the script or entry point, the user), once per process."""
    try:
        from mlflow.tracking.context.default_context import DefaultRunContext

        tags = {str(k): str(v) for k, v in DefaultRunContext().tags().items()}  # type: ignore[no-untyped-call]
    except Exception:  # an MLflow without that module: the same facts, read here
        import getpass
        import sys

        try:
            user = getpass.getuser()
        except Exception:
            user = "unknown"
        source = sys.argv[0] if sys.argv and sys.argv[0] else "<console>"
        tags = {"mlflow.user": user, "mlflow.source.name": source, "mlflow.source.type": "LOCAL"}
    return tuple(tags.items())


def _short_id(record_id: str) -> str:
    # Six hex digits that tell runs apart in a run table; derived from the record id, so a
    # re-exported record keeps its name.
    return hashlib.blake2s(record_id.encode(), digest_size=3).hexdigest()


def run_fields(
    record: Record,
) -> tuple[str, dict[str, str], dict[str, float], dict[str, str]]:
    """``(run_name, tags, metrics, params)`` for one record: the whole mapping in one place."""
    tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}

    def tag(name: str, value: Any) -> None:
        if value is not None and value != "":
            tags[name] = tag_value(value)[:_MAX_TAG_VALUE]

    def metric(name: str, value: Any) -> None:
        if value is None:
            return
        try:
            number = float(value)
        except (TypeError, ValueError):
            return
        if number == number and number not in (float("inf"), float("-inf")):
            metrics[_key(name)] = number

    # User tags first so that our own keys (record_id, status, …) can't be overwritten by them.
    for key, value in record.tags.items():
        tag(_key(key), value)
    tag("record_id", record.record_id)
    tag("kind", record.kind)
    tag("feature", record.feature)
    tag("operation", record.operation)
    tag("function", record.function)
    tag("status", record.status)
    tag("error_message", record.error_message)
    tag("error_type", record.error_type)
    tag("parent_record_id", record.parent_id)
    metric("execution_time", record.duration_s)
    usage = record.usage
    metric("prompt_tokens", usage.input_tokens)
    metric("completion_tokens", usage.output_tokens)
    metric("total_tokens", usage.total_tokens)
    metric("cached_tokens", usage.cached_input_tokens)
    metric("reasoning_tokens", usage.reasoning_tokens)
    for name in _ZERO_MEANS_ABSENT:
        if getattr(usage, name):
            metric(name, getattr(usage, name))
    for name in ("images", "seconds", "characters"):
        metric(name, getattr(usage, name))
    for param_name, param_value in record.params.items():
        if param_value is not None:
            params[_key(param_name)] = tag_value(param_value)[:_MAX_PARAM_VALUE]

    if isinstance(record, CallRecord):
        model = record.model or record.response_model
        name = _SEP.join(part for part in (record.endpoint or "call", model) if part)
        tag("endpoint", record.endpoint)
        tag("model", record.model)
        tag("response_model", record.response_model)
        tag("pricing_version", record.pricing_version)
        tag("usage_source", record.usage_source)
        tag("cost_status", record.cost_status)
        tag("service_tier", record.service_tier)
        tag("provider", record.provider)
        tag("http_status", record.http_status)
        if record.stream:
            tag("stream", True)
        tag("stream_end", record.stream_end)
        if record.request_ids:
            tag("request_ids", ",".join(record.request_ids))
        if record.cost is not None:
            metric("cost_usd", record.cost.total_usd)
            metric("input_cost_usd", record.cost.input_usd)
            metric("output_cost_usd", record.cost.output_usd)
        metric("attempts", record.attempts)
        if record.model:
            params["model"] = record.model[:_MAX_PARAM_VALUE]
    else:
        assert isinstance(record, OperationRecord)
        tag("error_traceback", record.traceback)
        tag("parent_feature", record.parent_feature)
        # Operation metrics by name (confidence_score among them); ours below win on clashes.
        for metric_name, metric_value in record.metrics.items():
            metric(metric_name, metric_value)
        metric("call_count", record.call_count)
        metric("unpriced_calls", record.unpriced_calls)
        if record.cost_usd is not None:
            metric("cost_usd", record.cost_usd)
        if record.feature_call_count is not None:
            metric("feature_call_count", record.feature_call_count)
            metric("feature_cost_usd", record.feature_cost_usd)
        # The model(s) its calls used, so runs group and filter by model; one the caller logged
        # (``op.log_params(model=...)``, manual results) wins.
        logged = record.params.get("model")
        model = tag_value(logged) if logged is not None else ",".join(record.models) or None
        if model is not None:
            params["model"] = model[:_MAX_PARAM_VALUE]
            tag("model", model)
        label = record.operation or record.function or "operation"
        shown = model
        if shown is not None and len(shown) > _MAX_NAME_MODELS:
            shown = shown[: _MAX_NAME_MODELS - 1] + "…"
        name = _SEP.join(part for part in (label, shown, _short_id(record.record_id)) if part)
    if "confidence" in metrics and "confidence_score" not in metrics:
        metrics["confidence_score"] = metrics["confidence"]
    for key, value in _source_tags():
        tags.setdefault(key, value)
    return name, tags, metrics, params


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
            _install_connection_close_provider()
        # The spool replays a record only into the store it was meant for.
        self.spool_key = f"mlflow:{self._absolute_uri(self.tracking_uri)}"
        self._http = self.tracking_uri.startswith(("http://", "https://"))
        # True when our requests could not be bounded (see _bounded_store): probe /health first.
        self._probe_health = False
        self._client: MlflowClient | None = None
        self._pool: _WriterPool | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        # Held while MLflow opens a local store (see prepare_exit); _closing: open none now.
        self._opening = threading.Lock()
        self._closing = False
        self._experiments: dict[str, str] = {}
        # record_id -> (experiment_id, run_id) of recently written operations, for nesting calls.
        self._op_runs: OrderedDict[str, tuple[str, str]] = OrderedDict()
        # parent record_id -> [(experiment_id, run_id)] of calls written before their operation.
        self._orphans: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()

    @staticmethod
    def _absolute_uri(uri: str) -> str:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
        if "://" not in uri:
            return os.path.abspath(uri)
        return uri

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
            _install_retry_filter()
            store = _bounded_store(self.tracking_uri, self.timeout)
            client = _client_with_store(self.tracking_uri, store) if store is not None else None
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

    def _check_health(self) -> None:
        """One ``GET /health``, no retries, short timeout: fail fast when the server is down
        (used only when our requests could not be bounded, see ``_bounded_store``)."""
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
        _tls.fresh_connections = self.fresh_connections
        _tls.ours = True

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        if self.writers == 1 or len(items) <= 1:
            return [fn(item) for item in items]
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = _WriterPool(self.writers, self._init_writer_thread)
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

        if feature in self.features:
            name = self.features[feature]
            return experiment_name("\0", self.experiment_prefix).replace("\0", name)
        return experiment_name(feature, self.experiment_prefix)

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
                exp_id = client.create_experiment(name, tags={"tracked_openai.feature": feature})
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
            if experiment.tags.get("tracked_openai.feature") != feature:
                client.set_experiment_tag(exp_id, "tracked_openai.feature", feature)
        self._experiments[feature] = exp_id
        return exp_id

    # -- export --------------------------------------------------------------------------------
    def export(self, records: Sequence[Record]) -> None:
        """Write each record as a run; skip (or complete) runs a previous attempt already wrote."""
        if not records:
            return
        # The exporter thread itself also talks to the server (searches, small batches).
        _tls.fresh_connections = self.fresh_connections
        ours = getattr(_tls, "ours", False)
        _tls.ours = True
        try:
            self.client  # noqa: B018 - made first: it decides whether we probe
            if self._probe_health:
                self._check_health()
            self._export(records)
        finally:
            _tls.ours = ours

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
        starts = sorted({_ms(r.started_at) for r in group})
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
                    rid = run.data.tags.get("record_id")
                    if rid in wanted:
                        found[rid] = _Existing(run.info.run_id, run.info.status != "RUNNING")
                token = page.token
                if not token:
                    break
        return found

    def _write(self, exp_id: str, record: Record, *, existing: Mapping[str, _Existing]) -> str:
        from mlflow.entities import Metric, Param, RunStatus, RunTag

        client = self.client
        name, tags, metrics, params = run_fields(record)
        parent = record.parent_id
        if parent is not None:
            known = self._op_runs.get(parent)
            if known is not None and known[0] == exp_id:
                tags["mlflow.parentRunId"] = known[1]
        start = _ms(record.started_at)
        end = _ms(record.started_at + (record.duration_s or 0.0))
        prior = existing.get(record.record_id)
        if prior is not None and prior.finished:
            run_id = prior.run_id
        else:
            tag_items = list(tags.items())
            if prior is None:
                # record_id goes in with create_run, so the run is findable from its first byte.
                first = dict(tag_items[:_MAX_TAGS])
                rest = tag_items[_MAX_TAGS:]
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
                p = param_list[:_MAX_PARAMS]
                t = tag_list[:_MAX_TAGS]
                m = metric_list[: _MAX_ENTITIES - len(p) - len(t)][:_MAX_METRICS]
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


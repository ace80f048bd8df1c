"""The MLflow store: our bounded client for writing, and the checks before reading.

Writing (the sink): over HTTP our own requests go through a store of ours that asks MLflow for
no retries and a short timeout, so an unreachable server fails an export at once and the
exporter's retry, spool and replay take over; MLflow's defaults stay as they are for the host
application's own MLflow use. Reading (reports, the CLI, the REST API): a store is checked before
it is read, and reading never creates one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient


writer_state = threading.local()
_provider_lock = threading.Lock()
_provider_installed = False
_filter_installed = False


def _on_our_thread() -> bool:
    return bool(getattr(writer_state, "ours", False))


class _QuietRetries(logging.Filter):
    """Drops urllib3's "Retrying (Retry(total=…)) after connection broken by …" warnings raised
    by requests made on our threads (an outage would log one per probe). Anyone else's pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _on_our_thread():
            return True
        msg = record.msg if isinstance(record.msg, str) else ""
        return not msg.startswith("Retrying")


def install_retry_filter() -> None:
    global _filter_installed
    if _filter_installed:
        return
    with _provider_lock:
        if not _filter_installed:
            _filter_installed = True
            logging.getLogger("urllib3.connectionpool").addFilter(_QuietRetries())


def bounded_store(tracking_uri: str, timeout: float) -> Any | None:
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


def client_with_store(tracking_uri: str, store: Any) -> MlflowClient | None:
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


def default_tracking_uri() -> str:
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


def spool_key_for(tracking_uri: str) -> str:
    """The spool key of the MLflow sink writing to ``tracking_uri``: the spool replays a record
    only into the store it was meant for (relative local paths made absolute)."""
    uri = tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    elif "://" not in uri:
        uri = os.path.abspath(uri)
    return f"mlflow:{uri}"


def predicted_spool_key(tracking_uri: str | None = None) -> str:
    """The ``spool_key`` an ``MlflowSink(tracking_uri)`` will have, known without importing
    MLflow: records spooled at interpreter exit before the default sink was built (MLflow still
    importing) are filed under it, and replayed once a later process builds that sink."""
    return spool_key_for(tracking_uri or default_tracking_uri())


def install_connection_close_provider() -> None:
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
                    return bool(getattr(writer_state, "fresh_connections", False))

                def request_headers(self) -> dict[str, str]:
                    return {"Connection": "close"}

            _request_header_provider_registry.register(_ConnectionClose)  # type: ignore[no-untyped-call]
        except Exception:  # an MLflow without the registry: keep-alive it is (slower, still correct)
            pass


# -- reading ---------------------------------------------------------------------------------
class StoreUnavailableError(RuntimeError):
    """The tracking store could not be reached or read (CLI exit code 3, HTTP 503)."""


class StoreNotFoundError(StoreUnavailableError):
    """No MLflow store at the URI (a missing file, folder or database schema). Reading never
    creates one; the message names the URI that was tried."""


# -- store access ------------------------------------------------------------------------------
def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The store a report reads: the argument, else ``MLFLOW_TRACKING_URI``, else MLflow's default
    (an embedded SQLite file ``mlflow.db`` in the current folder)."""
    if tracking_uri:
        return tracking_uri
    import mlflow

    return str(mlflow.get_tracking_uri())


def display_uri(uri: str) -> str:
    """``uri`` without credentials (``https://user:token@host`` → ``https://host``), for messages,
    report headers and API responses."""
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def check_store(tracking_uri: str | None = None, timeout: float = 3.0, *, create: bool = False) -> str:
    """Raise :class:`StoreUnavailableError` unless the store is there and answers; return the
    resolved URI.

    Reading never creates a store: a SQLite file, a store folder or a database without MLflow's
    tables that is missing raises :class:`StoreNotFoundError` (MLflow itself would create it).
    ``create=True`` is for writers (the demo): a missing local store is fine, the sink creates it.
    For an HTTP server this asks ``/health`` with a short timeout, because MlflowClient would
    otherwise retry with backoff for minutes before giving up.
    """
    from urllib.parse import urlparse

    uri = resolve_tracking_uri(tracking_uri)
    scheme = urlparse(uri).scheme.lower()
    engine = scheme.split("+", 1)[0]
    if scheme in ("http", "https"):
        _probe_server(uri, timeout)
    elif create or uri in ("databricks", "databricks-uc", "uc"):
        pass
    elif engine == "sqlite":
        _check_sqlite(uri)
    elif engine in _DB_SCHEMES:
        _check_database(uri, timeout)
    elif scheme in ("", "file"):
        _check_folder(uri)
    # Other schemes (Databricks, plugins) are left to MLflow.
    return uri


def _probe_server(uri: str, timeout: float) -> None:
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri.rstrip("/") + "/health")
    shown = display_uri(uri)
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])))
    if parts.username is not None:
        # urllib does not take credentials from the URL; MLflow's client sends them as basic auth.
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        raise StoreUnavailableError(f"tracking server {shown} answered HTTP {exc.code}") from exc
    except (OSError, ValueError) as exc:
        raise StoreUnavailableError(f"tracking server {shown} is unreachable: {exc}") from exc


def _missing(uri: str, what: str) -> StoreNotFoundError:
    return StoreNotFoundError(
        f"no MLflow store at {display_uri(uri)}: {what} (reports never create one: name the store "
        "your application writes with --tracking-uri or MLFLOW_TRACKING_URI)"
    )


def _check_sqlite(uri: str) -> None:
    import sqlite3

    from sqlalchemy.engine import make_url

    try:
        database = make_url(uri).database
    except Exception as exc:
        raise StoreUnavailableError(
            f"tracking URI {display_uri(uri)} is invalid: {short_error(exc)}"
        ) from exc
    if not database or database == ":memory:" or database.startswith("file:"):
        return  # in-memory or a SQLite URI filename: nothing on disk to find
    path = Path(database).absolute()
    if not path.exists():
        raise _missing(uri, f"{path} does not exist")
    if not path.is_file():
        raise _missing(uri, f"{path} is not a file")
    try:
        # Read-only: opening it the usual way would turn any file into an (empty) SQLite database.
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        raise _missing(uri, f"{path} is not a SQLite database ({exc})") from exc
    if "experiments" not in tables:
        raise _missing(uri, f"{path} has no MLflow tables")


def _check_database(uri: str, timeout: float) -> None:
    from sqlalchemy import create_engine, inspect

    scheme = uri.partition(":")[0].lower()
    connect_args: dict[str, Any] = {}
    if scheme.startswith(("postgresql", "mysql")):
        connect_args["connect_timeout"] = max(1, math.ceil(timeout))
    try:
        engine = create_engine(uri, connect_args=connect_args)
    except Exception as exc:
        raise StoreUnavailableError(
            f"tracking URI {display_uri(uri)} is invalid: {short_error(exc)}"
        ) from exc
    try:
        with engine.connect() as conn:
            found = inspect(conn).has_table("experiments")
    except Exception as exc:
        raise StoreUnavailableError(
            f"tracking database {display_uri(uri)} is unreachable: {short_error(exc)}"
        ) from exc
    finally:
        engine.dispose()
    if not found:
        raise _missing(uri, "the database has no MLflow tables")


def _check_folder(uri: str) -> None:
    from urllib.parse import unquote, urlparse

    path = Path(unquote(urlparse(uri).path) if uri.startswith("file:") else uri).absolute()
    if not path.is_dir():
        raise _missing(uri, f"folder {path} does not exist")
    # MLflow's file store keeps a `.trash` folder and one `<id>/meta.yaml` per experiment.
    if not (path / ".trash").is_dir() and not any(path.glob("*/meta.yaml")):
        raise _missing(uri, f"folder {path} is not an MLflow store (no experiments in it)")


def read_client(uri: str) -> Any:
    # Check first: MlflowClient would create a missing store, or retry an unreachable server for
    # minutes.
    check_store(uri)
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        # Touch the store now so a broken URI fails here, with a clear message.
        client.search_experiments(max_results=1)
    except Exception as exc:
        raise StoreUnavailableError(
            f"tracking store {display_uri(uri)} cannot be read: {short_error(exc)}"
        ) from exc
    return client


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]

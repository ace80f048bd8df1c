"""Sending traces: OTLP/HTTP protobuf to ``mlflow server`` (or any OTLP receiver), or the
embedded store's own batch ``log_spans``. The same encoding serves both.

* :func:`encode` turns :class:`~tracked_openai.mlflow.traces.TraceData` into an OTLP
  ``ExportTraceServiceRequest`` (``opentelemetry-proto``, a dependency of MLflow). Attribute
  values are typed OTLP values (dicts as key-value lists), which MLflow's server stores as the
  JSON it expects (``mlflow.chat.tokenUsage`` as an object, not a string of one).
* :class:`MlflowOtlpTransport` POSTs it gzip'd to ``<tracking uri>/v1/traces`` with the header
  ``x-mlflow-experiment-id`` through MLflow's own ``http_request``, so auth (basic or bearer
  from MLflow's environment), TLS settings and request-header plugins are what MLflow's own
  client sends. The server stores all spans of one request in one ``log_spans`` call.
* :class:`EmbeddedTransport` converts the same request with MLflow's own
  ``Span.from_otel_proto`` (what the server does on receipt) and calls ``log_spans`` on the
  local store: one transaction per batch.
* :class:`GenericOtlpTransport` sends the same bytes to any OTLP/HTTP receiver
  (``TRACKED_OPENAI_OTLP_ENDPOINT`` and ``TRACKED_OPENAI_OTLP_HEADERS``), e.g. an OpenTelemetry
  Collector in front of several tracking servers.

Failures: :class:`RejectedError` when the receiver refuses the request as such (a 4xx other
than 408/429: retrying the same bytes would fail again), anything else (connection refused,
timeouts, 5xx, 408, 429) is transient and raised as ``ConnectionError``.
"""

from __future__ import annotations

import functools
import gzip
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .traces import AttributeValue, SpanData, TraceData

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

__all__ = [
    "OTLP_ENDPOINT_ENV",
    "OTLP_HEADERS_ENV",
    "EmbeddedTransport",
    "GenericOtlpTransport",
    "MlflowOtlpTransport",
    "RejectedError",
    "encode",
    "parse_headers",
]

OTLP_ENDPOINT_ENV = "TRACKED_OPENAI_OTLP_ENDPOINT"
OTLP_HEADERS_ENV = "TRACKED_OPENAI_OTLP_HEADERS"
OTLP_TRACES_PATH = "/v1/traces"
EXPERIMENT_HEADER = "x-mlflow-experiment-id"
SERVICE_NAME = "tracked-openai"
SCOPE_NAME = "tracked_openai"

# 4xx answers that say "later", not "never".
_TRANSIENT_4XX = frozenset({408, 409, 425, 429})


class RejectedError(Exception):
    """The receiver refused the request itself (HTTP 4xx, or the store rejected a value):
    sending the same spans again will fail again. ``status`` is the HTTP status (``None`` for
    the embedded store), ``reason`` the receiver's explanation."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"rejected ({status if status is not None else 'store'}): {reason}")
        self.status = status
        self.reason = reason


# -- encoding --------------------------------------------------------------------------------------
def _any_value(value: Any, out: AnyValue) -> None:
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        if -(2**63) <= value < 2**63:
            out.int_value = value
        else:
            out.string_value = str(value)
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, Mapping):
        kvlist = out.kvlist_value
        kvlist.SetInParent()
        for key, item in value.items():
            if item is None:
                continue
            kv = kvlist.values.add()
            kv.key = str(key)
            _any_value(item, kv.value)
    elif isinstance(value, (list, tuple)):
        array = out.array_value
        array.SetInParent()
        for item in value:
            _any_value(item, array.values.add())
    elif value is None:
        out.string_value = ""
    else:
        out.string_value = str(value)


def _attributes(attrs: Mapping[str, AttributeValue], target: Any) -> None:
    for key, value in attrs.items():
        kv = target.add()
        kv.key = key
        _any_value(value, kv.value)


def _encode_span(span: SpanData, out: Any) -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    out.trace_id = span.trace_id
    out.span_id = span.span_id
    if span.parent_span_id is not None:
        out.parent_span_id = span.parent_span_id
    out.name = span.name
    out.kind = Span.SPAN_KIND_CLIENT if span.parent_span_id is not None else Span.SPAN_KIND_INTERNAL
    out.start_time_unix_nano = span.start_ns
    out.end_time_unix_nano = max(span.end_ns, span.start_ns)
    _attributes(span.attributes, out.attributes)
    for event in span.events:
        ev = out.events.add()
        ev.name = event.name
        ev.time_unix_nano = event.time_ns
        _attributes(event.attributes, ev.attributes)
    out.status.code = Status.STATUS_CODE_ERROR if span.status == "error" else Status.STATUS_CODE_OK
    if span.status_message:
        out.status.message = span.status_message


def encode(
    traces: Sequence[TraceData], *, service_name: str | None = SERVICE_NAME
) -> ExportTraceServiceRequest:
    """One OTLP export request holding every span of ``traces`` (one resource, one scope).

    ``service_name``: the resource's ``service.name`` (OpenTelemetry backends show it), or
    ``None`` for none: MLflow's SQL store writes every resource attribute as a trace tag of each
    trace, two round trips to its database per trace for a tag no reader of ours needs."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    if service_name is not None:
        _attributes({"service.name": service_name}, resource_spans.resource.attributes)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = SCOPE_NAME
    scope_spans.scope.version = _version()
    spans = scope_spans.spans
    for trace in traces:
        for span in trace.spans:
            _encode_span(span, spans.add())
    return request


@functools.lru_cache(maxsize=1)
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tracked-openai")
    except Exception:
        return ""


def _body(traces: Sequence[TraceData], service_name: str | None = SERVICE_NAME) -> bytes:
    # Level 1: the spans are repetitive JSON-ish text; it already shrinks them ~5x, and higher
    # levels cost the exporter thread far more CPU for little more.
    return gzip.compress(encode(traces, service_name=service_name).SerializeToString(), compresslevel=1)


def parse_headers(raw: str | None) -> dict[str, str]:
    """``k1=v1,k2=v2`` (URL-encoded values, as ``OTEL_EXPORTER_OTLP_HEADERS``) as a dict."""
    headers: dict[str, str] = {}
    for item in (raw or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            headers[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return headers


def _traces_url(endpoint: str) -> str:
    """An OTLP endpoint as the traces URL: used as is when it names ``/v1/traces``, else the
    path is appended (as ``OTEL_EXPORTER_OTLP_ENDPOINT`` does)."""
    if endpoint.rstrip("/").endswith(OTLP_TRACES_PATH):
        return endpoint.rstrip("/")
    return endpoint.rstrip("/") + OTLP_TRACES_PATH


def _check_status(status: int, text: str) -> None:
    if 200 <= status < 300:
        return
    reason = text.strip()[:500] or f"HTTP {status}"
    if 400 <= status < 500 and status not in _TRANSIENT_4XX:
        raise RejectedError(status, reason)
    raise ConnectionError(f"OTLP receiver answered HTTP {status}: {reason}")


# -- transports ------------------------------------------------------------------------------------
class MlflowOtlpTransport:
    """``POST <tracking uri>/v1/traces`` through MLflow's ``http_request`` (MLflow's auth, TLS
    and header providers), one request per call, no MLflow-level retries (the exporter's
    retry, spool and replay handle outages), bounded by ``timeout`` seconds."""

    def __init__(self, tracking_uri: str, *, timeout: float = 10.0) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        self.timeout = timeout

    def send(self, experiment_id: str, traces: Sequence[TraceData], *, run_id: str | None = None) -> None:
        if not traces:
            return
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        headers = {
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "gzip",
            EXPERIMENT_HEADER: experiment_id,
        }
        if run_id is not None:
            headers["x-mlflow-run-id"] = run_id
        try:
            response = http_request(  # type: ignore[no-untyped-call]
                get_default_host_creds(self.tracking_uri),  # type: ignore[no-untyped-call]
                OTLP_TRACES_PATH,
                "POST",
                max_retries=0,
                backoff_factor=0,
                extra_headers=headers,
                timeout=(min(5.0, self.timeout), self.timeout),
                raise_on_status=False,
                data=_body(traces, None),  # MLflow: no service.name (see encode)
            )
        except Exception as exc:
            raise ConnectionError(f"MLflow tracking server {self.tracking_uri} unreachable: {exc}") from exc
        _check_status(response.status_code, response.text)

    def __repr__(self) -> str:
        return f"MlflowOtlpTransport({self.tracking_uri!r})"


class GenericOtlpTransport:
    """The same requests to any OTLP/HTTP receiver: ``endpoint`` (``TRACKED_OPENAI_OTLP_ENDPOINT``;
    ``/v1/traces`` is appended unless it is there) with ``headers``
    (``TRACKED_OPENAI_OTLP_HEADERS``). The experiment id still goes in ``x-mlflow-experiment-id``
    so an MLflow server behind a collector or proxy files the traces as usual."""

    def __init__(
        self, endpoint: str, headers: Mapping[str, str] | None = None, *, timeout: float = 10.0
    ) -> None:
        self.url = _traces_url(endpoint)
        self.headers = dict(headers or {})
        self.timeout = timeout
        self._session: Any = None
        self._pid = os.getpid()

    @classmethod
    def from_env(cls, *, timeout: float = 10.0) -> GenericOtlpTransport | None:
        endpoint = os.environ.get(OTLP_ENDPOINT_ENV, "").strip()
        if not endpoint:
            return None
        return cls(endpoint, parse_headers(os.environ.get(OTLP_HEADERS_ENV)), timeout=timeout)

    def send(self, experiment_id: str, traces: Sequence[TraceData], *, run_id: str | None = None) -> None:
        if not traces:
            return
        import requests

        if self._session is None or self._pid != os.getpid():
            self._session, self._pid = requests.Session(), os.getpid()
        headers = {
            **self.headers,
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "gzip",
            EXPERIMENT_HEADER: experiment_id,
        }
        if run_id is not None:
            headers["x-mlflow-run-id"] = run_id
        try:
            response = self._session.post(
                self.url,
                data=_body(traces, SERVICE_NAME),
                headers=headers,
                timeout=(min(5.0, self.timeout), self.timeout),
            )
        except requests.RequestException as exc:
            raise ConnectionError(f"OTLP receiver {self.url} unreachable: {exc}") from exc
        _check_status(response.status_code, response.text)

    def __repr__(self) -> str:
        return f"GenericOtlpTransport({self.url!r})"


class EmbeddedTransport:
    """The local store's own batch ``log_spans`` (one transaction per call), fed the same OTLP
    request converted by MLflow's ``Span.from_otel_proto`` as the server would."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def send(self, experiment_id: str, traces: Sequence[TraceData], *, run_id: str | None = None) -> None:
        if not traces:
            return
        from mlflow.entities.span import Span
        from mlflow.exceptions import MlflowException

        request = encode(traces, service_name=None)
        try:
            spans = [
                Span.from_otel_proto(proto_span, resource=resource_spans.resource)
                for resource_spans in request.resource_spans
                for scope_spans in resource_spans.scope_spans
                for proto_span in scope_spans.spans
            ]
        except Exception as exc:
            raise RejectedError(None, f"span conversion failed: {type(exc).__name__}: {exc}") from exc
        try:
            self.store.log_spans(experiment_id, spans)
        except MlflowException as exc:
            if exc.get_http_status_code() // 100 == 4:  # type: ignore[no-untyped-call]
                raise RejectedError(None, exc.message) from exc
            raise
        if run_id is not None:
            roots = [t.mlflow_trace_id for t in traces if any(s.parent_span_id is None for s in t.spans)]
            for start in range(0, len(roots), 100):
                self.store.link_traces_to_run(roots[start : start + 100], run_id)

    def __repr__(self) -> str:
        return f"EmbeddedTransport({type(self.store).__name__})"

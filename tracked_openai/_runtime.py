"""Process-wide state: settings, the exporter and its sinks; ``configure``/``flush``/``shutdown``.

The exporter is built lazily on the first record, so a disabled library (or one never used)
starts no thread and opens no store. Building it is cheap (a queue and a thread): the default
sinks, which import MLflow, are built by the exporter's own thread, never by the call whose
record started it. ``start()`` does that work at application start instead.
"""

from __future__ import annotations

import atexit
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from ._config import Settings, check_option, load_settings
from ._errors import internal_error_count, internal_errors, logger, report_internal_error
from ._exporter import Exporter
from .records import CallRecord, OperationRecord, Record, new_record_id

__all__ = ["configure", "flush", "prepare", "settings", "shutdown", "start", "stats", "submit"]

settings: Settings = load_settings()

_exporter: Exporter | None = None
_sinks: list[Any] | None = None
_built_defaults: list[Any] | None = None  # the default sinks once built (see _default_sinks)
_lock = threading.Lock()


def _default_sinks() -> list[Any]:
    """The MLflow sinks of ``settings.mlflow_mode`` (runs, traces or both). Runs on the exporter's
    thread (importing MLflow takes seconds of CPU); the sinks built are kept for later exporters
    (after ``configure``/``shutdown``)."""
    global _sinks, _built_defaults
    sinks: list[Any]
    try:
        from .mlflow.modes import mode_sinks

        sinks = mode_sinks(settings.mlflow_mode)
    except Exception as exc:  # mlflow missing or broken: keep the host running, say why once.
        logger.warning("tracked_openai: MLflow sink unavailable (%s); records are not persisted", exc)
        sinks = []
    with _lock:
        if _sinks is None:
            _sinks = _built_defaults = sinks
    return sinks


class _DefaultSinks:
    """The default sinks as the exporter's sink factory (called on its thread)."""

    def __call__(self) -> list[Any]:
        return _default_sinks()

    def spool_keys(self) -> list[str]:
        # At exit, before the sink exists: where its records go (cheap, no MLflow import).
        from .mlflow.modes import mode_spool_keys

        return mode_spool_keys(settings.mlflow_mode)


def _warm_up() -> None:
    """Exporter thread, once: load the price table before the first batch needs it."""
    from .pricing import get_price_book

    get_price_book()


def _get_exporter() -> Exporter:
    global _exporter
    exporter = _exporter
    if exporter is not None:
        return exporter
    with _lock:
        if _exporter is None:
            _exporter = _make_exporter(_sinks if _sinks is not None else _DefaultSinks())
        return _exporter


def _make_exporter(sinks: list[Any] | Callable[[], list[Any]]) -> Exporter:
    return Exporter(
        sinks,
        prepare=prepare,
        queue_size=settings.queue_size,
        batch_size=settings.batch_size,
        flush_interval=settings.flush_interval,
        exit_timeout=settings.exit_timeout,
        spool_dir=settings.spool_dir,
        retry_attempts=settings.retry_attempts,
        retry_initial=settings.retry_initial,
        retry_max=settings.retry_max,
        overflow="drop" if settings.overflow == "drop" else "spool",
        warm_up=_warm_up,
        exit_hook=False,  # _at_exit below is the one exit path
    )


def _release_waiting_operations(close_streams: bool = True) -> None:
    """Operations still waiting for calls are submitted with what they have; at exit, streams
    still open are recorded first (``stream_end="abandoned"``), which also completes their
    operations. ``shutdown()`` leaves streams alone: they may still be read afterwards."""
    from ._context import release_waiting

    # Streams are open only if the hooks were ever imported (never, on an unsupported SDK).
    instrument = sys.modules.get("tracked_openai._instrument")
    if close_streams and instrument is not None:
        instrument.close_open_streams()
    release_waiting(force=True)


@atexit.register
def _at_exit() -> None:
    # The one exit path (our exporters register none of their own): records still held (an
    # operation waiting for a stream, open streams) are submitted, then one flush with the
    # exit deadline, after which what is left is spooled. Registered at import, so it also runs
    # when the only records were held and no exporter was started yet.
    with internal_errors("exit"):
        _release_waiting_operations()
        exporter = _exporter
        if exporter is not None:
            exporter.exit_flush()


def start(wait: bool = False, timeout: float | None = None) -> bool:
    """Warm up now, e.g. when the application starts (Django: ``AppConfig.ready``): start the
    exporter's thread, which builds the sinks (the MLflow sink imports MLflow and opens its
    store) and loads the price table in the background. Returns at once; with ``wait=True``,
    once that is done (``False`` if ``timeout`` ran out first). Without it, the same happens
    on the exporter's thread when the first records are due. Never raises; does nothing while
    tracking is disabled.
    """
    if not settings.enabled:
        return True
    with internal_errors("start"):
        return _get_exporter().start(wait, timeout)
    return False


def submit(record: Record | Any) -> None:
    """Hand a finished record, or a finished tracked call (``_instrument.Call``, made into its
    record by ``prepare``), to the exporter (O(1), never raises)."""
    exporter = _exporter
    if exporter is None:
        with internal_errors("exporter.start"):
            exporter = _get_exporter()
    if exporter is not None:
        exporter.submit(record)


def prepare(item: Record | Any) -> Record:
    """On the exporter thread: the record of a finished tracked call (``Call.to_record``), or the
    record given, with its derived fields filled: id, estimated usage, cost, operation roll-ups."""
    record: Record = item if isinstance(item, (CallRecord, OperationRecord)) else _record_of(item)
    if isinstance(record, CallRecord):
        if not record.record_id:  # a tracked call's record is named here, off the caller's path
            record.record_id = new_record_id()
        if record.cost_status == "pending":
            with internal_errors("pricing"):
                from .pricing import price_record

                price_record(record)
            if record.cost_status == "pending":
                record.cost_status = "error"
    elif isinstance(record, OperationRecord):
        children, record.children = record.children, []
        if children:
            _roll_up(record, [(child.record, _in_own_feature(child, record)) for child in children])
            # Its own calls ride with it for the traces sink (one request per trace).
            record.calls = [c.record for c in children if c.record.parent_id == record.record_id]
    return record


def _in_own_feature(call: Any, op: OperationRecord) -> bool:
    """Whether a call rolled up into ``op`` belongs to ``op``'s own feature: every operation
    between the call and ``op`` (the call's innermost one included) is in that feature. A call
    inside a nested operation of another feature belongs to that one (the innermost feature)."""
    scope = getattr(call, "op", None)
    while scope is not None and scope.record is not op:
        if scope.record.feature != op.feature:
            return False
        scope = scope.parent
    return True


def _record_of(call: Any) -> CallRecord:
    try:
        record: CallRecord = call.to_record()
    except Exception as exc:
        # Export what the call knew rather than hand the sinks something that is not a record.
        report_internal_error(exc, "call record")
        record = call.record
    return record


_ROLLUP_KEYS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens")


def _roll_up(op: OperationRecord, children: Iterable[tuple[CallRecord, bool]]) -> None:
    """Fill ``op``'s roll-up from its calls (nested operations' calls included), each given with
    whether it belongs to ``op``'s own feature; the own-feature share is kept apart only when
    some call belongs to another feature (see ``OperationRecord.feature_call_count``)."""
    total = Decimal(0)
    priced = False
    own_total = Decimal(0)
    own_priced = False
    own_calls = 0
    models: set[str] = set()
    for call, own in children:
        op.call_count += 1
        own_calls += own
        for key in _ROLLUP_KEYS:
            value = getattr(call.usage, key)
            if value is not None:
                setattr(op.usage, key, (getattr(op.usage, key) or 0) + value)
        if call.cost is not None:
            total += call.cost.total_usd
            priced = True
            if own:
                own_total += call.cost.total_usd
                own_priced = True
        elif call.status == "success" or call.usage_source != "none":
            op.unpriced_calls += 1
        model = call.model or call.response_model
        if model:
            models.add(model)
    if priced:
        op.cost_usd = total
    op.models = sorted(models)
    if own_calls < op.call_count:
        op.feature_call_count = own_calls
        op.feature_cost_usd = own_total if own_priced else None


def configure(
    *,
    sinks: Iterable[Any] | None = None,
    enabled: bool | None = None,
    inject_stream_usage: bool | None = None,
    capture_content: bool | None = None,
    default_feature: str | None = None,
    features: Mapping[str, str] | None = None,
    pricing: Any = None,
    **exporter_options: Any,
) -> None:
    """Change settings at run time. ``sinks`` replaces the sinks (the old exporter is flushed).

    Args:
        sinks: Sinks to export to (default: one ``MlflowSink``).
        enabled: Turn tracking on or off (``MLFLOW_ENABLED`` / ``TRACKED_OPENAI_ENABLED``).
        inject_stream_usage: Ask OpenAI/Azure for the usage chunk on chat streams.
        capture_content: Store prompts and outputs in call records (off by default).
        default_feature: Feature key for calls made outside any ``track`` block.
        features: Extra ``{feature key: experiment name}`` entries for the MLflow sink.
        pricing: A pricing file or folder (or a loaded price book) overriding the shipped tables.
        **exporter_options: ``queue_size``, ``batch_size``, ``flush_interval``, ``exit_timeout``,
            ``spool_dir``, ``retry_attempts``, ``retry_initial``, ``retry_max``, ``overflow``,
            ``experiment_prefix``, ``mlflow_timeout``, ``mlflow_mode`` (``runs``, ``traces`` or
            ``runs+traces``: what the default sinks write, see ``tracked_openai/mlflow/modes.py``).
            A bad value (not a number, not finite,
            out of range) is logged and the default used, as for the environment variables.
    """
    global _exporter, _sinks
    if enabled is not None:
        settings.enabled = enabled
    if inject_stream_usage is not None:
        settings.inject_stream_usage = inject_stream_usage
    if capture_content is not None:
        settings.capture_content = capture_content
    if default_feature is not None:
        settings.default_feature = default_feature
    if features:
        settings.features.update(features)
    for key, value in exporter_options.items():
        if not hasattr(settings, key):
            raise TypeError(f"configure() got an unexpected keyword argument {key!r}")
        setattr(settings, key, check_option(key, value))
    if pricing is not None:
        from .pricing import use_pricing

        use_pricing(pricing)
    if sinks is not None or exporter_options:
        with _lock:
            old = _exporter
            _exporter = None
            if sinks is not None:
                _sinks = list(sinks)
            elif _sinks is _built_defaults and {"mlflow_timeout", "mlflow_mode"} & exporter_options.keys():
                _sinks = None  # the default sinks are built again, with the new timeout or mode
        if old is not None:
            old.shutdown(settings.exit_timeout)


def flush(timeout: float | None = None) -> bool:
    """Block until every record so far reached the sinks; ``False`` if ``timeout`` ran out."""
    exporter = _exporter
    return True if exporter is None else exporter.flush(timeout)


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop the exporter; a later record starts a fresh one."""
    global _exporter
    with internal_errors("shutdown.release"):
        _release_waiting_operations(close_streams=False)
    with _lock:
        exporter, _exporter = _exporter, None
    return True if exporter is None else exporter.shutdown(timeout)


def stats() -> dict[str, int]:
    """Exporter counters (submitted, exported, dropped, …) and internal errors."""
    exporter = _exporter
    counters = exporter.stats() if exporter is not None else {}
    return {**counters, "internal_errors": internal_error_count()}

"""The process's exporter and its sinks: ``configure``/``start``/``flush``/``shutdown``/``submit``.

The exporter is built lazily on the first record, so a disabled library (or one never used)
starts no thread and opens no store. Building it is cheap (a queue and a thread): the default
sinks, which import MLflow, are built by the exporter's own thread, never by the call whose
record started it. ``start()`` does that work at application start instead.

Layers above this one that hold records back (an operation waiting for a stream, streams still
open) register a release hook (``add_release_hook``); the exit path and ``shutdown()`` run them
before the last flush. Nothing here imports those layers: settings live in ``_config``.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._config import check_option, settings
from .._errors import internal_error_count, internal_errors, logger
from ..records import Record
from .prepare import budget_hook, prepare, register_budget_hooks
from .queue import Exporter

__all__ = [
    "add_release_hook",
    "configure",
    "configured_sinks",
    "flush",
    "register_budget_hooks",
    "restore_sinks",
    "shutdown",
    "start",
    "stats",
    "submit",
]

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
        from ..sinks.modes import mode_sinks

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
        from ..sinks.modes import mode_spool_keys

        return mode_spool_keys(settings.mlflow_mode)


def _warm_up() -> None:
    """Exporter thread, once: load the price table before the first batch needs it."""
    from ..pricing import get_price_book

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
        journal=settings.journal,
        warm_up=_warm_up,
        exit_hook=False,  # _at_exit below is the one exit path
    )


# Release hooks: (order, name, hook). A hook gets ``at_exit``: True at interpreter exit, False
# on ``shutdown()``; lower orders run first.
_release_hooks: list[tuple[int, str, Callable[[bool], None]]] = []


def add_release_hook(name: str, hook: Callable[[bool], None], order: int = 0) -> None:
    """Have ``hook(at_exit)`` submit what a layer above still holds, at exit and on
    ``shutdown()``, before the last flush (lower ``order`` first; idempotent by ``name``)."""
    with _lock:
        _release_hooks[:] = [entry for entry in _release_hooks if entry[1] != name]
        _release_hooks.append((order, name, hook))
        _release_hooks.sort(key=lambda entry: entry[0])


def _release_held(at_exit: bool) -> None:
    for _, name, hook in list(_release_hooks):
        with internal_errors(f"release {name}"):
            hook(at_exit)


@atexit.register
def _at_exit() -> None:
    # The one exit path (our exporters register none of their own): records still held (an
    # operation waiting for a stream, open streams) are submitted, then one flush with the
    # exit deadline, after which what is left is spooled. Registered at import, so it also runs
    # when the only records were held and no exporter was started yet.
    with internal_errors("exit"):
        _release_held(at_exit=True)
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
        warm_up = budget_hook("warm_up")
        if warm_up is not None:
            warm_up()  # TRACKED_OPENAI_BUDGETS: load it and connect the ledger now
        return _get_exporter().start(wait, timeout)
    return False


def submit(record: Record | Any) -> None:
    """Hand a finished record, or a finished tracked call (``capture.call.Call``, made into its
    record by ``prepare``), to the exporter (O(1), never raises)."""
    exporter = _exporter
    if exporter is None:
        with internal_errors("exporter.start"):
            exporter = _get_exporter()
    if exporter is not None:
        exporter.submit(record)


def configure(
    *,
    sinks: Iterable[Any] | None = None,
    enabled: bool | None = None,
    inject_stream_usage: bool | None = None,
    capture_content: bool | None = None,
    default_feature: str | None = None,
    features: Mapping[str, str] | None = None,
    pricing: Any = None,
    budgets: Iterable[Any] | str | None = None,
    ledger_url: str | None = None,
    on_budget_alert: Callable[[Any], Any] | None = None,
    budget_webhooks: Iterable[str | dict[str, Any]] | None = None,
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
        budgets: :class:`~tracked_openai.Budget` objects, or a budgets file, replacing the budgets
            in force (``[]`` removes them). See ``tracked_openai.budgets.configure_budgets``.
        ledger_url: SQLAlchemy URL of the budget ledger (default ``TRACKED_OPENAI_LEDGER_URL``,
            else a SQLite file ``.tracked_openai/budget_ledger.sqlite``).
        on_budget_alert: Called with each budget alert.
        budget_webhooks: URLs (or ``{"url": ..., "slack": True}``) budget alerts are POSTed to.
        **exporter_options: ``queue_size``, ``batch_size``, ``flush_interval``, ``exit_timeout``,
            ``spool_dir``, ``retry_attempts``, ``retry_initial``, ``retry_max``, ``overflow``,
            ``journal``, ``experiment_prefix``, ``mlflow_timeout``, ``mlflow_mode`` (``runs``,
            ``traces`` or ``runs+traces``: what the default sinks write, see
            ``tracked_openai/sinks/modes.py``). A bad value (not a number,
            not finite, out of range, not a boolean) is logged and the default used, as for the
            environment variables. ``journal=True`` (``TRACKED_OPENAI_JOURNAL``, off by
            default) appends each record to a per-process file in the spool folder as soon as
            the exporter takes it, before delivery, and the next process replays what was not
            delivered: a SIGKILLed process then loses only the records submitted in the last
            moments before the kill (see docs/exporter.md, "What a killed process loses").
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
        from ..pricing import use_pricing

        use_pricing(pricing)
    if budgets is not None:
        # Registered by the budgets package, which the package's __init__ always imports.
        configure_budgets = budget_hook("configure")
        assert configure_budgets is not None, "tracked_openai.budgets registers this hook on import"
        configure_budgets(
            budgets, ledger_url=ledger_url, on_alert=on_budget_alert, webhooks=budget_webhooks or ()
        )
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
    _release_held(at_exit=False)
    with _lock:
        exporter, _exporter = _exporter, None
    return True if exporter is None else exporter.shutdown(timeout)


def configured_sinks() -> list[Any] | None:
    """The sinks records go to: those given to ``configure``, or the default ones once built
    (``None`` until then)."""
    return _sinks


def restore_sinks(sinks: list[Any] | None) -> None:
    """Put back sinks read with ``configured_sinks`` after a ``shutdown()`` (``None``: the
    default sinks, built when next needed)."""
    global _sinks
    with _lock:
        _sinks = sinks


def stats() -> dict[str, int]:
    """Exporter counters (submitted, exported, dropped, …) and internal errors."""
    budget_stats = budget_hook("stats")
    exporter = _exporter
    counters = exporter.stats() if exporter is not None else {}
    extra = budget_stats() if budget_stats is not None else {}
    return {**counters, **extra, "internal_errors": internal_error_count()}

"""The SDK's module-level client (``openai.chat.completions.create(...)``), tracked.

The SDK builds that client lazily (``openai._load_client()``) as an instance of one of its own
classes, ``openai._ModuleClient`` (or ``_AzureModuleClient``/``_BedrockModuleClient``, picked from
``openai.api_type`` and the environment). Those classes read every setting (``openai.api_key``,
``openai.base_url``, ``openai.http_client``…) from the ``openai`` module's globals, and the module's
resources (``openai.chat``…) are lazy proxies that ask ``_load_client()`` on every use.

Two ways to have it tracked, reusing that machinery rather than copying it:

* :func:`instrument_module_client` (opt-in, reversible, idempotent) puts a tracked subclass of each
  SDK module-client class in its place on the ``openai`` module, so the SDK's loader builds tracked
  clients, and moves an already-built module client to its tracked subclass (its settings,
  connection pool and cached resources stay; resources call the client's ``request()``, looked
  up on its class at call time). Every ``openai.X`` call in the process is then recorded.
* :mod:`tracked_openai.openai` (an import swap) keeps the SDK's module client as it is and hands out
  a tracked *view* of it (:func:`load_view`): an instance of the tracked subclass sharing the SDK
  client's state. Settings are the SDK module's own, so ``openai.api_key = ...`` keeps working;
  only code that imports ``tracked_openai.openai`` is recorded.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import openai as _sdk

from ._client import TRACKING, AzureOpenAI, OpenAI
from ._errors import logger, report_internal_error

__all__ = [
    "instrument_module_client",
    "module_client_trackable",
    "load_view",
    "resource_names",
    "settings_names",
    "uninstrument_module_client",
]

# The SDK's module-client classes, by their name on the ``openai`` module.
_CLASS_NAMES = ("_ModuleClient", "_AzureModuleClient", "_BedrockModuleClient")
# Settings the module client reads from ``openai``'s globals (older SDKs have fewer of them).
_KNOWN_SETTINGS = (
    "api_key",
    "admin_api_key",
    "organization",
    "project",
    "webhook_secret",
    "base_url",
    "timeout",
    "max_retries",
    "default_headers",
    "default_query",
    "http_client",
    "api_type",
    "api_version",
    "azure_endpoint",
    "azure_ad_token",
    "azure_ad_token_provider",
    "bedrock_token_provider",
)

_lock = threading.RLock()
_tracked_of: dict[type[Any], type[Any]] = {}  # SDK class -> its tracked subclass
_tracked_classes: set[type[Any]] = set()
_originals: dict[str, type[Any]] = {}  # name on ``openai`` -> SDK class, while instrumented
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def module_client_problem() -> str | None:
    """What the SDK lacks for a tracked module client (None: nothing)."""
    if not TRACKING:
        return "the SDK's client internals moved (see the warning logged at import)"
    if not callable(getattr(_sdk, "_load_client", None)):
        return "openai._load_client is missing"
    if not isinstance(getattr(_sdk, "_ModuleClient", None), type):
        return "openai._ModuleClient is missing"
    return None


def module_client_trackable() -> bool:
    """Whether this SDK's module client can be tracked; if not, says why (once)."""
    problem = module_client_problem()
    if problem is not None and TRACKING:  # else the import's warning said nothing is tracked
        _warn_once("module", "tracked_openai: the openai module client stays untracked: %s", problem)
    return problem is None


def _is_tracked(cls: type[Any]) -> bool:
    return cls in _tracked_classes


def tracked_class(base: type[Any]) -> type[Any]:
    """The tracked subclass of an SDK module-client class (built once; a tracked one is itself).

    Our client classes come first in its bases, so their ``request``/``_send_request`` run and
    then hand on (``super()``) to the SDK module client's classes, whose properties (settings
    read from ``openai``'s globals) are untouched."""
    if _is_tracked(base):
        return base
    with _lock:
        cls = _tracked_of.get(base)
        if cls is None:
            mixin = AzureOpenAI if issubclass(base, _sdk.AzureOpenAI) else OpenAI
            name = "Tracked" + base.__name__.lstrip("_")
            cls = type(name, (mixin, base), {"__module__": __name__, "__qualname__": name})
            from .capture.request import LIVE_BASE_URL

            LIVE_BASE_URL.add(cls)
            _tracked_of[base] = cls
            _tracked_classes.add(cls)
        return cls


def instrument_module_client() -> bool:
    """Make the ``openai`` module's own client tracked: ``openai.chat.completions.create(...)``
    and every other ``openai.<resource>`` call in the process is recorded from now on.

    Clients built with ``openai.OpenAI(...)`` are not touched. Idempotent; undone by
    :func:`uninstrument_module_client`. Returns False (and logs why, once) when this SDK's
    module client cannot be tracked; calls then go on untracked."""
    if not module_client_trackable():
        return False
    with _lock:
        for name in _CLASS_NAMES:
            base = getattr(_sdk, name, None)
            if not isinstance(base, type) or _is_tracked(base):
                continue
            _originals[name] = base
            setattr(_sdk, name, tracked_class(base))
        client = getattr(_sdk, "_client", None)
        if client is not None and type(client) in _tracked_of:
            # Same layout (the subclass adds no slots), so the instance keeps all its state.
            try:
                client.__class__ = _tracked_of[type(client)]
            except TypeError as exc:  # a layout we did not foresee: the next client is tracked
                report_internal_error(exc, "instrument module client")
    return True


def uninstrument_module_client() -> None:
    """Undo :func:`instrument_module_client`: the ``openai`` module client is the SDK's again."""
    with _lock:
        for name, base in list(_originals.items()):
            if getattr(_sdk, name, None) is _tracked_of.get(base):
                setattr(_sdk, name, base)
            del _originals[name]
        client = getattr(_sdk, "_client", None)
        if client is not None and _is_tracked(type(client)):
            for base, cls in _tracked_of.items():
                if type(client) is cls:
                    client.__class__ = base  # back to the class it was built as: same layout
                    break


# -- the view handed out by ``tracked_openai.openai`` ----------------------------------------------

# (SDK module client, the view of it, whether the view was tracked when made), replaced whole so
# that a reader never pairs one client with another's view. The SDK's own client, handed out
# while instrumented, stops being tracked when uninstrumented: a view is then made for it.
_view_state: tuple[Any, Any, bool] = (None, None, False)


def load_view() -> Any:
    """The tracked module client of :mod:`tracked_openai.openai`.

    The SDK's loader resolves the client (``api_type``, Azure and Bedrock settings, the error for
    ambiguous credentials) exactly as for ``openai.X``; the view is an instance of the tracked
    subclass sharing that client's state (its HTTP client is ``openai.http_client`` either way),
    without its cached resources, which are bound to the untracked client. It follows the SDK's
    client: rebuilt when the SDK rebuilds its own; the SDK's client itself once it is tracked."""
    plain = _sdk._load_client()
    of, view, tracked = _view_state
    if of is plain and (type(view) in _tracked_classes) is tracked:
        return view
    return _make_view(plain)


def _make_view(plain: Any) -> Any:
    global _view_state
    with _lock:
        of, view, tracked = _view_state
        if of is plain and (type(view) in _tracked_classes) is tracked:
            return view
        view = plain  # untracked if this SDK can't be tracked (warned at import) or on a fault
        if not _is_tracked(type(plain)) and module_client_problem() is None:
            try:
                cls = type(plain)
                shared = {
                    key: value
                    for key, value in plain.__dict__.items()
                    if not isinstance(getattr(cls, key, None), functools.cached_property)
                }
                view = object.__new__(tracked_class(cls))
                view.__dict__.update(shared)
            except Exception as exc:  # a client layout we did not foresee: calls go on untracked
                report_internal_error(exc, "module client view")
                view = plain
        _view_state = (plain, view, type(view) in _tracked_classes)
        return view


def resource_names() -> list[str]:
    """The resources the SDK exposes on its module (``chat``, ``responses``…), from its proxies."""
    try:
        from openai import _module_client
        from openai._utils import LazyProxy
    except Exception:
        return []
    # ``type(value)``: a proxy's ``__class__`` would load the client.
    return sorted(
        name
        for name, value in vars(_module_client).items()
        if not name.startswith("_") and issubclass(type(value), LazyProxy)
    )


def settings_names() -> frozenset[str]:
    """The ``openai.<setting>`` names the module client reads (``api_key``, ``http_client``…)."""
    annotated = getattr(_sdk, "__annotations__", None) or {}
    names = {n for n in annotated if not n.startswith("_")} | set(_KNOWN_SETTINGS)
    return frozenset(n for n in names if hasattr(_sdk, n))

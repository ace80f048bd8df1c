"""``import tracked_openai.openai as openai``: the ``openai`` module, with its module client tracked.

For code written against the SDK's module-level client::

    import tracked_openai.openai as openai        # was: import openai

    openai.api_key = "sk-..."                      # settings work as before
    openai.chat.completions.create(model="gpt-4o", messages=[...])   # recorded

Everything else is the ``openai`` module's own (types, errors, ``NOT_GIVEN``, ``__version__``…),
except the client classes, which are the tracked ones (``OpenAI``, ``AsyncOpenAI``, ``AzureOpenAI``,
``AsyncAzureOpenAI``, and the ``Client``/``AsyncClient`` aliases). Settings (``api_key``,
``base_url``, ``http_client``, ``api_type``…) are read from and written to the ``openai`` module
itself: they are one set of settings, shared with code that imports ``openai``. That code's
``openai.chat...`` calls stay untracked (see :func:`tracked_openai.instrument_module_client` to
track those too). Submodules are imported from ``openai`` as before (``from openai.types...``).
"""

from __future__ import annotations

# Every helper name is private: a public one would hide the ``openai`` attribute of that name
# (``types`` is ``openai.types`` here, not the standard library's).
import sys as _sys
import types as _types
import typing as _t

import openai as _sdk

from ._client import AsyncAzureOpenAI as AsyncAzureOpenAI
from ._client import AsyncOpenAI as AsyncOpenAI
from ._client import AzureOpenAI as AzureOpenAI
from ._client import OpenAI as OpenAI
from ._module_client import load_view as _load_view
from ._module_client import module_client_trackable as _module_client_trackable
from ._module_client import resource_names as _resource_names
from ._module_client import settings_names as _settings_names

Client = OpenAI
AsyncClient = AsyncOpenAI

__all__ = list(getattr(_sdk, "__all__", ()))


def _load_client() -> _t.Any:
    """The tracked module client (the SDK's ``openai._load_client()``, tracked)."""
    return _load_view()


def _make_proxies() -> dict[str, _t.Any]:
    if not callable(getattr(_sdk, "_load_client", None)):
        # No module-client loader to reuse: ``chat`` and the others here are the SDK's own.
        _module_client_trackable()  # says why, once
        return {}
    try:
        from openai._utils import LazyProxy
    except Exception:  # pragma: no cover - present in every supported SDK
        return {}

    class ResourceProxy(LazyProxy[_t.Any]):
        """``openai.<name>`` of the tracked module client, loaded on every use like the SDK's."""

        def __init__(self, name: str) -> None:
            self._tracked_openai_resource = name

        def __load__(self) -> _t.Any:
            return getattr(_load_view(), self._tracked_openai_resource)

    return {name: ResourceProxy(name).__as_proxied__() for name in _resource_names()}


globals().update(_make_proxies())

_SETTINGS = _settings_names()


def __getattr__(name: str) -> _t.Any:
    # What this module does not define is ``openai``'s (PEP 562; type checkers see ``Any``).
    return getattr(_sdk, name)


def __dir__() -> list[str]:
    return sorted(_OWN | set(dir(_sdk)))


class _TrackedOpenAIModule(_types.ModuleType):
    """Writes the module client's settings (``api_key``, ``http_client``…) through to ``openai``."""

    def __setattr__(self, name: str, value: _t.Any) -> None:
        if name in _SETTINGS:
            setattr(_sdk, name, value)
        else:
            super().__setattr__(name, value)


_OWN = frozenset(globals())
_sys.modules[__name__].__class__ = _TrackedOpenAIModule

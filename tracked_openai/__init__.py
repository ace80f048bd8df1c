"""tracked-openai: every OpenAI call your application makes, recorded with its feature, tokens,
cost, latency and outcome.

Swap one import (``from tracked_openai import OpenAI``) and wrap work in ``track(...)``. Code that
uses the SDK's module client (``openai.chat.completions.create(...)``) swaps
``import openai`` for ``import tracked_openai.openai as openai``, or calls
:func:`instrument_module_client` once.
"""

from __future__ import annotations

from ._client import AsyncAzureOpenAI, AsyncOpenAI, AsyncTrackedOpenAI, AzureOpenAI, OpenAI, TrackedOpenAI
from ._module_client import instrument_module_client, uninstrument_module_client
from .budgets import Budget, BudgetExceeded
from .export.runtime import configure, flush, shutdown, start, stats
from .records import CallRecord, Cost, OperationRecord, Usage
from .scope import Operation, current_scope, track

__version__ = "0.1.0"

__all__ = [
    "AsyncAzureOpenAI",
    "AsyncOpenAI",
    "AsyncTrackedOpenAI",
    "AzureOpenAI",
    "Budget",
    "BudgetExceeded",
    "CallRecord",
    "Cost",
    "OpenAI",
    "Operation",
    "OperationRecord",
    "TrackedOpenAI",
    "Usage",
    "configure",
    "current_scope",
    "flush",
    "instrument_module_client",
    "shutdown",
    "start",
    "stats",
    "track",
    "uninstrument_module_client",
]

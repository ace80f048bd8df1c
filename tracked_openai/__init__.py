"""tracked-openai: every OpenAI call your application makes, recorded with its feature, tokens,
cost, latency and outcome.

Swap one import (``from tracked_openai import OpenAI``) and wrap work in ``track(...)``.
"""

from __future__ import annotations

from ._client import AsyncAzureOpenAI, AsyncOpenAI, AsyncTrackedOpenAI, AzureOpenAI, OpenAI, TrackedOpenAI
from ._context import Operation, current_scope, track
from ._runtime import configure, flush, shutdown, start, stats
from .records import CallRecord, Cost, OperationRecord, Usage

__version__ = "0.1.0"

__all__ = [
    "AsyncAzureOpenAI",
    "AsyncOpenAI",
    "AsyncTrackedOpenAI",
    "AzureOpenAI",
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
    "shutdown",
    "start",
    "stats",
    "track",
]

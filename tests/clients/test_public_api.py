"""The public API: ``__all__`` lists exactly the public names the package exports (httpx-style),
and every listed name resolves."""

from __future__ import annotations
import __future__

import importlib
import types

import pytest

import tracked_openai


def _public_names(module: types.ModuleType) -> list[str]:
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        # Submodules become attributes once imported; `from __future__ import annotations` too.
        and not isinstance(value, (types.ModuleType, __future__._Feature))
    )


def test_all_equals_public_names() -> None:
    assert tracked_openai.__all__ == _public_names(tracked_openai)


@pytest.mark.parametrize(
    "module_name",
    [
        "tracked_openai",
        "tracked_openai.decorators",
        "tracked_openai.sinks",
        "tracked_openai.records",
        "tracked_openai.reprice",
        "tracked_openai.reconcile",
        "tracked_openai.budgets",
        "tracked_openai.reports",
        "tracked_openai.reports.http",
    ],
)
def test_every_listed_name_resolves(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert getattr(module, name) is not None, name


def test_documented_surface() -> None:
    import openai

    from tracked_openai import (
        AsyncAzureOpenAI,
        AsyncOpenAI,
        AzureOpenAI,
        OpenAI,
        configure,
        flush,
        shutdown,
        start,
        track,
    )
    from tracked_openai.decorators import (
        track_custom_operation,
        track_dalle_generation,
        track_gpt_text,
        track_gpt_vision,
        track_rag_operation,
    )
    from tracked_openai.sinks import InMemorySink, JsonlSink, Sink

    assert tracked_openai.TrackedOpenAI is OpenAI
    assert tracked_openai.AsyncTrackedOpenAI is AsyncOpenAI
    assert issubclass(OpenAI, openai.OpenAI) and issubclass(AsyncOpenAI, openai.AsyncOpenAI)
    assert issubclass(AzureOpenAI, openai.AzureOpenAI) and issubclass(
        AsyncAzureOpenAI, openai.AsyncAzureOpenAI
    )
    assert all(callable(f) for f in (configure, flush, shutdown, start, track))
    assert all(
        callable(d)
        for d in (
            track_custom_operation,
            track_dalle_generation,
            track_gpt_text,
            track_gpt_vision,
            track_rag_operation,
        )
    )
    assert isinstance(InMemorySink(), Sink)
    assert JsonlSink is not None
    assert isinstance(tracked_openai.__version__, str)


def test_budgets_surface() -> None:
    from tracked_openai import Budget, BudgetExceeded, budgets

    assert Budget is budgets.Budget and BudgetExceeded is budgets.BudgetExceeded
    assert issubclass(BudgetExceeded, Exception)
    assert Budget(feature="f", usd=1).key == "feature=f|day"

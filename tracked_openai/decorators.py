"""The AIFlow tracking decorators, as thin shims over :class:`tracked_openai.track`.

Each decorated call is one operation record (function name, feature, operation, duration, status,
error message and traceback), rolled up with the calls made inside it. They also work on functions
that call the plain ``openai`` client: timing, status and errors are recorded, tokens then come only
from tracked clients' records.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .mlflow.names import CONFIDENCE, finite_number, numeric_metrics
from .scope import track

__all__ = [
    "track_custom_operation",
    "track_dalle_generation",
    "track_gpt_text",
    "track_gpt_vision",
    "track_rag_operation",
]

F = TypeVar("F", bound=Callable[..., Any])


def _confidence(result: Any) -> dict[str, float]:
    """``confidence`` / ``confidence_score`` of a returned mapping or object, if numeric."""
    for key in (CONFIDENCE, "confidence"):
        value = result.get(key) if isinstance(result, Mapping) else getattr(result, key, None)
        number = finite_number(value)
        if number is not None:
            return {CONFIDENCE: number}
    return {}


def _numeric_metrics(result: Any) -> dict[str, float]:
    return numeric_metrics(result) if isinstance(result, Mapping) else {}


def _rag_metrics(result: Any) -> dict[str, float]:
    metrics = _confidence(result)
    if not isinstance(result, Mapping):
        docs = result if isinstance(result, (list, tuple)) else None
        scores = None
    else:
        docs = next(
            (result[k] for k in ("documents", "docs", "retrieved_docs", "results", "sources") if k in result),
            None,
        )
        scores = next(
            (result[k] for k in ("similarity_scores", "scores", "similarities") if k in result),
            None,
        )
        count = finite_number(result.get("retrieved_docs_count"))
        if count is not None:
            metrics["retrieved_docs_count"] = count
    if isinstance(docs, (list, tuple)) and "retrieved_docs_count" not in metrics:
        metrics["retrieved_docs_count"] = float(len(docs))
    if scores is None and isinstance(docs, (list, tuple)):
        found = [
            finite_number(d.get("score") if isinstance(d, Mapping) else getattr(d, "score", None))
            for d in docs
        ]
        scores = [s for s in found if s is not None] or None
    if isinstance(scores, (list, tuple)):
        values = [v for v in (finite_number(s) for s in scores) if v is not None]
        if values:
            metrics["similarity_min"] = min(values)
            metrics["similarity_mean"] = statistics.fmean(values)
            metrics["similarity_max"] = max(values)
    return metrics


def track_gpt_vision(feature: str, operation: str) -> track:
    """Track a function that analyses images with a GPT model (records ``confidence_score``)."""
    return track(feature, operation, _metrics_fn=_confidence, tracking_type="gpt_vision")


def track_gpt_text(feature: str, operation: str) -> track:
    """Track a function that generates or analyses text with a GPT model."""
    return track(feature, operation, _metrics_fn=_confidence, tracking_type="gpt_text")


def track_dalle_generation(feature: str, operation: str = "image_generation") -> track:
    """Track an image-generation function (generation time, cost, prompt parameters)."""
    return track(feature, operation, _metrics_fn=_confidence, tracking_type="image_generation")


def track_rag_operation(feature: str, operation: str) -> track:
    """Track a retrieval step: retrieved docs count and similarity min/mean/max from the result."""
    return track(feature, operation, _metrics_fn=_rag_metrics, tracking_type="rag")


def track_custom_operation(feature: str, operation: str) -> track:
    """Track anything: every numeric value of a returned dict becomes a metric."""
    return track(feature, operation, _metrics_fn=_numeric_metrics, tracking_type="custom")

"""What tracked-openai records: one :class:`CallRecord` per paid API call, one
:class:`OperationRecord` per ``track`` block or decorated function.

Records are plain slotted dataclasses. A tracked client's call records are built, and every
record's derived fields (cost, estimated usage, an operation's roll-up) filled, by
:func:`tracked_openai.export.prepare.prepare` on the exporter's thread, before any sink sees them.
``to_dict()`` gives JSON-safe data; ``record_from_dict()`` reads it back (the spool uses both).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

__all__ = [
    "CallRecord",
    "Cost",
    "OperationRecord",
    "Record",
    "Usage",
    "USAGE_KEYS",
    "LATE_TAG",
    "EXTRAPOLATED_TAG",
    "BUDGET_BLOCKED_TAG",
    "new_record_id",
    "record_from_dict",
    "tag_value",
]

# Tag of a call that finished after its operation's record was submitted: the operation's
# roll-up does not include it, so reports count its cost on its own.
LATE_TAG = "tracked_openai.late_call"
# Tag of a call whose estimated usage (``usage_source="estimated"``) was counted exactly on part
# of the text only and extrapolated to the rest (a very long stream that reported no usage).
EXTRAPOLATED_TAG = "tracked_openai.usage_extrapolated"
# Tag of a call a budget stopped before it was sent (status ``blocked``), and of the operation it
# was made in: the ledger key(s) of the budget(s) it would have exceeded.
BUDGET_BLOCKED_TAG = "tracked_openai.budget_blocked"

USAGE_KEYS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "audio_input_tokens",
    "audio_output_tokens",
    "image_input_tokens",
    "image_output_tokens",
    "images",
    "seconds",
    "characters",
)


_id_prefix = os.urandom(8).hex()
_id_counter = itertools.count()


def _reseed_ids() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count()


# A forked child must not repeat its parent's ids.
os.register_at_fork(after_in_child=_reseed_ids)


def tag_value(value: Any) -> str:
    """A tag or parameter value as text: booleans as ``true``/``false`` (what MLflow's own
    autologging writes, and what a search like ``tags.stream = 'true'`` expects), else ``str``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def new_record_id() -> str:
    """A unique 32-hex-digit id (random per-process prefix + counter); sinks use it to make
    exports idempotent. Cheaper than ``uuid4()``, which costs a system call per record."""
    return f"{_id_prefix}{next(_id_counter):016x}"


@dataclass(slots=True)
class Usage:
    """Billable quantities of one call, read from the response (``None`` = not reported).

    Token fields follow OpenAI's inclusive convention: ``input_tokens`` already includes cached,
    audio and image input tokens; ``output_tokens`` already includes reasoning and audio output.
    """

    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    audio_input_tokens: int | None = None
    audio_output_tokens: int | None = None
    image_input_tokens: int | None = None
    image_output_tokens: int | None = None
    images: int | None = None
    seconds: float | None = None
    characters: int | None = None
    # Hosted tools the response reports (Responses API output items, chat search models):
    # kind -> number of calls, e.g. {"web_search_preview": 1, "file_search": 2}; and per kind what
    # its fee depends on (search context size, containers and memory limit, image model, size and
    # quality). Filled on the exporter thread (``capture.tools``); ``None`` when no tool was used.
    tool_calls: dict[str, int] | None = None
    tool_details: dict[str, dict[str, Any]] | None = None

    @property
    def total_tokens(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    def is_empty(self) -> bool:
        return not self.tool_calls and all(getattr(self, k) is None for k in USAGE_KEYS)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in USAGE_KEYS}
        # Only when a tool was used: most records have none, and their dict stays as it was.
        if self.tool_calls:
            out["tool_calls"] = dict(self.tool_calls)
            out["tool_details"] = {k: dict(v) for k, v in (self.tool_details or {}).items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage:
        data = data or {}
        usage = cls(**{k: data.get(k) for k in USAGE_KEYS})
        if data.get("tool_calls"):
            usage.tool_calls = dict(data["tool_calls"])
            usage.tool_details = dict(data.get("tool_details") or {})
        return usage


@dataclass(slots=True, frozen=True)
class Cost:
    """Cost of a call in USD, exact (``Decimal``). ``total_usd`` includes ``tool_usd``, the
    fees of the hosted tools the call used (``None``: it used none)."""

    input_usd: Decimal
    output_usd: Decimal
    total_usd: Decimal
    tool_usd: Decimal | None = None

    def to_dict(self) -> dict[str, float]:
        out = {
            "input_usd": float(self.input_usd),
            "output_usd": float(self.output_usd),
            "total_usd": float(self.total_usd),
        }
        if self.tool_usd is not None:
            out["tool_usd"] = float(self.tool_usd)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Cost | None:
        if not data:
            return None
        return cls(
            input_usd=Decimal(str(data["input_usd"])),
            output_usd=Decimal(str(data["output_usd"])),
            total_usd=Decimal(str(data["total_usd"])),
            tool_usd=Decimal(str(data["tool_usd"])) if data.get("tool_usd") is not None else None,
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def _from_iso(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


Status = Literal["success", "error", "blocked"]


@dataclass(slots=True, eq=False)
class CallRecord:
    """One paid OpenAI API call."""

    record_id: str = field(default_factory=new_record_id)
    parent_id: str | None = None
    started_at: float = 0.0
    duration_s: float | None = None
    feature: str = "default"
    operation: str | None = None
    function: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    endpoint: str = ""
    provider: str = "openai"
    model: str | None = None
    response_model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    usage: Usage = field(default_factory=Usage)
    usage_source: Literal["response", "estimated", "none"] = "none"
    service_tier: str | None = None
    cost: Cost | None = None
    cost_status: str = "pending"
    pricing_version: str | None = None
    pricing_rule: str | None = None
    status: Status = "success"
    error_type: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    attempts: int = 0
    request_ids: list[str] = field(default_factory=list)
    stream_end: str | None = None
    content: dict[str, Any] | None = None
    # The response's ``output`` items and echoed ``tools`` as the body gave them, kept by
    # ``capture.usage.apply_body`` (possibly on the caller's thread) until the exporter thread
    # reads the hosted tools used from them (``capture.tools``). Never exported.
    tool_source: Any = field(default=None, repr=False)

    kind: Literal["call"] = "call"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "call",
            "record_id": self.record_id,
            "parent_id": self.parent_id,
            "started_at": _iso(self.started_at),
            "duration_s": self.duration_s,
            "feature": self.feature,
            "operation": self.operation,
            "function": self.function,
            "tags": dict(self.tags),
            "endpoint": self.endpoint,
            "provider": self.provider,
            "model": self.model,
            "response_model": self.response_model,
            "params": dict(self.params),
            "stream": self.stream,
            "usage": self.usage.to_dict(),
            "usage_source": self.usage_source,
            "service_tier": self.service_tier,
            "cost": self.cost.to_dict() if self.cost is not None else None,
            "cost_status": self.cost_status,
            "pricing_version": self.pricing_version,
            "pricing_rule": self.pricing_rule,
            "status": self.status,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "http_status": self.http_status,
            "attempts": self.attempts,
            "request_ids": list(self.request_ids),
            "stream_end": self.stream_end,
            "content": self.content,
        }


@dataclass(slots=True, eq=False)
class OperationRecord:
    """One tracked unit of work (a ``track`` block or a decorated function) and its calls."""

    record_id: str = field(default_factory=new_record_id)
    parent_id: str | None = None
    started_at: float = 0.0
    duration_s: float | None = None
    feature: str = "default"
    operation: str | None = None
    function: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # Feature of the enclosing operation (``None`` at top level). When it differs from
    # ``feature`` this operation is a run of its own feature in reports, not a part of its parent.
    parent_feature: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    status: Status = "success"
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    # Roll-up of the calls made inside the block, nested operations' calls included (filled
    # when the record is prepared).
    call_count: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: Decimal | None = None
    unpriced_calls: int = 0
    # The request models of the rolled-up calls, sorted, each once.
    models: list[str] = field(default_factory=list)
    # Set only when the roll-up includes calls of a nested operation of another feature: the
    # calls (and their cost) that belong to this operation's own feature, which is what a
    # report per feature counts for this run. Each call belongs to its innermost feature.
    feature_call_count: int | None = None
    feature_cost_usd: Decimal | None = None
    # The tracked calls (``capture.call.Call``) to roll up; emptied when the record is prepared.
    children: list[Any] = field(default_factory=list)
    # The records of the calls made directly inside this operation (not in nested operations),
    # filled when it is prepared: the traces sink writes an operation's trace, its calls'
    # spans included, in one request (``tracked_openai.sinks.traces``).
    calls: list[CallRecord] = field(default_factory=list)

    kind: Literal["operation"] = "operation"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "operation",
            "record_id": self.record_id,
            "parent_id": self.parent_id,
            "started_at": _iso(self.started_at),
            "duration_s": self.duration_s,
            "feature": self.feature,
            "operation": self.operation,
            "function": self.function,
            "tags": dict(self.tags),
            "parent_feature": self.parent_feature,
            "params": dict(self.params),
            "metrics": dict(self.metrics),
            "status": self.status,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "traceback": self.traceback,
            "call_count": self.call_count,
            "usage": self.usage.to_dict(),
            "cost_usd": float(self.cost_usd) if self.cost_usd is not None else None,
            "unpriced_calls": self.unpriced_calls,
            "models": list(self.models),
            "feature_call_count": self.feature_call_count,
            "feature_cost_usd": float(self.feature_cost_usd) if self.feature_cost_usd is not None else None,
            **({"calls": [c.to_dict() for c in self.calls]} if self.calls else {}),
        }


Record = CallRecord | OperationRecord

_CALL_FIELDS = {f.name for f in fields(CallRecord)} - {"kind", "usage", "cost", "started_at", "tool_source"}
_OP_FIELDS = {f.name for f in fields(OperationRecord)} - {
    "calls",
    "children",
    "kind",
    "usage",
    "cost_usd",
    "feature_cost_usd",
    "started_at",
}


def record_from_dict(data: dict[str, Any]) -> Record:
    """Rebuild a record from :meth:`to_dict` output (used to replay the spool)."""
    if data.get("kind") == "operation":
        op = OperationRecord(**{k: data[k] for k in _OP_FIELDS if k in data})
        op.started_at = _from_iso(data.get("started_at", 0.0))
        op.usage = Usage.from_dict(data.get("usage"))
        cost = data.get("cost_usd")
        op.cost_usd = Decimal(str(cost)) if cost is not None else None
        feature_cost = data.get("feature_cost_usd")
        op.feature_cost_usd = Decimal(str(feature_cost)) if feature_cost is not None else None
        op.calls = [c for c in map(record_from_dict, data.get("calls") or ()) if isinstance(c, CallRecord)]
        return op
    call = CallRecord(**{k: data[k] for k in _CALL_FIELDS if k in data})
    call.started_at = _from_iso(data.get("started_at", 0.0))
    call.usage = Usage.from_dict(data.get("usage"))
    call.cost = Cost.from_dict(data.get("cost"))
    return call

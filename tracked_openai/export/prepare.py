"""On the exporter thread: a submitted item made into its final record.

A tracked call is submitted as it is (``capture.call.Call``) and made into its record here, off
the caller's path: its id, usage (or an estimate), its cost from the price table, and for an
operation the roll-up of its calls. The spool holds final records, so this runs before a batch
is exported or spooled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from .._errors import internal_errors, report_internal_error
from ..records import BUDGET_BLOCKED_TAG, CallRecord, OperationRecord, Record, new_record_id

__all__ = ["budget_hook", "prepare", "register_budget_hooks"]


def prepare(item: Record | Any) -> Record:
    """On the exporter thread: the record of a finished tracked call (``Call.to_record``), or the
    record given, with its derived fields filled: id, estimated usage, cost, operation roll-ups."""
    reservation = getattr(item, "budget", None)  # a tracked call's budget reservation
    record: Record = item if isinstance(item, (CallRecord, OperationRecord)) else _record_of(item)
    if isinstance(record, CallRecord):
        if not record.record_id:  # a tracked call's record is named here, off the caller's path
            record.record_id = new_record_id()
        if record.cost_status == "pending":
            with internal_errors("pricing"):
                # Imported here, on the exporter thread: the price table needs pydantic and
                # PyYAML, which the caller's first call must not wait for.
                from ..pricing import price_record

                price_record(record)
            if record.cost_status == "pending":
                record.cost_status = "error"
        if reservation is not None:
            settle = budget_hook("settle")
            if settle is not None:
                settle(reservation, record)  # the call's budget reservation becomes its exact cost
    elif isinstance(record, OperationRecord):
        children, record.children = record.children, []
        if children:
            _roll_up(record, [(child.record, _in_own_feature(child, record)) for child in children])
            # Its own calls ride with it for the traces sink (one request per trace).
            record.calls = [c.record for c in children if c.record.parent_id == record.record_id]
            _tag_blocked(record)
    return record


def _tag_blocked(op: OperationRecord) -> None:
    """Tag ``op`` with the budgets that blocked calls made directly in it: in the default mode
    those calls are spans of its trace with no run of their own, so its run and its trace are
    where a budget breach shows (nested operations carry their own calls' breaches)."""
    keys = {
        c.tags[BUDGET_BLOCKED_TAG] for c in op.calls if c.status == "blocked" and BUDGET_BLOCKED_TAG in c.tags
    }
    if keys:
        op.tags[BUDGET_BLOCKED_TAG] = ",".join(sorted(keys))


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
        if call.usage.tool_calls:
            tools = op.usage.tool_calls = op.usage.tool_calls or {}
            for kind, count in call.usage.tool_calls.items():
                tools[kind] = tools.get(kind, 0) + count
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


# Budgets sit above the exporter (they guard the client and count a request's tokens with
# capture's counter), so the exporter does not import them: the budgets package registers what
# the exporter calls (warm_up at start, configure, stats, settle once a call is priced).
_budget_hooks: dict[str, Callable[..., Any]] = {}


def register_budget_hooks(**hooks: Callable[..., Any]) -> None:
    _budget_hooks.update(hooks)


def budget_hook(name: str) -> Callable[..., Any] | None:
    return _budget_hooks.get(name)

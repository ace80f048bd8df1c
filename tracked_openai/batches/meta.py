"""Attribution carried in a batch's own ``metadata``: written at ``batches.create``, read back by
whichever process later records the batch's output lines.

OpenAI's limits (the ``metadata`` parameter of ``POST /batches``): at most 16 keys, keys up to 64
characters, values up to 512 characters. A request over them is rejected, so ours are added only
when they fit, and never over a key the caller set: a user whose metadata is full keeps exactly
what they sent, and the lines of that batch fall back to the default feature (logged once).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .._errors import logger

__all__ = [
    "FEATURE_KEY",
    "MAX_KEYS",
    "MAX_KEY_CHARS",
    "MAX_VALUE_CHARS",
    "OPERATION_KEY",
    "TAGS_KEY",
    "Attribution",
    "attribution_of",
    "merged_metadata",
]

MAX_KEYS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512

FEATURE_KEY = "tracked_openai.feature"
OPERATION_KEY = "tracked_openai.operation"
TAGS_KEY = "tracked_openai.tags"

_warned: set[str] = set()


def _warn_once(reason: str, message: str, *args: Any) -> None:
    if reason in _warned:
        return
    _warned.add(reason)
    logger.warning(message, *args)


Attribution = tuple[str | None, str | None, dict[str, str]]


def _ours(feature: str, operation: str | None, tags: Mapping[str, str]) -> dict[str, str]:
    out = {FEATURE_KEY: feature}
    if operation:
        out[OPERATION_KEY] = operation
    if tags:
        out[TAGS_KEY] = json.dumps(dict(tags), separators=(",", ":"), ensure_ascii=False)
    for key, value in list(out.items()):
        if len(value) > MAX_VALUE_CHARS:
            # A value OpenAI would reject: leave it out rather than cut it (a cut JSON is garbage).
            del out[key]
            _warn_once(
                f"long:{key}",
                "tracked_openai: %s is longer than OpenAI's %d-character metadata limit; "
                "not stored on the batch",
                key,
                MAX_VALUE_CHARS,
            )
    return out


def merged_metadata(
    user: Any, feature: str, operation: str | None, tags: Mapping[str, str]
) -> dict[str, str] | None:
    """The metadata to send: the caller's, plus our attribution keys where they fit. ``None``
    when nothing should change (the caller's metadata is not a mapping, or has no room)."""
    if user is None:
        base: dict[str, Any] = {}
    elif isinstance(user, Mapping):
        base = dict(user)
    else:
        return None  # not ours to judge: the SDK and OpenAI answer for it as they would
    ours = {k: v for k, v in _ours(feature, operation, tags).items() if k not in base}
    if not ours:
        return None
    if len(base) + len(ours) > MAX_KEYS:
        # Fewer of ours rather than none: the feature first (it picks the experiment).
        room = MAX_KEYS - len(base)
        if room <= 0:
            _warn_once(
                "full",
                "tracked_openai: a batch's metadata already has %d keys (OpenAI allows %d): its "
                "feature/operation/tags are not stored on it, so its output lines are recorded "
                "under the default feature",
                len(base),
                MAX_KEYS,
            )
            return None
        ours = dict(list(ours.items())[:room])
    return {**base, **ours}


def attribution_of(metadata: Any) -> Attribution:
    """``(feature, operation, tags)`` stored on a batch (``None`` / ``{}`` where absent). Never
    raises: metadata edited by hand may hold anything."""
    if not isinstance(metadata, Mapping):
        return None, None, {}
    feature = metadata.get(FEATURE_KEY)
    operation = metadata.get(OPERATION_KEY)
    tags: dict[str, str] = {}
    raw = metadata.get(TAGS_KEY)
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            tags = {str(k): str(v) for k, v in parsed.items()}
    return (
        feature if isinstance(feature, str) and feature else None,
        operation if isinstance(operation, str) and operation else None,
        tags,
    )

"""Hosted tools a response reports, as usage: ``Usage.tool_calls`` and ``Usage.tool_details``.

Runs on the exporter thread (``call.complete_record``): ``usage.apply_body`` only keeps the body's
``output`` items and echoed ``tools`` on the record (one assignment, possibly on the caller's
thread while a short stream is parsed inline); walking the items happens here.

Responses API: one count per output item of a hosted tool (``web_search_call``, ``file_search_call``,
``code_interpreter_call``, ``image_generation_call``, ``computer_call``, ``mcp_call``), with what the
fee depends on, read from the item or from the tool's configuration (the response echoes the
request's ``tools`` with their defaults filled; the request is the fallback). An output item of a
kind not known here that ends in ``_call`` and is not run on the caller's side is counted under its
own name, so pricing reports it as an unpriced part rather than charging nothing.

Chat Completions search models (``gpt-4o-search-preview``, ``gpt-5-search-api``…) carry a fee per
request: counted as one ``chat_search`` call.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from ..records import CallRecord
from .usage import _get, _int

__all__ = ["apply_tools", "hosted_tools"]

# Output item type -> tool kind (the price entry's name in ``pricing/openai.yaml``'s ``tools``).
# ``web_search_call`` is named after the configured tool (``web_search`` or ``web_search_preview``):
# the two are priced differently.
_ITEM_KINDS = {
    "file_search_call": "file_search",
    "code_interpreter_call": "code_interpreter",
    "image_generation_call": "image_generation",
    "computer_call": "computer_use",
    "mcp_call": "mcp",
}
# Tool calls the caller's own code runs: tokens only, nothing hosted to count.
_CLIENT_SIDE = frozenset(
    {"function_call", "custom_tool_call", "local_shell_call", "shell_call", "apply_patch_call"}
)
_CHAT_SEARCH = re.compile(r"-search-(?:preview|api)(?:-\d{4}-\d{2}-\d{2})?$")
_DEFAULT_MEMORY = "1g"  # OpenAI's default container size


def hosted_tools(
    output: Any, tools: Any, tool_usage: Any = None
) -> tuple[dict[str, int], dict[str, dict[str, Any]]] | None:
    """``(tool_calls, tool_details)`` for a Responses body's ``output`` items, its echoed (or the
    request's) ``tools`` and its ``tool_usage`` block; ``None`` when no hosted tool was used."""
    if not isinstance(output, list):
        return None
    counts: Counter[str] = Counter()
    containers: dict[str, None] = {}
    images: Counter[str] = Counter()
    for item in output:
        kind = _get(item, "type")
        if not isinstance(kind, str) or not kind.endswith("_call") or kind in _CLIENT_SIDE:
            continue
        if kind == "web_search_call":
            counts[_web_search_kind(tools)] += 1
            continue
        name = _ITEM_KINDS.get(kind, kind.removesuffix("_call"))
        counts[name] += 1
        if name == "code_interpreter":
            container = _get(item, "container_id")
            if isinstance(container, str) and container:
                containers[container] = None
        elif name == "image_generation":
            images[f"{_get(item, 'quality') or 'auto'}/{_get(item, 'size') or 'auto'}"] += 1
    searches = _int(_get(_get(tool_usage, "web_search"), "num_requests"))
    if searches:
        kind = _web_search_kind(tools)
        # The billed count where the response gives it (one call may run several searches).
        counts[kind] = max(counts[kind], searches)
    if not counts:
        return None
    details: dict[str, dict[str, Any]] = {}
    for kind in counts:
        if kind.startswith("web_search"):
            config = _tool_config(tools, kind)
            size = _get(config, "search_context_size")
            details[kind] = {"search_context_size": size if isinstance(size, str) else "medium"}
        elif kind == "code_interpreter":
            container = _get(_tool_config(tools, "code_interpreter"), "container")
            memory = _get(container, "memory_limit")
            # One fee per container however many calls use it; an item without its id counts one.
            n = len(containers) + (0 if containers else 1)
            details[kind] = {
                "containers": n,
                "memory_limit": memory if isinstance(memory, str) else _DEFAULT_MEMORY,
            }
        elif kind == "image_generation":
            model = _get(_tool_config(tools, "image_generation"), "model")
            entry: dict[str, Any] = {
                "model": model if isinstance(model, str) else None,
                "images": dict(images),
            }
            tokens = _image_gen_tokens(_get(tool_usage, "image_gen"))
            if tokens:
                entry["tokens"] = tokens
            details[kind] = entry
    return dict(counts), details


def _web_search_kind(tools: Any) -> str:
    if isinstance(tools, list):
        for tool in tools:
            kind = _get(tool, "type")
            if isinstance(kind, str) and kind.startswith("web_search"):
                return "web_search_preview" if kind.startswith("web_search_preview") else "web_search"
    return "web_search"


def _tool_config(tools: Any, kind: str) -> Any:
    if isinstance(tools, list):
        for tool in tools:
            name = _get(tool, "type")
            if isinstance(name, str) and name.startswith(kind):
                return tool
    return None


def _image_gen_tokens(block: Any) -> dict[str, int] | None:
    """The image tool's own tokens (``tool_usage.image_gen``), when the response reports any."""
    total = _int(_get(block, "total_tokens"))
    if not total:
        return None
    details_in = _get(block, "input_tokens_details")
    details_out = _get(block, "output_tokens_details")
    out = {
        "input_tokens": _int(_get(block, "input_tokens")),
        "image_input_tokens": _int(_get(details_in, "image_tokens")),
        "output_tokens": _int(_get(block, "output_tokens")),
        "image_output_tokens": _int(_get(details_out, "image_tokens")),
    }
    return {k: v for k, v in out.items() if v is not None}


def apply_tools(record: CallRecord, endpoint: str, request: dict[str, Any]) -> None:
    """Exporter thread: the hosted tools ``record``'s response reported, into its usage."""
    source, record.tool_source = record.tool_source, None
    found = None
    if source is not None:
        tools = _get(source, "tools")
        requested = request.get("tools")
        if not tools and isinstance(requested, list):
            tools = requested
        found = hosted_tools(_get(source, "output"), tools, _get(source, "tool_usage"))
    elif endpoint == "chat.completions" and record.status == "success" and not record.usage.is_empty():
        model = record.response_model or record.model
        if model and _CHAT_SEARCH.search(model):
            options = request.get("web_search_options")
            size = options.get("search_context_size") if isinstance(options, dict) else None
            found = {"chat_search": 1}, {"chat_search": {"search_context_size": size or "medium"}}
    if found is not None:
        record.usage.tool_calls, record.usage.tool_details = found

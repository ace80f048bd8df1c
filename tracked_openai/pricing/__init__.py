"""Versioned OpenAI price tables and the cost of one call.

Price tables are YAML files (``pricing/*.yaml`` in the source tree, ``tracked_openai/_pricing_data``
in a wheel), validated by the pydantic models below. A user file or folder
(``TRACKED_OPENAI_PRICING`` or ``configure(pricing=...)``) overrides or extends them: a model
entry in a user file replaces the shipped entry of the same name as a whole.

:func:`price_record` runs on the exporter thread for every call record. It never raises and, once
a model name has been resolved (cached per book), costs a few microseconds: the YAML is compiled at
load into per-tier rate tuples with every fallback already applied.

``cost_status`` values set here:

* ``"priced"``: ``cost`` holds the exact cost (``Decimal`` USD) from usage the response reported.
* ``"estimated"``: priced, but from usage the library estimated (``usage_source == "estimated"``).
* ``"unpriced"``: ``cost`` is ``None``: the model is unknown, or the price table has no rate for
  what was used (a service tier, an image size/quality, a unit). Warned once per model and reason.
* ``"partial"``: ``cost`` holds the priced parts, but the fee of a hosted tool the call used
  (``Usage.tool_calls``) could not be priced (no entry in ``tools``, or none for what was used):
  ``pricing_rule`` names it after ``tools unpriced:``. Never counted as $0.
* ``"no_usage"``: ``cost`` is ``None``: nothing billable was reported or estimated (e.g. a failed
  call, or a stream without a usage chunk).

``pricing_rule`` says how the model was found (``"exact"``, ``"snapshot->gpt-4o"``,
``"fine-tune->ft:gpt-4o-mini-2024-07-18"``, ``"azure-spelling->gpt-3.5-turbo"``, …) plus the
tier / long-context / history period used, e.g. ``"exact; tier=priority; until 2024-10-02"``.

The package: ``schema`` (the file's pydantic models), ``load`` (YAML with line numbers),
``book`` (compiled tables, model resolution, the book in use), ``cost`` (one record's cost),
``tools`` (hosted tools' fees), ``genai_prices`` (a draft table from the genai-prices package, for
``pricing import-genai-prices``).
"""

from __future__ import annotations

from .book import PriceBook, get_price_book, load_price_book, use_pricing
from .cost import price_record
from .load import load_price_file, load_price_files, parse_price_text, shipped_pricing_dir
from .schema import ModelPrice, PriceFile, PricingError

__all__ = [
    "ModelPrice",
    "PriceBook",
    "PriceFile",
    "PricingError",
    "get_price_book",
    "load_price_book",
    "load_price_file",
    "load_price_files",
    "parse_price_text",
    "price_record",
    "shipped_pricing_dir",
    "use_pricing",
]

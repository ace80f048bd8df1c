"""Price a model the shipped tables do not know (a fine-tune, a negotiated rate): a small YAML
file, loaded with ``configure(pricing=...)`` or ``TRACKED_OPENAI_PRICING=path``."""

import tempfile
from pathlib import Path

from _offline import offline_openai

import tracked_openai
from tracked_openai import OpenAI, track

PRICES = """\
version: "acme-2026.11"
currency: USD
models:
  ft-pid-checker:          # USD per 1M tokens
    source: "ACME contract 2026-11"
    input: 2.0
    output: 8.0
"""

path = Path(tempfile.mkdtemp()) / "prices.yaml"
path.write_text(PRICES)
tracked_openai.configure(pricing=path)

with offline_openai():
    client = OpenAI()
    with track("pid_verification", "fine_tuned_check"):
        client.chat.completions.create(
            model="ft-pid-checker", messages=[{"role": "user", "content": "Check P&ID-101."}]
        )

tracked_openai.flush()
print("recorded 1 call priced from", path.name)

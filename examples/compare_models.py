"""Model comparison: the same prompts on two models, then cost and latency per model from the
report, over this run's calls only (``tracked-openai report --feature pfd_conversion --operation
model_comparison --since <start> --by model`` shows the same table)."""

from datetime import UTC, datetime

from _offline import offline_openai

import tracked_openai
from tracked_openai import OpenAI, reports, track

PROMPTS = [
    "Convert PFD-A (feed preheat) to a P&ID line list.",
    "Convert PFD-B (amine regeneration) to a P&ID line list.",
    "Convert PFD-C (sour water stripper) to a P&ID line list.",
]

started = datetime.now(UTC)
with offline_openai():
    client = OpenAI()
    for model in ("gpt-4o", "gpt-4o-mini"):
        for prompt in PROMPTS:
            with track("pfd_conversion", "model_comparison", candidate=model):
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])

tracked_openai.flush()
# Only this script's operation, since it started: other pfd_conversion work in the same store
# (and earlier runs of this script) stays out of the comparison.
metrics = reports.feature_metrics("pfd_conversion", since=started, operation="model_comparison")
print(f"{'model':<20} {'calls':>5} {'avg latency':>12} {'cost/call':>12}")
for row in metrics["by_model"]:  # keyed by the served model (gpt-4o answers as a dated snapshot)
    cost = f"${row['avg_cost_per_call']:.6f}"
    print(f"{row['key']:<20} {row['total_calls']:>5} {row['avg_execution_time']:>11.3f}s {cost:>12}")

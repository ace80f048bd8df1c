"""Model comparison: the same prompts on two models, then cost and latency per model from the
report (``tracked-openai report --feature pfd_conversion --by model`` shows the same table)."""

from _offline import offline_openai

import tracked_openai
from tracked_openai import OpenAI, reports, track

PROMPTS = [
    "Convert PFD-A (feed preheat) to a P&ID line list.",
    "Convert PFD-B (amine regeneration) to a P&ID line list.",
    "Convert PFD-C (sour water stripper) to a P&ID line list.",
]

with offline_openai():
    client = OpenAI()
    for model in ("gpt-4o", "gpt-4o-mini"):
        for prompt in PROMPTS:
            with track("pfd_conversion", "model_comparison", candidate=model):
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])

tracked_openai.flush()
metrics = reports.feature_metrics("pfd_conversion")
print(f"{'model':<20} {'calls':>5} {'avg latency':>12} {'cost/call':>12}")
for row in metrics["by_model"]:  # keyed by the served model (gpt-4o answers as a dated snapshot)
    cost = f"${row['avg_cost_per_call']:.6f}"
    print(f"{row['key']:<20} {row['total_calls']:>5} {row['avg_execution_time']:>11.3f}s {cost:>12}")

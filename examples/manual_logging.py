"""Manual logging, as in the original system: ``mlflow_tracker.log_experiment_result``."""

import tracked_openai
from tracked_openai.tracker import mlflow_tracker

mlflow_tracker.log_experiment_result(
    feature="pfd_conversion",
    operation="spec_generation",
    params={"model": "gpt-4o", "temperature": 0.7},
    metrics={"tokens_used": 1500, "confidence": 0.95},
    tags={"version": "2.0"},
)
print("enabled:", mlflow_tracker.enabled, "tracking_uri:", mlflow_tracker.tracking_uri)
tracked_openai.flush()
print("logged 1 manual result to pfd_conversion")

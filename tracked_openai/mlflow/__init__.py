"""MLflow mapping: names, runs, traces and the store."""

"""Reports over what tracked-openai wrote to MLflow: per-feature cost, latency and reliability.

Everything here reads the tracking store with :class:`mlflow.MlflowClient` (the same store the
MLflow sink writes), page by page, so a report over 100k runs never holds 100k runs in memory:
each page is folded into running sums and dropped. Only one float per run is kept, for the
latency percentiles.

The rule (docs/reports.md, "What is counted"): **every call belongs to its innermost operation and
that operation's feature**, and is counted once, there. An operation's own MLflow run rolls up every
call made inside it, nested operations' calls included, but a report never adds those roll-ups:

* A **run** (``total_runs``, ``success_rate``, ``avg_execution_time``, latency percentiles,
  ``avg_confidence``) is a top-level run of its feature: an operation with no enclosing operation
  or whose enclosing operation is in another feature (tag ``parent_feature``), or a call made
  outside any operation. Operations nested in an operation of the same feature, and calls made
  inside operations, are children, not runs.
* **Calls, tokens and cost** are summed over call runs, each under its own feature, operation,
  model and day. So ``track("fraud_check")`` inside ``track("checkout")``: the fraud check's calls
  and cost are fraud_check's, the rest checkout's, and the all-features total has each call once.
  The cost an operation's run carries itself (``cost_usd``) is added only when no call is rolled
  up into it: a cost logged by hand (``mlflow_tracker.log_experiment_result``).

The package: ``query`` (features, experiments, runs page by page), ``aggregate`` (totals and
breakdowns), ``http`` (the REST endpoints' bodies, framework-free); the store checks are in
``tracked_openai.mlflow.store``.
"""

from __future__ import annotations

from ..mlflow.names import DEFAULT_FEATURES, FEATURE_TAG, experiment_name
from ..mlflow.store import (
    StoreNotFoundError,
    StoreUnavailableError,
    check_store,
    display_uri,
    resolve_tracking_uri,
)
from .aggregate import feature_metrics, tracking_enabled
from .query import BREAKDOWNS, UnknownFeatureError, experiments, iter_runs, parse_when, recent_runs
from .totals import METHODS, call_totals, parse_method

__all__ = [
    "BREAKDOWNS",
    "DEFAULT_FEATURES",
    "FEATURE_TAG",
    "METHODS",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "UnknownFeatureError",
    "call_totals",
    "check_store",
    "display_uri",
    "experiment_name",
    "experiments",
    "feature_metrics",
    "iter_runs",
    "parse_method",
    "parse_when",
    "recent_runs",
    "resolve_tracking_uri",
    "tracking_enabled",
]

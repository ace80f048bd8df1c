"""Fill an embedded SQLite MLflow store with many call runs, fast.

MLflow creates the store (its own schema and migrations) and the experiments; the runs go in as
plain SQL inserts into MLflow's tables, with the tags, metrics and params the MLflow sink writes
for each record (``run_fields``), so reports and ``reprice`` read them as the sink's own runs.
About 10k runs a second, against ~30 through ``MlflowClient``. Used by tests and by
``benchmarks/reports.py``.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable
from pathlib import Path

from tracked_openai import reports
from tracked_openai.records import CallRecord
from tracked_openai.sinks.mlflow import run_fields

__all__ = ["seed_calls"]


def seed_calls(db: Path, records: Iterable[CallRecord]) -> dict[str, str]:
    """Write ``records`` (priced already) as top-level call runs; returns ``{record_id: run_id}``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiments: dict[str, int] = {}
    runs, tags, metrics, params = [], [], [], []
    ids: dict[str, str] = {}
    for record in records:
        exp = experiments.get(record.feature)
        if exp is None:
            exp = experiments[record.feature] = int(
                client.create_experiment(
                    reports.experiment_name(record.feature), tags={reports.FEATURE_TAG: record.feature}
                )
            )
        name, t, m, p = run_fields(record)
        run_id = uuid.uuid4().hex
        ids[record.record_id] = run_id
        start = round(record.started_at * 1000)
        end = start + round((record.duration_s or 0) * 1000)
        status = "FINISHED" if record.status == "success" else "FAILED"
        runs.append((run_id, name, "LOCAL", "", "", "seed", status, start, end, "", "active", "", exp))
        tags.extend((k, v, run_id) for k, v in t.items())
        tags.append(("mlflow.runName", name, run_id))
        metrics.extend((k, v, end, 0, 0, run_id) for k, v in m.items())
        params.extend((k, v, run_id) for k, v in p.items())
    con = sqlite3.connect(db)
    with con:
        con.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id,"
            " status, start_time, end_time, source_version, lifecycle_stage, artifact_uri,"
            " experiment_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            runs,
        )
        con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tags)
        con.executemany(
            "INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)",
            metrics,
        )
        con.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)",
            metrics,
        )
        con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", params)
    con.close()
    return ids

"""Seed an MLflow store the way the MLflow sink writes it (the mapping contract), for report tests.

``seed_contract_store`` writes a small, hand-checkable data set with :class:`MlflowClient`;
the expected aggregates are computed by hand in ``tests/reports/test_reports.py``. ``seed_through_library``
produces runs through the real pipeline (tracked client over the fake transport, decorators,
``MlflowSink``) once that sink exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from tracked_openai.reports import FEATURE_TAG, experiment_name

D1 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
D2 = datetime(2026, 11, 21, 15, 30, tzinfo=UTC)


@dataclass
class Seeded:
    uri: str
    run_ids: dict[str, str] = field(default_factory=dict)


def _ms(when: datetime, offset_s: float = 0.0) -> int:
    return int((when.timestamp() + offset_s) * 1000)


class _Writer:
    def __init__(self, uri: str) -> None:
        self.client = MlflowClient(tracking_uri=uri)
        self.experiments: dict[str, str] = {}

    def experiment(self, feature: str) -> str:
        if feature not in self.experiments:
            self.experiments[feature] = self.client.create_experiment(
                experiment_name(feature), tags={FEATURE_TAG: feature}
            )
        return self.experiments[feature]

    def run(
        self,
        *,
        feature: str,
        kind: str,
        when: datetime,
        status: str = "success",
        parent: str | None = None,
        operation: str | None = None,
        model: str | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        offset_s: float = 0.0,
    ) -> str:
        all_tags = {"kind": kind, "feature": feature, "status": status, **(tags or {})}
        if operation:
            all_tags["operation"] = operation
        if model:
            all_tags["model"] = model
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        if status == "error":
            all_tags.setdefault("error_type", "APIError")
            all_tags.setdefault("error_message", "boom")
        start = _ms(when, offset_s)
        run = self.client.create_run(self.experiment(feature), start_time=start, tags=all_tags)
        run_id: str = run.info.run_id
        ts = start
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, ts, 0) for k, v in (metrics or {}).items()],
            params=[Param("model", model)] if model else [],
            tags=[RunTag("record_id", run_id[:16])],
        )
        end = start + int(1000 * (metrics or {}).get("execution_time", 0.0))
        self.client.set_terminated(run_id, "FINISHED" if status == "success" else "FAILED", end)
        return run_id


def seed_contract_store(uri: str) -> Seeded:
    """The data set whose aggregates ``test_reports.py`` checks by hand."""
    w = _Writer(uri)
    s = Seeded(uri)
    pid = "pid_verification"
    a = s.run_ids["A"] = w.run(
        feature=pid, kind="operation", when=D1, operation="image_analysis",
        metrics={"execution_time": 2.0, "confidence_score": 0.9, "cost_usd": 0.03, "call_count": 2},
    )
    w.run(feature=pid, kind="call", when=D1, parent=a, operation="image_analysis", model="gpt-4o",
          metrics={"execution_time": 0.8, "prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
                   "cost_usd": 0.01}, tags={"cost_status": "priced", "usage_source": "response"})
    w.run(feature=pid, kind="call", when=D1, parent=a, operation="image_analysis", model="gpt-4o",
          metrics={"execution_time": 1.0, "prompt_tokens": 200, "completion_tokens": 100, "total_tokens": 300,
                   "cached_tokens": 50, "cost_usd": 0.02},
          tags={"cost_status": "priced", "usage_source": "response"})
    b = s.run_ids["B"] = w.run(
        feature=pid, kind="operation", when=D1, status="error", operation="image_analysis", offset_s=60,
        metrics={"execution_time": 1.0, "cost_usd": 0.005, "call_count": 2},
    )
    w.run(feature=pid, kind="call", when=D1, parent=b, operation="image_analysis", model="gpt-4o-mini",
          offset_s=60, metrics={"execution_time": 0.5, "prompt_tokens": 300, "completion_tokens": 20,
                                "total_tokens": 320, "cost_usd": 0.005},
          tags={"cost_status": "priced", "usage_source": "response"})
    # A failed call that never got an answer: no usage, no cost, and not "unpriced".
    w.run(feature=pid, kind="call", when=D1, parent=b, operation="image_analysis", model="gpt-4o-mini",
          status="error", offset_s=61, metrics={"execution_time": 0.2},
          tags={"usage_source": "none"})
    # A top-level call to a model without a price.
    s.run_ids["C"] = w.run(
        feature=pid, kind="call", when=D2, model="mystery-model",
        metrics={"execution_time": 0.4, "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                 "reasoning_tokens": 3},
        tags={"cost_status": "unpriced", "usage_source": "response"},
    )
    # An operation with a nested operation holding one call: D's cost already includes E1.
    d = s.run_ids["D"] = w.run(
        feature=pid, kind="operation", when=D2, operation="report", offset_s=60,
        metrics={"execution_time": 3.0, "confidence_score": 0.7, "cost_usd": 0.002, "call_count": 1},
    )
    e = w.run(feature=pid, kind="operation", when=D2, parent=d, operation="sub", offset_s=61,
              metrics={"execution_time": 1.5, "cost_usd": 0.002, "call_count": 1})
    w.run(feature=pid, kind="call", when=D2, parent=e, operation="sub", model="gpt-4o-mini", offset_s=62,
          metrics={"execution_time": 1.2, "prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50,
                   "cost_usd": 0.002}, tags={"cost_status": "priced", "usage_source": "response"})
    # Another feature: one top-level call.
    s.run_ids["F"] = w.run(
        feature="crs_analysis", kind="call", when=D2, model="gpt-4o", offset_s=120,
        metrics={"execution_time": 0.6, "prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10,
                 "cost_usd": 0.001}, tags={"cost_status": "priced", "usage_source": "response"},
    )
    return s


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _chat_body(model: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop",
             "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def seed_through_library(uri: str) -> None:
    """Runs written by the library itself: tracked client over the fake transport, the
    decorators and ``track``, exported by ``MlflowSink`` into ``uri``.

    - ``pid_verification``: P1 (vision decorator, 2 gpt-4o-mini calls, confidence 0.9),
      P2 (``track`` block: 1 gpt-4o-mini call, then a 400 error → operation failed),
      N (operation ``report`` with nested operation ``sub`` holding 1 gpt-4o-mini call).
    - ``default`` (the default feature): one top-level call to an unpriced model.

    Every gpt-4o-mini call is 1000 prompt / 200 completion tokens: 0.00027 USD at $0.15/$0.60
    per 1M tokens.
    """
    import openai

    import tracked_openai
    from tests.helpers.fakeopenai import FakeOpenAI, FakeResponse
    from tracked_openai import track
    from tracked_openai.decorators import track_gpt_vision
    from tracked_openai.sinks.mlflow import MlflowSink

    fake = FakeOpenAI()
    ok = FakeResponse(json_body=_chat_body("gpt-4o-mini", 1000, 200))
    fake.add("POST", "/chat/completions", lambda request: (
        FakeResponse(status=400, json_body={"error": {"message": "bad", "type": "invalid_request_error",
                                                      "param": None, "code": None}})
        if b'"broken"' in request.content
        else FakeResponse(json_body=_chat_body("mystery-model-1", 10, 5))
        if b'"mystery-model"' in request.content
        else ok
    ))
    messages: Any = [{"role": "user", "content": "check"}]
    sink = MlflowSink(tracking_uri=uri)
    tracked_openai.configure(sinks=[sink], enabled=True)
    client = tracked_openai.OpenAI(api_key="sk-test", http_client=fake.sync_client(), max_retries=0)
    try:

        @track_gpt_vision("pid_verification", "image_analysis")
        def analyze() -> dict[str, float]:
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            return {"confidence": 0.9}

        analyze()
        try:
            with track("pid_verification", "image_analysis"):
                client.chat.completions.create(model="gpt-4o-mini", messages=messages)
                client.chat.completions.create(model="broken", messages=messages)
        except openai.BadRequestError:
            pass
        with track("pid_verification", "report"), track(None, "sub"):
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        client.chat.completions.create(model="mystery-model", messages=messages)
        assert tracked_openai.flush(timeout=60)
    finally:
        client.close()
        tracked_openai.shutdown(timeout=30)
        tracked_openai.configure(sinks=[])


def chat_by_model(request: Any) -> Any:
    """A chat answer from the model the request names (1000 prompt / 200 completion tokens)."""
    import json

    from tests.helpers.fakeopenai import FakeResponse

    return FakeResponse(json_body=_chat_body(json.loads(request.content)["model"], 1000, 200))


def checkout_with_fraud_check(client: Any) -> None:
    """``track("fraud_check")`` inside ``track("checkout")``: two checkout calls (gpt-4o-mini)
    around one fraud-check call (gpt-4o)."""
    from tracked_openai import track

    messages: Any = [{"role": "user", "content": "order 42"}]
    with track("checkout", "place_order"):
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        with track("fraud_check", "score"):
            client.chat.completions.create(model="gpt-4o", messages=messages)
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)


def seed_nested_features(uri: str) -> dict[str, float]:
    """Write :func:`checkout_with_fraud_check` into ``uri`` through the library (tracked client,
    exporter, ``MlflowSink``); returns the cost of each feature's own calls as recorded."""
    import tracked_openai
    from tests.helpers.fakeopenai import FakeOpenAI
    from tracked_openai.sinks import InMemorySink
    from tracked_openai.sinks.mlflow import MlflowSink

    fake = FakeOpenAI().add("POST", "/chat/completions", chat_by_model)
    memory = InMemorySink()
    tracked_openai.configure(sinks=[MlflowSink(tracking_uri=uri), memory], enabled=True)
    client = tracked_openai.OpenAI(api_key="sk-test", http_client=fake.sync_client(), max_retries=0)
    try:
        checkout_with_fraud_check(client)
        assert tracked_openai.flush(timeout=60)
    finally:
        client.close()
        tracked_openai.shutdown(timeout=30)
        tracked_openai.configure(sinks=[])
    costs: dict[str, float] = {}
    for call in memory.calls:
        assert call.cost is not None
        costs[call.feature] = costs.get(call.feature, 0.0) + float(call.cost.total_usd)
    return costs

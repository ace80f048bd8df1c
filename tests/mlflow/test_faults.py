"""The exporter and the MLflow sink against real ``mlflow server`` processes, with faults.

Each fault test asserts the two bars: no exception reaches the caller, and every record ends up
in MLflow exactly once (counted by ``record_id``) after recovery.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import tracked_openai
from tests.helpers.fakeopenai import FakeOpenAI, FakeResponse
from tests.helpers.mlflow_server import (  # noqa: F401 - fixtures
    FaultProxy,
    MlflowServer,
    mlflow_pg_server,
    mlflow_server,
    restartable_server,
)
from tracked_openai import _errors
from tracked_openai.export import runtime as _runtime
from tracked_openai.export.queue import Exporter
from tracked_openai.export.spool import Spool
from tracked_openai.mlflow.names import experiment_name
from tracked_openai.records import CallRecord, OperationRecord, Usage
from tracked_openai.sinks.mlflow import MlflowSink

pytestmark = pytest.mark.server  # every test here runs against `mlflow server` processes

FAST = {"flush_interval": 0.05, "retry_initial": 0.05, "retry_max": 0.5, "retry_attempts": 3}


def make_calls(n: int, feature: str) -> list[CallRecord]:
    now = time.time()
    return [
        CallRecord(
            started_at=now + i * 1e-4, duration_s=0.05, feature=feature, endpoint="chat.completions",
            model="gpt-4o-mini", params={"temperature": 0.1}, usage=Usage(input_tokens=100, output_tokens=20),
        )
        for i in range(n)
    ]


def record_ids_in(uri: str, feature: str) -> list[str]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment_name(feature))
    if exp is None:
        return []
    ids: list[str] = []
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=5000, page_token=token)
        ids.extend(r.data.tags["record_id"] for r in page)
        token = page.token
        if not token:
            return ids


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


@pytest.fixture
def errors() -> Iterator[list[BaseException]]:
    seen: list[BaseException] = []
    _errors.set_internal_error_hook(seen.append)
    try:
        yield seen
    finally:
        _errors.set_internal_error_hook(None)


@pytest.fixture
def exporters(tmp_path: Path) -> Iterator[Any]:
    made: list[Exporter] = []

    def factory(uri: str, **kw: Any) -> Exporter:
        opts = {**FAST, "spool_dir": tmp_path / "spool", "prepare": _runtime.prepare, **kw}
        exporter = Exporter([MlflowSink(uri)], **opts)
        made.append(exporter)
        return exporter

    yield factory
    for exporter in made:
        exporter.shutdown(10)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest) -> MlflowServer:
    name = "mlflow_server" if request.param == "sqlite" else "mlflow_pg_server"
    srv: MlflowServer = request.getfixturevalue(name)
    return srv


def test_records_reach_server_once(server: MlflowServer, exporters: Any, errors: list[BaseException]) -> None:
    """Over HTTP (SQLite or PostgreSQL backend): every record is one run, and exporting the same
    records again (a replay) adds nothing."""
    feature = f"http_{server.port}_{time.time_ns()}"
    exporter = exporters(server.url)
    op = OperationRecord(started_at=time.time(), duration_s=1.0, feature=feature, operation="batch_job")
    calls = make_calls(20, feature)
    for c in calls:
        c.parent_id = op.record_id
    for record in [*calls, op]:
        exporter.submit(record)
    assert exporter.flush(60)
    ids = record_ids_in(server.url, feature)
    assert sorted(ids) == sorted(r.record_id for r in [*calls, op])
    MlflowSink(server.url).export([*calls, op])
    assert len(record_ids_in(server.url, feature)) == 21
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name(feature)
    op_run = client.search_runs([exp.experiment_id], filter_string=f"tags.record_id = '{op.record_id}'")[0]
    parent_filter = f"tags.mlflow.parentRunId = '{op_run.info.run_id}'"
    nested = client.search_runs([exp.experiment_id], filter_string=parent_filter, max_results=100)
    assert len(nested) == 20
    assert exporter.stats()["spooled"] == 0 and not errors


def test_fresh_connections_opt_in_scoped_to_writer_threads(
    mlflow_server: MlflowServer, errors: list[BaseException]  # noqa: F811
) -> None:
    """``fresh_connections=True`` sends ``Connection: close`` from the sink's writer threads only
    (the host's own MLflow requests keep their headers), and records still arrive once each."""
    from mlflow.tracking.request_header.registry import resolve_request_headers

    assert MlflowSink(mlflow_server.url).fresh_connections is False  # the default
    sink = MlflowSink(mlflow_server.url, fresh_connections=True)
    seen: dict[str, dict[str, str]] = {}

    def writer() -> None:
        sink._init_writer_thread()
        seen["writer"] = resolve_request_headers()

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    assert seen["writer"].get("Connection") == "close"
    assert "Connection" not in resolve_request_headers()

    feature = f"fresh_{time.time_ns()}"
    records = make_calls(12, feature)
    sink.export(records)
    assert sorted(record_ids_in(mlflow_server.url, feature)) == sorted(r.record_id for r in records)
    assert not errors


def test_server_down_at_start_spools_then_replays(
    restartable_server: MlflowServer, exporters: Any, errors: list[BaseException]  # noqa: F811
) -> None:
    feature = "down_at_start"
    restartable_server.kill()  # down (a no-op when it never started)
    exporter = exporters(restartable_server.url)
    records = make_calls(30, feature)
    for record in records:
        exporter.submit(record)  # the server isn't even running: must not raise or block
    exporter.flush(30)
    stats = exporter.stats()
    assert stats["spooled"] == 30 and stats["exported"] == 0
    restartable_server.start()
    assert wait_for(lambda: exporter.stats()["replayed"] == 30, 60)
    assert sorted(record_ids_in(restartable_server.url, feature)) == sorted(r.record_id for r in records)
    assert not errors


@pytest.mark.slow
def test_server_killed_and_restarted_during_burst(
    restartable_server: MlflowServer, exporters: Any, errors: list[BaseException]  # noqa: F811
) -> None:
    """A burst while the server crashes and comes back: exactly one run per record.
    (The 10,000-call version is ``benchmarks/exporter.py --burst``.)"""
    feature = "burst_restart"
    restartable_server.start()
    exporter = exporters(restartable_server.url, batch_size=50)
    records = make_calls(250, feature)
    submit_times: list[float] = []

    def produce() -> None:
        for record in records:
            t0 = time.perf_counter()
            exporter.submit(record)
            submit_times.append(time.perf_counter() - t0)
            time.sleep(0.002)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.3)
    restartable_server.kill()
    time.sleep(0.5)
    restartable_server.start()
    producer.join()
    assert exporter.flush(120)
    assert wait_for(lambda: exporter.stats()["exported"] == 250, 120), exporter.stats()
    ids = record_ids_in(restartable_server.url, feature)
    assert len(ids) == 250 and set(ids) == {r.record_id for r in records}
    assert max(submit_times) < 0.05  # the caller never waited for the outage
    assert exporter.stats()["spooled"] > 0  # the outage was real
    assert not errors


@pytest.fixture
def proxy(mlflow_server: MlflowServer) -> Iterator[FaultProxy]:  # noqa: F811
    p = FaultProxy(mlflow_server.port, delay=0.3)
    try:
        yield p
    finally:
        p.close()


def test_slow_server_never_slows_the_caller(
    proxy: FaultProxy, exporters: Any, errors: list[BaseException]
) -> None:
    feature = f"slow_{time.time_ns()}"
    exporter = exporters(proxy.url)
    proxy.mode = "slow"
    records = make_calls(20, feature)
    t0 = time.perf_counter()
    for record in records:
        exporter.submit(record)
    assert time.perf_counter() - t0 < 0.1
    assert exporter.flush(120)
    assert proxy.hits["slow"] > 0
    assert sorted(record_ids_in(proxy.upstream_url, feature)) == sorted(r.record_id for r in records)
    assert not errors


def test_5xx_answers_are_retried_spooled_and_replayed(
    proxy: FaultProxy, tmp_path: Path, fake: FakeOpenAI, errors: list[BaseException]
) -> None:
    """Through the real client path: tracked calls succeed while MLflow answers 503; the records
    are retried, spooled, and replayed once the server answers again."""
    feature = f"five_xx_{time.time_ns()}"
    fake.add("POST", "/chat/completions", FakeResponse.from_fixture("chat_gpt5_nano_reasoning"))
    client = tracked_openai.OpenAI(api_key="sk-test-hardcoded", http_client=fake.sync_client(), max_retries=0)
    saved = dataclasses.replace(_runtime.settings)
    _runtime.configure(sinks=[MlflowSink(proxy.url)], spool_dir=str(tmp_path / "spool"), **FAST)
    try:
        proxy.mode = "503"
        with tracked_openai.track(feature, "checks"):
            for _ in range(10):
                out = client.chat.completions.create(
                    model="gpt-5-nano", messages=[{"role": "user", "content": "x"}]
                )
                assert out.usage is not None
        _runtime.flush(30)
        stats = _runtime.stats()
        assert stats["retried"] > 0 and stats["spooled"] == 11 and stats["exported"] == 0
        assert proxy.hits["503"] > 0
        proxy.mode = "pass"
        assert wait_for(lambda: _runtime.stats()["replayed"] == 11, 60), _runtime.stats()
        ids = record_ids_in(proxy.upstream_url, feature)
        assert len(ids) == 11 and len(set(ids)) == 11
        assert not errors
    finally:
        client.close()
        _runtime.shutdown(10)
        for field in dataclasses.fields(saved):
            setattr(_runtime.settings, field.name, getattr(saved, field.name))
        _runtime.configure(sinks=[])


def test_queue_full_against_server_loses_nothing(
    mlflow_server: MlflowServer, exporters: Any, errors: list[BaseException]  # noqa: F811
) -> None:
    feature = f"queue_full_{time.time_ns()}"
    exporter = exporters(mlflow_server.url, queue_size=5, batch_size=5)
    records = make_calls(80, feature)
    for record in records:
        exporter.submit(record)
    assert exporter.flush(120)
    stats = exporter.stats()
    assert stats["spooled"] > 0 and stats["dropped"] == 0
    assert sorted(record_ids_in(mlflow_server.url, feature)) == sorted(r.record_id for r in records)
    assert not errors


# -- an unreachable server with MLflow's own defaults (issue 15, items 2 and 3) -----------------


@pytest.fixture
def mlflow_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's default HTTP retries (7, backing off for minutes) and timeout (120 s), as a user
    who never read about ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` has them."""
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)


@pytest.fixture
def closed_url() -> str:
    from tests.helpers.mlflow_server import free_port

    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_unreachable_server_is_detected_at_once(
    mlflow_defaults: None, closed_url: str, exporters: Any, errors: list[BaseException],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A closed port with MLflow's default retries: the first failure is logged and counted,
    the records are spooled, ``flush`` returns within its timeout (it used to run the whole
    timeout and return False while MLflow retried inside one request), and urllib3 logs no
    "Retrying" warnings for our requests."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    feature = f"closed_{time.time_ns()}"
    exporter = exporters(closed_url)
    records = make_calls(5, feature)
    with caplog.at_level("WARNING"):
        for record in records:
            exporter.submit(record)
        assert exporter.flush(20) is True  # spooled: durable
    stats = exporter.stats()
    assert stats["sink_failures"] >= 1 and stats["spooled"] == 5 and stats["exported"] == 0
    ours = [r.getMessage() for r in caplog.records if r.name == "tracked_openai"]
    assert len(ours) == 1 and ours[0].startswith("tracked_openai: sink MlflowSink failed")
    assert closed_url.split("//")[1] in ours[0]
    assert not [r for r in caplog.records if r.name.startswith("urllib3") and "Retrying" in r.getMessage()]
    assert not errors
    # The host application's MLflow settings are MLflow's, unchanged.
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == MLFLOW_HTTP_REQUEST_MAX_RETRIES.default
    assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == MLFLOW_HTTP_REQUEST_TIMEOUT.default


def test_only_our_client_is_bounded(mlflow_server: MlflowServer) -> None:  # noqa: F811
    """Our sink talks through a store of its own (no MLflow retries, short timeout); a client
    the host makes for the same URI keeps MLflow's shared store."""
    from mlflow.store.tracking.rest_store import RestStore

    sink = MlflowSink(mlflow_server.url, timeout=7.0)
    ours = sink.client._tracking_client.store
    theirs = MlflowClient(mlflow_server.url)._tracking_client.store
    assert isinstance(ours, RestStore) and type(ours) is not RestStore
    assert type(theirs) is RestStore and theirs is not ours
    assert sink._probe_health is False
    feature = f"bounded_{time.time_ns()}"
    records = make_calls(3, feature)
    sink.export(records)
    assert sorted(record_ids_in(mlflow_server.url, feature)) == sorted(r.record_id for r in records)


def test_hung_server_times_out_per_request(mlflow_defaults: None) -> None:
    """A server that accepts connections and never answers: our request gives up after the
    sink's timeout, not MLflow's 120 s times 7 retries."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # connections complete in the backlog; nobody ever reads or answers
    try:
        sink = MlflowSink(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
        outcome: list[BaseException] = []

        def export() -> None:
            try:
                sink.export(make_calls(1, "hung"))
            except Exception as exc:
                outcome.append(exc)

        thread = threading.Thread(target=export, daemon=True)
        thread.start()
        thread.join(60)
        assert not thread.is_alive(), "export still waiting on a server that never answers"
        assert outcome and "timed out" in str(outcome[0]).lower()
    finally:
        listener.close()


def test_health_probe_when_our_requests_cannot_be_bounded(
    mlflow_defaults: None, closed_url: str, mlflow_server: MlflowServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If MLflow's internals ever stop allowing our own bounded store, the sink checks
    ``/health`` (one request, no retries) before writing: a dead server still fails at once,
    a live one is written to as before."""
    from tracked_openai.sinks import mlflow as sink_module

    monkeypatch.setattr(sink_module, "bounded_store", lambda uri, timeout: None)
    down = MlflowSink(closed_url)
    with pytest.raises(ConnectionError, match="unreachable"):
        down.export(make_calls(1, "probe"))
    assert down._probe_health is True
    up = MlflowSink(mlflow_server.url)
    feature = f"probe_{time.time_ns()}"
    records = make_calls(2, feature)
    up.export(records)
    assert up._probe_health is True
    assert sorted(record_ids_in(mlflow_server.url, feature)) == sorted(r.record_id for r in records)


def test_urllib3_retry_warnings_are_quiet_on_our_threads_only(
    closed_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """urllib3's "Retrying (…) after connection broken" warning is dropped for requests made on
    our threads (one per probe during an outage otherwise), kept for everyone else's."""
    import urllib3

    from tracked_openai.mlflow.store import install_retry_filter

    install_retry_filter()

    def request() -> None:
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            urllib3.PoolManager(retries=urllib3.Retry(1, backoff_factor=0)).request("GET", closed_url)

    def ours() -> None:
        MlflowSink(closed_url)._init_writer_thread()  # what our writer threads do first
        request()

    with caplog.at_level("WARNING", logger="urllib3"):
        thread = threading.Thread(target=ours)
        thread.start()
        thread.join(30)
        assert not [r for r in caplog.records if "Retrying" in r.getMessage()]
        request()  # the host's own request, on its own thread
        assert [r for r in caplog.records if "Retrying" in r.getMessage()]


EXIT_DOWN_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import tracked_openai
    from tracked_openai.export import runtime as _runtime
    from tracked_openai.records import CallRecord
    from tracked_openai.sinks.mlflow import MlflowSink

    url, spool, exit_timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    tracked_openai.configure(sinks=[MlflowSink(url)], spool_dir=spool, exit_timeout=exit_timeout,
                             flush_interval=0.05, retry_attempts=10, retry_initial=5.0, retry_max=10.0)
    for i in range(20):
        _runtime.submit(CallRecord(started_at=time.time(), duration_s=0.01, feature="exit_down",
                                   endpoint="chat.completions", model="gpt-4o-mini"))
    tracked_openai.flush(0.1)  # wakes the worker
    deadline = time.monotonic() + 120  # MLflow's import takes seconds on a busy machine
    while tracked_openai.stats().get("sink_failures", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    print(time.time(), flush=True)  # work done: the worker is backing off before its 2nd attempt
    """
)


def test_exit_with_mlflow_down_is_bounded_and_spools_once(
    closed_url: str, tmp_path: Path
) -> None:
    """A script whose tracking server is down, with MLflow's default retries: it exits within
    the exit timeout of its work's end, leaves one spool file holding each record once, and
    says so in one warning."""
    spool = tmp_path / "spool"
    exit_timeout = 3.0
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_DOWN_SCRIPT, closed_url, str(spool), str(exit_timeout)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    ended = time.time()
    assert proc.returncode == 0, proc.stderr
    work_done = float(proc.stdout.split()[-1])
    assert ended - work_done < exit_timeout + 2.5, (ended - work_done, proc.stderr)
    files = Spool(spool).files()
    assert len(files) == 1, proc.stderr
    ids = [r.record_id for r in Spool(spool)._read(files[0])]
    assert len(ids) == 20 == len(set(ids))
    warnings = [line for line in proc.stderr.splitlines() if "tracked_openai" in line]
    assert len(warnings) == 1 and "sink MlflowSink failed" in warnings[0], proc.stderr


# -- records of a process that ends before its MLflow sink was built ------------------------------

PREDICT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from tracked_openai.mlflow.store import predicted_spool_key
    if sys.argv[1] == "set_in_code":
        import mlflow
        mlflow.set_tracking_uri("sqlite:///set-in-code.db")
    predicted = predicted_spool_key()
    imported_before = "mlflow.tracking" in sys.modules
    from tracked_openai.sinks.mlflow import MlflowSink
    print(json.dumps({"predicted": predicted, "actual": MlflowSink().spool_key,
                      "imported_before": imported_before}))
    """
)


@pytest.mark.parametrize(
    "case", ["env_http", "env_relative_sqlite", "default_sqlite", "mlruns", "set_in_code"]
)
def test_predicted_spool_key_is_the_default_sinks(case: str, tmp_path: Path) -> None:
    """Records spooled at exit before the default sink was built are filed under the key that
    sink will have; the prediction (no MLflow import) must agree with MLflow's own resolution
    of the tracking URI, so a change in MLflow's default rule fails here."""
    cwd = tmp_path / "an app folder"  # a space: MLflow percent-encodes SQLite paths
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if case == "env_http":
        env["MLFLOW_TRACKING_URI"] = "http://mlflow.internal:5000"
    elif case == "env_relative_sqlite":
        env["MLFLOW_TRACKING_URI"] = "sqlite:///rel.db"
    elif case == "mlruns":
        (cwd / "mlruns" / "0").mkdir(parents=True)
        (cwd / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    proc = subprocess.run(
        [sys.executable, "-c", PREDICT_SCRIPT, case],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["imported_before"] is (case == "set_in_code")
    assert result["predicted"] == result["actual"], result
    if case == "default_sqlite":
        assert result["actual"].startswith("mlflow:sqlite:////") and "an%20app%20folder" in result["actual"]


SHORT_SCRIPT = textwrap.dedent(
    """
    import time
    from tracked_openai.export import runtime as _runtime
    from tracked_openai.records import CallRecord
    for i in range(3):  # and exit at once: the exporter has not built its MLflow sink yet
        _runtime.submit(CallRecord(started_at=time.time(), duration_s=0.01, feature="short_script",
                                   endpoint="chat.completions", model="gpt-4o-mini"))
    print(time.time(), flush=True)
    """
)

NEXT_PROCESS_SCRIPT = textwrap.dedent(
    """
    import tracked_openai
    ready = tracked_openai.start(wait=True, timeout=120)  # replays what earlier processes spooled
    print(ready, tracked_openai.flush(120), tracked_openai.stats()["replayed"])
    """
)


@pytest.mark.parametrize(
    ("exit_timeout", "store_exists"),
    [(0.0, False), (5.0, True), (5.0, False)],
    ids=["0s", "5s", "5s-new-store"],
)
def test_short_script_records_reach_the_store(
    exit_timeout: float, store_exists: bool, tmp_path: Path
) -> None:
    """A script that ends right after its calls, before its MLflow sink exists: the exit flush
    builds it and exports if the deadline allows, else spools the records under the sink's key
    without waiting for MLflow's import; either way the next process puts each record in the
    store once. The exit stays within the deadline, except that MLflow creating a new SQLite
    store is never cut off half-way (that would leave a store no process can write to): the
    first run against a new store may exit up to that creation's length later."""
    store = tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"
    if store_exists:
        MlflowClient(uri).search_experiments()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}
    env.update(
        MLFLOW_TRACKING_URI=uri,
        TRACKED_OPENAI_SPOOL_DIR=str(tmp_path / "spool"),
        TRACKED_OPENAI_EXIT_TIMEOUT=str(exit_timeout),
        PYTHONWARNINGS="ignore",
    )
    first = subprocess.run(
        [sys.executable, "-c", SHORT_SCRIPT],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    ended = time.time()
    assert first.returncode == 0, first.stderr
    margin = 2.5 if store_exists or exit_timeout == 0 else 20.0
    assert ended - float(first.stdout.split()[-1]) < exit_timeout + margin, first.stderr
    assert "tracked_openai" not in first.stderr  # nothing lost, nothing to warn about
    spooled = sum(len(Spool(tmp_path / "spool")._read(p)) for p in Spool(tmp_path / "spool").files())
    if exit_timeout == 0:
        assert spooled == 3
    second = subprocess.run(
        [sys.executable, "-c", NEXT_PROCESS_SCRIPT], capture_output=True, text=True, env=env,
        timeout=300, check=False,
    )
    assert second.returncode == 0, second.stderr
    assert "tracked_openai" not in second.stderr, second.stderr  # e.g. a half-created store
    ready, flushed, replayed = second.stdout.split()[-3:]
    assert ready == flushed == "True" and int(replayed) == spooled
    ids = record_ids_in(uri, "short_script")
    assert len(ids) == 3 == len(set(ids))
    assert not Spool(tmp_path / "spool").files()


def test_exit_waits_for_a_store_being_created_and_opens_none_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``prepare_exit`` waits for a local store MLflow is creating, and no store is opened
    after it (MLflow's SQLite set-up cut off half-way breaks the store for good)."""
    import mlflow

    from tracked_openai.sinks import mlflow as sink_module

    creating = threading.Event()
    finish = threading.Event()
    real = mlflow.MlflowClient

    def slow_client(*args: Any, **kwargs: Any) -> Any:
        creating.set()
        finish.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "MlflowClient", slow_client)
    sink = sink_module.MlflowSink(f"sqlite:///{tmp_path / 'mlflow.db'}")
    opener = threading.Thread(target=sink.warm_up)
    opener.start()
    assert creating.wait(10)
    waited: list[bool] = []
    exiting = threading.Thread(target=lambda: waited.append(sink.prepare_exit(30) is None))
    exiting.start()
    exiting.join(0.5)
    assert exiting.is_alive()  # still waiting for the store
    finish.set()
    exiting.join(30)
    opener.join(30)
    assert waited == [True] and (tmp_path / "mlflow.db").exists()
    late = sink_module.MlflowSink(f"sqlite:///{tmp_path / 'other.db'}")
    late.prepare_exit(1)
    with pytest.raises(RuntimeError, match="exiting"):
        late.warm_up()
    assert not (tmp_path / "other.db").exists()

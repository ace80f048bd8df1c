"""Repricing and reconciling read every call record once in each ``mlflow_mode`` (issue 19
items 3 and 4 under issue 17's traces).

The same records (operations with calls inside, calls outside any operation, a late call, an
error, a transcription, an image, a hosted image-generation tool, an unknown model) go through
each mode's own sinks (``mode_sinks``) into a real embedded SQLite MLflow store: ``runs`` (calls
are runs), ``traces`` (calls are spans) and ``runs+traces`` (calls inside operations are spans
only; calls outside them and late calls are both a run and a span). Expected figures come from
the records and the rates written here, never from the code under test.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fake_admin_api import ADMIN_KEY, FakeAdminAPI
from tests.helpers.mlflow_server import MlflowServer, mlflow_server  # noqa: F401 - fixture
from tracked_openai import reconcile as rc
from tracked_openai import reprice as rp
from tracked_openai.mlflow.trace_reports import iter_trace_runs
from tracked_openai.mlflow.traces import mlflow_trace_id
from tracked_openai.pricing import load_price_book, price_record
from tracked_openai.records import LATE_TAG, CallRecord, OperationRecord, Record, Usage
from tracked_openai.reports import call_runs
from tracked_openai.sinks.modes import mode_sinks

MODES = ("runs", "traces", "runs+traces")
DAYS = ("2026-11-02", "2026-11-03", "2026-11-04")
MINI = "gpt-4o-mini-2024-07-18"
MILLION = Decimal(1_000_000)
FIX = """
version: fix-modes
models:
  gpt-4o-mini:
    source: "test: corrected output rate"
    input: 0.15
    cached_input: 0.075
    output: 0.66
  acme-llm:
    source: "test: internal transfer price"
    input: 1
    output: 2
"""


def _id(n: int) -> str:
    return f"{n:032x}"


def make_batches(suffix: str = "", first_id: int = 0) -> list[list[Record]]:
    """Per day: ``verify`` (3 gpt-4o-mini calls, 1 acme-llm call, and a late call sent after
    its operation), ``analyze`` (gpt-4o, a whisper transcription, an error without usage), and
    two calls outside any operation (a dall-e-3 image; a Responses call with a hosted image
    generation). Returns the batches as the exporter would send them. ``suffix`` is added to
    the feature names and ids start after ``first_id`` (stores shared with other tests)."""
    book = load_price_book()
    main: list[Record] = []
    late: list[Record] = []
    n = first_id

    def call(at: float, feature: str, parent: OperationRecord | None, **kw: Any) -> CallRecord:
        nonlocal n
        n += 1
        rec = CallRecord(
            record_id=_id(n),
            started_at=at,
            duration_s=0.5,
            feature=feature + suffix,
            operation=parent.operation if parent else None,
            parent_id=parent.record_id if parent else None,
            usage_source=kw.pop("usage_source", "response"),
            **kw,
        )
        price_record(rec, book)
        return rec

    for d, day in enumerate(DAYS):
        base = datetime.fromisoformat(f"{day}T09:00:00+00:00").timestamp()
        n += 1
        verify = OperationRecord(
            record_id=_id(n),
            started_at=base,
            duration_s=20,
            feature="pid_verification" + suffix,
            operation="verify",
        )
        calls = [
            call(
                base + 1 + i,
                "pid_verification",
                verify,
                endpoint="chat.completions",
                model="gpt-4o-mini",
                response_model=MINI,
                usage=Usage(
                    input_tokens=1000 + 7 * d + i,
                    output_tokens=200 + 3 * i,
                    cached_input_tokens=500 if i == 0 else 0,
                ),
            )
            for i in range(3)
        ]
        calls.append(
            call(
                base + 5,
                "pid_verification",
                verify,
                endpoint="chat.completions",
                model="acme-llm",
                response_model="acme-llm",
                usage=Usage(input_tokens=300, output_tokens=40),
            )
        )
        verify.call_count = len(calls)
        main += [*calls, verify]
        late_call = call(
            base + 15,
            "pid_verification",
            verify,
            endpoint="chat.completions",
            model="gpt-4o-mini",
            response_model=MINI,
            tags={LATE_TAG: "true"},
            usage=Usage(input_tokens=800, output_tokens=90 + d),
        )
        late.append(late_call)

        n += 1
        analyze = OperationRecord(
            record_id=_id(n),
            started_at=base + 100,
            duration_s=20,
            feature="crs_analysis" + suffix,
            operation="analyze",
        )
        calls = [
            call(
                base + 101,
                "crs_analysis",
                analyze,
                endpoint="chat.completions",
                model="gpt-4o",
                response_model="gpt-4o-2024-08-06",
                usage=Usage(input_tokens=2000 + d, output_tokens=300),
            ),
            call(
                base + 102,
                "crs_analysis",
                analyze,
                endpoint="audio.transcriptions",
                model="whisper-1",
                usage=Usage(seconds=30.0 + d),
            ),
            call(
                base + 103,
                "crs_analysis",
                analyze,
                endpoint="chat.completions",
                model="gpt-4o",
                status="error",
                error_type="APIConnectionError",
                usage_source="none",
            ),
        ]
        analyze.call_count = len(calls)
        main += [*calls, analyze]

        detail = {"model": "gpt-image-1", "images": {"high/1024x1024": 1}}
        main += [
            call(
                base + 200,
                "visual_generation",
                None,
                endpoint="images.generate",
                model="dall-e-3",
                params={"size": "1024x1024", "quality": "hd", "n": 1},
                usage=Usage(images=1),
            ),
            call(
                base + 201,
                "visual_generation",
                None,
                endpoint="responses",
                model="gpt-4o-mini",
                response_model=MINI,
                usage=Usage(
                    input_tokens=100,
                    output_tokens=20,
                    tool_calls={"image_generation": 1},
                    tool_details={"image_generation": detail},
                ),
            ),
        ]
    return [main, late]


def calls_of(batches: list[list[Record]]) -> list[CallRecord]:
    return [r for b in batches for r in b if isinstance(r, CallRecord)]


def write_store(uri: str, mode: str, batches: list[list[Record]]) -> None:
    sinks = mode_sinks(mode, uri, timeout=60)
    for batch in batches:
        for sink in sinks:
            sink.export(batch)
    for sink in sinks:
        sink.shutdown()


@dataclass
class Stores:
    uris: dict[str, str]
    dbs: dict[str, Path]
    calls: list[CallRecord]
    template: Path  # an empty store


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    from mlflow import MlflowClient

    batches = make_batches()
    # MLflow's schema migrations take most of a new store's time: made once, copied per mode.
    template = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()
    uris, dbs = {}, {}
    for mode in MODES:
        db = tmp_path_factory.mktemp(mode.replace("+", "_")) / "mlflow.db"
        shutil.copyfile(template, db)
        write_store(f"sqlite:///{db}", mode, batches)
        uris[mode], dbs[mode] = f"sqlite:///{db}", db
    return Stores(uris, dbs, calls_of(batches), template)


def day_of(rec: CallRecord) -> str:
    return datetime.fromtimestamp(rec.started_at, tz=UTC).date().isoformat()


def fix_file(tmp_path: Path, version: str = "fix-modes") -> Path:
    path = tmp_path / f"{version}.yaml"
    path.write_text(FIX.replace("fix-modes", version), encoding="utf-8")
    return path


def table(result: rp.RepriceResult) -> dict[str, Any]:
    data = result.to_dict()
    for key in ("written", "already_written", "conflicting", "resumed"):
        data.pop(key)
    return data


# -- the store each mode wrote ---------------------------------------------------------------------
def test_each_mode_stores_calls_as_it_says(stores: Stores) -> None:
    """What makes the modes differ: call runs, call spans, and records that are both."""
    counts = {}
    for mode, db in stores.dbs.items():
        with sqlite3.connect(db) as con:
            runs = con.execute("SELECT COUNT(*) FROM tags WHERE key = 'kind' AND value = 'call'").fetchone()[
                0
            ]
            spans = con.execute(
                "SELECT COUNT(*) FROM spans WHERE type IS NULL OR type != 'CHAIN'"
            ).fetchone()[0]
        counts[mode] = (runs, spans)
    n = len(stores.calls)
    outside_or_late = sum(1 for c in stores.calls if c.parent_id is None or LATE_TAG in c.tags)
    assert n == 30 and outside_or_late == 9
    assert counts == {"runs": (n, 0), "traces": (0, n), "runs+traces": (outside_or_late, n)}


# -- repricing -------------------------------------------------------------------------------------
def test_every_mode_reprices_the_same_records_to_the_same_totals(stores: Stores, tmp_path: Path) -> None:
    path = fix_file(tmp_path)
    results = {mode: rp.reprice(path, tracking_uri=uri) for mode, uri in stores.uris.items()}
    n = len(stores.calls)
    before = sum((c.cost.total_usd for c in stores.calls if c.cost is not None), Decimal(0))
    minis = [c for c in stores.calls if c.response_model == MINI]
    acme = [c for c in stores.calls if c.model == "acme-llm"]
    difference = sum(
        (Decimal(c.usage.output_tokens or 0) * Decimal("0.06") / MILLION for c in minis), Decimal(0)
    )
    difference += sum((Decimal(300) * 1 / MILLION + Decimal(40) * 2 / MILLION for _ in acme), Decimal(0))
    for mode, result in results.items():
        assert result.total.records == n, mode
        assert result.total.before_usd == before, mode
        assert result.total.difference_usd == difference, mode
        # The hosted image generation stays priced (its tool details came back from the span).
        assert result.total.priced_after == n - 3, mode  # the three errors have no usage
    assert table(results["traces"]) == table(results["runs"])
    assert table(results["runs+traces"]) == table(results["runs"])
    assert len(results["runs"].rows("day")) == 3


@pytest.mark.parametrize(
    "filters",
    [
        {"since": "2026-11-03", "until": "2026-11-03"},
        {"feature": "crs_analysis"},
        {"feature": "visual_generation", "since": "2026-11-04"},
        {"model": MINI},
        {"model": "whisper-1", "until": "2026-11-03"},
    ],
)
def test_filters_apply_to_spans_as_to_runs(stores: Stores, filters: dict[str, str]) -> None:
    results = {
        mode: table(rp.reprice("shipped", tracking_uri=uri, **filters)) for mode, uri in stores.uris.items()
    }
    chosen = [
        c
        for c in stores.calls
        if filters.get("feature") in (None, c.feature)
        and filters.get("model") in (None, c.model, c.response_model)
        and filters.get("since", "0") <= day_of(c) <= filters.get("until", "9")
    ]
    assert results["runs"]["records"] == len(chosen) > 0
    assert results["traces"] == results["runs"] == results["runs+traces"]


def _trace_tags(db: Path, prefix: str) -> dict[tuple[str, str], str]:
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT request_id, key, value FROM trace_tags WHERE key LIKE ?", (prefix + "%",)
        ).fetchall()
    return {(r, k): v for r, k, v in rows}


def _span_costs(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT span_id, content FROM spans ORDER BY span_id").fetchall()


@pytest.mark.parametrize("mode", ["traces", "runs+traces"])
def test_write_twice_on_spans_is_idempotent_and_reads_back(stores: Stores, tmp_path: Path, mode: str) -> None:
    uri, db = stores.uris[mode], stores.dbs[mode]
    path = fix_file(tmp_path, "fix-write")
    spans_before = _span_costs(db)
    first = rp.reprice(path, tracking_uri=uri, write=True)
    n = len(stores.calls)
    assert first.written == n and first.already_written == 0
    slug = rp.version_slug(first.pricing_version)
    tags = _trace_tags(db, f"repriced/{slug}/")
    span_only = [c for c in stores.calls if c.parent_id is not None and LATE_TAG not in c.tags]
    expected_tags = n if mode == "traces" else len(span_only)
    assert len(tags) == expected_tags
    # One tag per call, on the trace of its operation (or its own): compact JSON, bounded.
    by_id = {c.record_id: c for c in stores.calls}
    for (trace_id, key), value in tags.items():
        record_id = key.rsplit("/", 1)[1]
        rec = by_id[record_id]
        assert trace_id == mlflow_trace_id(rec.parent_id or rec.record_id)
        figures = json.loads(value)
        assert figures["pricing_version"] == first.pricing_version and len(value) < 1_000
        if rec.model == "gpt-4o-mini" and rec.usage.output_tokens:
            u = rec.usage
            cached = u.cached_input_tokens or 0
            want = (
                Decimal((u.input_tokens or 0) - cached) * Decimal("0.15")
                + Decimal(cached) * Decimal("0.075")
                + Decimal(u.output_tokens) * Decimal("0.66")
            ) / MILLION
            if not u.tool_calls:
                assert figures["cost_status"] == "priced" and Decimal(repr(figures["cost_usd"])) == want
    assert _span_costs(db) == spans_before  # span attributes (the original cost) untouched

    second = rp.reprice(path, tracking_uri=uri, write=True)
    assert second.written == 0 and second.already_written == n and second.conflicting == 0
    assert _trace_tags(db, f"repriced/{slug}/") == tags
    assert table(second) == table(first)

    # Read back as the run keys a repricing writes on call runs, by the reports' span reader.
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    keys = rp.repriced_keys(first.pricing_version)
    spans = [r for r in iter_trace_runs(client, exps) if r.data.tags.get("kind") == "call"]
    read = {r.data.tags["record_id"]: r for r in spans}
    repriced = [r for r in read.values() if keys["cost_status"] in r.data.tags]
    assert len(repriced) == expected_tags
    assert sum(Decimal(repr(r.data.metrics.get(keys["cost_usd"], 0))) for r in repriced) > 0

    # Same version, other prices: reported, never overwritten.
    changed = tmp_path / "changed.yaml"
    changed.write_text(FIX.replace("fix-modes", "fix-write").replace("output: 0.66", "output: 0.7"))
    third = rp.reprice(changed, tracking_uri=uri, write=True)
    assert third.written == 0 and third.conflicting == sum(
        1 for c in stores.calls if c.response_model == MINI
    )
    assert _trace_tags(db, f"repriced/{slug}/") == tags


def test_write_on_runs_and_spans_through_the_mlflow_client(
    stores: Stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stores that are not MLflow's SQL store (an ``mlflow server``): ``search_traces`` and
    ``set_trace_tag`` for spans, ``search_runs`` and ``log_batch`` for runs."""
    monkeypatch.setattr(call_runs, "sql_store", lambda client: None)
    monkeypatch.setattr(rp, "sql_store", lambda client: None)
    uri = stores.uris["runs+traces"]
    path = fix_file(tmp_path, "fix-client")
    first = rp.reprice(path, tracking_uri=uri, write=True, since="2026-11-03")
    chosen = [c for c in stores.calls if day_of(c) >= "2026-11-03"]
    assert first.total.records == first.written == len(chosen)
    second = rp.reprice(path, tracking_uri=uri, write=True, since="2026-11-03")
    assert second.written == 0 and second.already_written == len(chosen)
    monkeypatch.undo()
    assert table(rp.reprice(path, tracking_uri=uri, since="2026-11-03")) == table(first)


def test_an_interrupted_write_resumes_across_runs_and_spans(stores: Stores, tmp_path: Path) -> None:
    """``runs+traces``: the pages hold runs and spans, and records that are both (resuming with
    runs only is ``tests/pricing/test_reprice.py``)."""
    uri = stores.uris["runs+traces"]
    path = fix_file(tmp_path, "fix-resume")
    state = tmp_path / "state.json"
    done: list[int] = []

    def stop_after_three_pages(records: int) -> None:
        done.append(records)
        if len(done) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rp.reprice(
            path, tracking_uri=uri, write=True, state_path=state, page_size=4, progress=stop_after_three_pages
        )
    assert done == [4, 8, 12] and state.exists()
    resumed = rp.reprice(path, tracking_uri=uri, write=True, state_path=state, page_size=4)
    n = len(stores.calls)
    assert resumed.resumed and resumed.total.records == n
    assert resumed.written == n and resumed.already_written == 0  # nothing twice, nothing skipped
    assert not state.exists()
    whole = rp.reprice(path, tracking_uri=uri)
    assert table(resumed) == table(whole)
    again = rp.reprice(path, tracking_uri=uri, write=True)
    assert again.written == 0 and again.already_written == n


def test_a_record_whose_span_starts_a_millisecond_before_its_run_is_read_once(
    stores: Stores, tmp_path: Path
) -> None:
    """A run's start is the call's start rounded to the ms, its span's the nanoseconds cut to ms:
    a call outside any operation at ``.0006`` s is a run at ``...001`` ms and a span at
    ``...000`` ms (``runs+traces``). Read once, and once more after resuming between the two."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(stores.template, db)
    uri = f"sqlite:///{db}"
    at = datetime(2026, 11, 5, 9, tzinfo=UTC).timestamp() + 0.0006
    calls = []
    for i in range(3):
        rec = CallRecord(
            record_id=_id(900 + i),
            started_at=at + i,
            duration_s=0.5,
            feature="visual_generation",
            endpoint="chat.completions",
            model="gpt-4o-mini",
            response_model=MINI,
            usage=Usage(input_tokens=100, output_tokens=10),
            usage_source="response",
        )
        price_record(rec, load_price_book())
        calls.append(rec)
    write_store(uri, "runs+traces", [list(calls)])
    read = list(call_runs.CallRecords(uri, None, None, None))
    assert [r.data.tags["record_id"] for r in read] == [c.record_id for c in calls]
    assert all(call_runs.is_span(r) for r in read)  # the span comes first: 1 ms earlier

    path = fix_file(tmp_path, "fix-ms")
    state = tmp_path / "state.json"

    def stop(records: int) -> None:
        raise KeyboardInterrupt  # after the first page: the first call's span, not its run

    with pytest.raises(KeyboardInterrupt):
        rp.reprice(path, tracking_uri=uri, write=True, state_path=state, page_size=1, progress=stop)
    saved = json.loads(state.read_text())["reader"]
    assert saved["position"][1] == 1 and list(saved["recent"]) == [calls[0].record_id]
    resumed = rp.reprice(path, tracking_uri=uri, write=True, state_path=state, page_size=1)
    assert resumed.total.records == resumed.written == 3
    assert table(resumed) == table(rp.reprice(path, tracking_uri=uri))


# -- reconciling -----------------------------------------------------------------------------------
def _mirror(calls: list[CallRecord]) -> FakeAdminAPI:
    """OpenAI's usage and costs for the gpt-4o-mini chat calls only: the other models' rows
    differ on purpose (untracked on our side / ours only)."""
    api = FakeAdminAPI()
    for day in DAYS:
        minis = [c for c in calls if day_of(c) == day and c.response_model == MINI]
        api.add_usage(
            "completions",
            day,
            model=MINI,
            num_model_requests=len(minis),
            input_tokens=sum(c.usage.input_tokens or 0 for c in minis),
            output_tokens=sum(c.usage.output_tokens or 0 for c in minis),
        )
        api.add_usage(
            "completions", day, model="gpt-4.1-nano", num_model_requests=4, input_tokens=40, output_tokens=8
        )
        api.add_cost(day, f"{MINI}, input", float(sum(c.cost.input_usd for c in minis if c.cost)))
        api.add_cost(day, f"{MINI}, output", float(sum(c.cost.output_usd for c in minis if c.cost)))
    return api


@pytest.fixture
def admin_api(stores: Stores) -> Iterator[FakeAdminAPI]:
    with _mirror(stores.calls).serve() as fake:
        yield fake


def test_every_mode_gives_the_same_reconciliation(stores: Stores, admin_api: FakeAdminAPI) -> None:
    fetch = rc.http_fetch(ADMIN_KEY, admin_api.base_url)
    results = {
        mode: rc.reconcile("2026-11-02", "2026-11-04", fetch=fetch, tracking_uri=uri, today=date(2026, 12, 7))
        for mode, uri in stores.uris.items()
    }
    tables = {mode: r.to_dict() for mode, r in results.items()}
    assert tables["traces"] == tables["runs"] == tables["runs+traces"]
    rows = {(r.day, r.model): r for r in results["runs"].rows}
    for day in DAYS:
        mini = rows[(day, MINI)]
        # 3 calls in the operation, the late call, the Responses call: all of them, once.
        assert mini.ours.requests == mini.theirs.requests == 5
        assert mini.differences()["requests"] == 0 and mini.differences()["usage"] == 0
        assert rows[(day, "gpt-4.1-nano")].causes == ["untracked"]
        assert rows[(day, "acme-llm")].causes == ["unpriced", "ours_only"]
        # The failed call never reached a model: one gpt-4o request that day.
        assert rows[(day, "gpt-4o-2024-08-06")].ours.requests == 1
    ours, _ = results["runs"].totals()
    assert ours.requests == len(stores.calls) - 3


# -- a real ``mlflow server`` ---------------------------------------------------------------------
def test_through_a_tracking_server(
    stores: Stores,
    tmp_path: Path,
    mlflow_server: MlflowServer,  # noqa: F811 - the fixture imported above
) -> None:
    """The HTTP path (``search_runs``/``search_traces``, ``log_batch``/``set_trace_tag``) gives
    what the embedded store gave, and writes once. One feature (calls inside operations, a late
    call that is both a run and a span in ``runs+traces``), of its own: the session's server is
    shared."""
    path = fix_file(tmp_path, "fix-server")
    want = rp.reprice(path, tracking_uri=stores.uris["runs"], feature="pid_verification").total
    for i, mode in enumerate(("traces", "runs+traces")):
        suffix = f"-{mode.replace('+', '-')}-{uuid.uuid4().hex[:8]}"
        feature = "pid_verification" + suffix
        made = make_batches(suffix, first_id=(i + 1) << 64)
        batches = [[r for r in b if r.feature == feature] for b in made]
        write_store(mlflow_server.url, mode, batches)
        first = rp.reprice(path, tracking_uri=mlflow_server.url, feature=feature, write=True)
        assert first.total == want and first.written == want.records == 15, mode
        again = rp.reprice(path, tracking_uri=mlflow_server.url, feature=feature, write=True)
        assert again.written == 0 and again.already_written == want.records, mode

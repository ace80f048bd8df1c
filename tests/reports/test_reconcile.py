"""Reconciling our records with OpenAI's organization Usage and Costs APIs (issue 19 item 4).

OpenAI's side is ``tests/helpers/fake_admin_api.py``: a local HTTP server answering with pages shaped
exactly like the documented responses (``tests/fixtures/admin_api``, from OpenAI's API reference
https://platform.openai.com/docs/api-reference/usage), reached through the real HTTP client.
Our side is a SQLite MLflow store holding the MLflow sink's runs for the records below. OpenAI's
figures are built from the records by hand in each test, then changed on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tests.helpers.fake_admin_api import ADMIN_KEY, FakeAdminAPI
from tests.helpers.store_seed import seed_calls
from tracked_openai import reconcile as rc
from tracked_openai.pricing import load_price_book, price_record
from tracked_openai.records import CallRecord, Usage

DAYS = ["2026-11-02", "2026-11-03", "2026-11-04"]
MINI = "gpt-4o-mini-2024-07-18"
EMB = "text-embedding-3-small"
TODAY = date(2026, 12, 7)


def make_records() -> list[CallRecord]:
    book = load_price_book()
    out = []
    for d, day in enumerate(DAYS):
        base = datetime.fromisoformat(f"{day}T09:00:00+00:00").timestamp()
        for i in range(3):
            # On the last day one chat call's response named no model (a stream cut short):
            # it is matched to the dated name OpenAI reports.
            served = None if (d, i) == (2, 0) else MINI
            out.append(CallRecord(
                started_at=base + i, duration_s=1.0, feature="crs_analysis", endpoint="chat.completions",
                model="gpt-4o-mini", response_model=served, usage_source="response",
                usage=Usage(input_tokens=1000 + 10 * d + i, output_tokens=200 + i, cached_input_tokens=0),
            ))
        for i in range(2):
            out.append(CallRecord(
                started_at=base + 10 + i, duration_s=0.2, feature="pid_verification", endpoint="embeddings",
                model=EMB, response_model=EMB, usage_source="response", usage=Usage(input_tokens=50 + i),
            ))
        # A call that failed before reaching a model: neither side counts a request.
        out.append(CallRecord(
            started_at=base + 20, duration_s=0.1, feature="crs_analysis", endpoint="chat.completions",
            model="gpt-4o-mini", status="error", error_type="APIConnectionError",
        ))
    for r in out:
        price_record(r, book)
    return out


@dataclass
class Store:
    uri: str
    records: list[CallRecord]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    db: Path = tmp_path_factory.mktemp("reconcile") / "mlflow.db"
    records = make_records()
    seed_calls(db, records)
    return Store(f"sqlite:///{db}", records)


def day_of(r: CallRecord) -> str:
    return datetime.fromtimestamp(r.started_at, tz=UTC).date().isoformat()


def mirror(store: Store) -> FakeAdminAPI:
    """OpenAI's usage and costs exactly as our records say."""
    api = FakeAdminAPI()
    for day in DAYS:
        chats = [r for r in store.records if day_of(r) == day and r.endpoint == "chat.completions" and r.cost]
        embs = [r for r in store.records if day_of(r) == day and r.endpoint == "embeddings"]
        api.add_usage("completions", day, model=MINI, num_model_requests=len(chats),
                      input_tokens=sum(r.usage.input_tokens or 0 for r in chats),
                      output_tokens=sum(r.usage.output_tokens or 0 for r in chats))
        api.add_usage("embeddings", day, model=EMB, num_model_requests=len(embs),
                      input_tokens=sum(r.usage.input_tokens or 0 for r in embs))
        api.add_cost(day, f"{MINI}, input", float(sum(r.cost.input_usd for r in chats if r.cost)))
        api.add_cost(day, f"{MINI}, output", float(sum(r.cost.output_usd for r in chats if r.cost)))
        api.add_cost(day, f"{EMB}, input", float(sum(r.cost.total_usd for r in embs if r.cost)))
    return api


@pytest.fixture
def api(store: Store) -> Iterator[FakeAdminAPI]:
    with mirror(store).serve() as fake:
        yield fake


def run(store: Store, api: FakeAdminAPI, key: str = ADMIN_KEY, **kw: object) -> rc.Reconciliation:
    return rc.reconcile("2026-11-02", "2026-11-05", fetch=rc.http_fetch(key, api.base_url),
                        tracking_uri=store.uri, today=TODAY, **kw)  # type: ignore[arg-type]


def rows(result: rc.Reconciliation) -> dict[tuple[str, str], rc.Row]:
    return {(r.day, r.model): r for r in result.rows}


def test_an_exact_match_is_reported_as_such(store: Store, api: FakeAdminAPI) -> None:
    result = run(store, api)
    assert result.ok and not result.problems and not result.day_problems
    got = rows(result)
    assert set(got) == {(d, m) for d in DAYS for m in (MINI, EMB)}
    for row in got.values():
        diffs = row.differences()
        assert diffs["requests"] == 0 and diffs["usage"] == 0
        assert diffs["usd"] is not None and abs(diffs["usd"]) < 1e-9
        assert row.causes == []
    assert got[("2026-11-04", MINI)].ours.requests == 3  # the call without a served model matched
    assert got[("2026-11-02", MINI)].ours.tokens == 3 * 1000 + 3 + 3 * 200 + 3
    ours, theirs = result.totals()
    assert ours.requests == theirs.requests == 15
    # Following next_page: completions are served one day a page (4 days asked: 11-02 to 11-05).
    completions = [q for p, q in api.requests if p.endswith("/usage/completions")]
    assert len(completions) == 4 and "page" not in completions[0]
    assert [q["page"][0] for q in completions[1:]] == [
        f"page_{int(datetime.fromisoformat(d + 'T00:00:00+00:00').timestamp())}"
        for d in ("2026-11-03", "2026-11-04", "2026-11-05")
    ]
    assert completions[0]["group_by"] == ["model", "project_id", "batch"]
    assert completions[0]["bucket_width"] == ["1d"]
    assert {p.rsplit("/", 1)[1] for p, _ in api.requests} == {*rc.USAGE_KINDS, "costs"}


def test_a_day_missing_from_our_records(store: Store, api: FakeAdminAPI) -> None:
    # OpenAI counted 11-05 too; our store has nothing that day (the app ran untracked).
    api.add_usage("completions", "2026-11-05", model=MINI, num_model_requests=7, input_tokens=7000,
                  output_tokens=1400)
    api.add_cost("2026-11-05", f"{MINI}, input", 0.00105)
    result = run(store, api)
    assert not result.ok
    (problem,) = result.problems
    assert (problem.day, problem.model) == ("2026-11-05", MINI)
    assert problem.causes == ["missing_day"]
    assert problem.differences() == {"requests": -100.0, "usage": -100.0, "usd": -100.0}
    assert result.day_problems == ["2026-11-05"]
    assert "tracking was off" in result.to_dict()["causes"]["missing_day"]


def test_an_untracked_model(store: Store, api: FakeAdminAPI) -> None:
    # Someone called gpt-4.1 with a plain client on 11-03: OpenAI counts it, we never saw it.
    api.add_usage("completions", "2026-11-03", model="gpt-4.1-2025-04-14", num_model_requests=4,
                  input_tokens=4000, output_tokens=800)
    api.add_cost("2026-11-03", "gpt-4.1-2025-04-14, input", 0.008)
    api.add_cost("2026-11-03", "gpt-4.1-2025-04-14, output", 0.0064)
    result = run(store, api)
    assert not result.ok
    (problem,) = result.problems
    assert (problem.day, problem.model) == ("2026-11-03", "gpt-4.1-2025-04-14")
    assert problem.causes == ["untracked"]
    assert problem.theirs.requests == 4 and problem.theirs.usd == Decimal("0.0144")
    assert result.day_problems == ["2026-11-03"]  # the day's dollars differ by that much
    # Every other row still matches.
    assert all(not r.beyond(1.0) for r in result.rows if r is not problem)


def test_tolerance_and_causes_of_a_count_difference(store: Store, api: FakeAdminAPI) -> None:
    # OpenAI counted one more chat request (1,250 tokens) on 11-02 than we recorded.
    api.add_usage("completions", "2026-11-02", model=MINI, num_model_requests=1, input_tokens=1000,
                  output_tokens=250, batch=True)
    result = run(store, api)
    row = rows(result)[("2026-11-02", MINI)]
    assert row.differences()["requests"] == pytest.approx(-25.0)
    assert row.causes == ["batch", "more_theirs"]
    assert not result.ok
    # Requests 25% and tokens 25.7% (3,606 of 4,856) off; OpenAI's dollars still agree.
    assert row.differences()["usage"] == pytest.approx((3606 - 4856) / 4856 * 100)
    assert run(store, api, tolerance=25.5).ok is False
    assert run(store, api, tolerance=26.0).ok


def test_project_filter_is_sent_and_applied(store: Store, api: FakeAdminAPI) -> None:
    api.add_usage("embeddings", "2026-11-02", project="proj_other", model=EMB, num_model_requests=9,
                  input_tokens=900)
    assert not run(store, api).ok
    narrowed = run(store, api, project="proj_abc")
    assert narrowed.ok
    assert all(q.get("project_ids") == ["proj_abc"] for _, q in api.requests[-len(rc.USAGE_KINDS) - 3 :])


def test_an_ordinary_key_is_refused_with_a_clear_message(store: Store, api: FakeAdminAPI) -> None:
    with pytest.raises(rc.AdminAPIError, match=r"HTTP 401 \(an admin key is needed: OPENAI_ADMIN_KEY\)"):
        run(store, api, key="sk-not-an-admin-key")


# -- the command line ------------------------------------------------------------------------------
def cli(store: Store, *extra: str) -> int:
    from tracked_openai.cli import main

    return main(["reconcile", "--tracking-uri", store.uri, "--since", "2026-11-02", "--until", "2026-11-05",
                 *extra])


def test_cli_exact_match_exits_0(store: Store, api: FakeAdminAPI, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("OPENAI_ADMIN_BASE_URL", api.base_url)
    assert cli(store) == 0
    out = capsys.readouterr().out
    assert "ok: every difference is within ±1%" in out
    assert MINI in out and "2026-11-04" in out


def test_cli_untracked_model_exits_1_and_says_why(store: Store, api: FakeAdminAPI,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    api.add_usage("completions", "2026-11-03", model="gpt-4.1-2025-04-14", num_model_requests=4,
                  input_tokens=4000, output_tokens=800)
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    assert cli(store, "--base-url", api.base_url, "--problems-only") == 1
    out = capsys.readouterr().out
    assert "gpt-4.1-2025-04-14" in out and MINI not in out.split("USD by day")[0]
    assert "untracked: calls made outside tracked clients" in out
    assert "1 row and 0 day(s) beyond ±1%" in out
    assert cli(store, "--base-url", api.base_url, "--format", "json") == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and list(data["causes"]) == ["untracked"]


def test_cli_without_an_admin_key_exits_2(store: Store, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OPENAI_ADMIN_KEY", raising=False)
    assert cli(store) == 2
    assert "OPENAI_ADMIN_KEY is not set" in capsys.readouterr().err


def test_cli_refused_key_exits_3(store: Store, api: FakeAdminAPI, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-proj-ordinary")
    assert cli(store, "--base-url", api.base_url) == 3
    assert "HTTP 401" in capsys.readouterr().err


def test_the_same_through_mlflow_client_reads(store: Store, api: FakeAdminAPI,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores that are not MLflow's SQL store (an ``mlflow server``) are read with search_runs."""
    from tracked_openai.reports import call_runs

    fast = run(store, api)
    monkeypatch.setattr(call_runs, "sql_store", lambda client: None)
    slow = run(store, api)
    assert slow.ok and slow.to_dict() == fast.to_dict()

"""Repricing stored call runs (issue 19 item 3) on 10,000 runs in an embedded SQLite MLflow store.

The runs are the MLflow sink's own mapping (``run_fields``) of call records priced by the shipped
table when "recorded" (``tests/helpers/store_seed.py``). Every expected figure below is worked out from
the records' usage and the rates written in the test, never by the code under test.

Data set: 10,000 calls over November 2026 (day = i % 30 + 1), three features, five models:
gpt-4o (2.5 / cached 1.25 / 10 per 1M), gpt-4o-mini (0.15 / 0.075 / 0.6), gpt-4.1-mini
(0.4 / 0.1 / 1.6), acme-llm (unknown to the shipped table: unpriced), whisper-1 ($0.006/min).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tests.helpers.store_seed import seed_calls
from tracked_openai import reprice as rp
from tracked_openai.pricing import PricingError, load_price_book, price_record
from tracked_openai.records import CallRecord, Usage
from tracked_openai.reports import call_runs

N = 10_000
MILLION = Decimal(1_000_000)
RATES = {  # input, cached input, output: USD per 1M tokens (pricing/openai.yaml)
    "gpt-4o": (Decimal("2.5"), Decimal("1.25"), Decimal(10)),
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.075"), Decimal("0.6")),
    "gpt-4.1-mini": (Decimal("0.4"), Decimal("0.1"), Decimal("1.6")),
}
TOKEN_MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "acme-llm"]
FEATURES = ["pid_verification", "crs_analysis", "pfd_conversion"]


def make_records() -> list[CallRecord]:
    book = load_price_book()
    records = []
    for i in range(N):
        day = i % 30 + 1
        started = datetime(2026, 11, day, 8, 0, tzinfo=UTC).timestamp() + i  # unique instants
        feature = FEATURES[i % 3]
        if i % 50 == 7:
            rec = CallRecord(
                started_at=started,
                duration_s=0.5,
                feature=feature,
                endpoint="audio.transcriptions",
                model="whisper-1",
                response_model=None,
                usage=Usage(seconds=30.0 + i % 7),
                usage_source="response",
            )
        else:
            model = TOKEN_MODELS[i % 4]
            tin, tout = 100 + (i * 37) % 3000, 10 + (i * 11) % 700
            cached = (tin // 2) if i % 5 == 0 else 0
            rec = CallRecord(
                started_at=started,
                duration_s=1.0,
                feature=feature,
                endpoint="chat.completions",
                model=model,
                response_model=f"{model}-2024-07-18" if model == "gpt-4o-mini" else model,
                usage=Usage(
                    input_tokens=tin, output_tokens=tout, cached_input_tokens=cached, reasoning_tokens=0
                ),
                usage_source="response",
            )
        price_record(rec, book)
        records.append(rec)
    return records


@dataclass
class Store:
    uri: str
    db: Path
    records: list[CallRecord]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    db = tmp_path_factory.mktemp("reprice") / "mlflow.db"
    records = make_records()
    seed_calls(db, records)
    yield Store(f"sqlite:///{db}", db, records)


def token_cost(rec: CallRecord, rates: tuple[Decimal, Decimal, Decimal]) -> Decimal:
    u = rec.usage
    cached = u.cached_input_tokens or 0
    text_in = (u.input_tokens or 0) - cached
    return (text_in * rates[0] + cached * rates[1] + (u.output_tokens or 0) * rates[2]) / MILLION


def original(rec: CallRecord) -> Decimal | None:
    return rec.cost.total_usd if rec.cost is not None else None


def write_prices(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def day_of(rec: CallRecord) -> str:
    return datetime.fromtimestamp(rec.started_at, tz=UTC).date().isoformat()


# ---------------------------------------------------------------------------------------------
class TestSameTable:
    def test_repricing_with_the_recording_table_changes_nothing(self, store: Store) -> None:
        result = rp.reprice("shipped", tracking_uri=store.uri)
        expected = sum((c for r in store.records if (c := original(r)) is not None), Decimal(0))
        assert result.total.records == N
        assert result.total.changed == 0
        unknown = sum(1 for r in store.records if r.model == "acme-llm")
        assert result.total.priced_before == result.total.priced_after == N - unknown
        assert result.total.before_usd == result.total.after_usd == expected
        assert result.pricing_version == load_price_book().version

    def test_the_shipped_version_string_names_the_same_table(self, store: Store) -> None:
        version = load_price_book().version
        result = rp.reprice(version, tracking_uri=store.uri, since="2026-11-30")
        assert result.total.records == sum(1 for r in store.records if day_of(r) == "2026-11-30")
        assert result.total.changed == 0

    def test_an_unknown_version_or_path_is_an_error(self, store: Store) -> None:
        with pytest.raises(PricingError, match="neither a price file"):
            rp.reprice("openai-1999.1", tracking_uri=store.uri)


class TestFixedEntry:
    """A price file fixes one entry (gpt-4o-mini output 0.6 -> 0.66) and prices acme-llm."""

    BODY = """
version: fix-1
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

    def test_before_after_by_model(self, store: Store, tmp_path: Path) -> None:
        path = write_prices(tmp_path / "fix.yaml", self.BODY)
        result = rp.reprice(path, tracking_uri=store.uri)
        mini = [r for r in store.records if r.model == "gpt-4o-mini"]
        acme = [r for r in store.records if r.model == "acme-llm"]
        extra_mini = sum(
            (Decimal(r.usage.output_tokens or 0) * Decimal("0.06") / MILLION for r in mini), Decimal(0)
        )
        acme_cost = sum((token_cost(r, (Decimal(1), Decimal(1), Decimal(2))) for r in acme), Decimal(0))
        assert result.pricing_version.endswith("+fix-1")
        assert result.total.records == N
        assert result.total.difference_usd == extra_mini + acme_cost
        rows = {row["key"]: row for row in result.rows("model")}
        assert Decimal(rows["gpt-4o-mini-2024-07-18"]["difference_usd"]) == extra_mini
        assert rows["gpt-4o-mini-2024-07-18"]["changed"] == len(mini)
        assert rows["acme-llm"]["priced_before"] == 0 and rows["acme-llm"]["priced_after"] == len(acme)
        assert Decimal(rows["acme-llm"]["after_usd"]) == acme_cost
        for untouched in ("gpt-4o", "gpt-4.1-mini", "whisper-1"):
            assert rows[untouched]["changed"] == 0 and Decimal(rows[untouched]["difference_usd"]) == 0
        # Features and days add up to the same difference.
        for dim in ("feature", "day"):
            assert sum(Decimal(r["difference_usd"]) for r in result.rows(dim)) == result.total.difference_usd
        assert len(result.rows("day")) == 30

    def test_model_and_feature_filters(self, store: Store, tmp_path: Path) -> None:
        path = write_prices(tmp_path / "fix.yaml", self.BODY)
        result = rp.reprice(path, tracking_uri=store.uri, model="gpt-4o-mini", feature="crs_analysis")
        chosen = [r for r in store.records if r.model == "gpt-4o-mini" and r.feature == "crs_analysis"]
        assert result.total.records == len(chosen) > 0
        assert result.total.difference_usd == sum(
            (Decimal(r.usage.output_tokens or 0) * Decimal("0.06") / MILLION for r in chosen), Decimal(0)
        )
        assert [row["key"] for row in result.rows("feature")] == ["crs_analysis"]


class TestBackdatedChange:
    def test_a_price_change_backdated_to_the_15th_reprices_only_earlier_days(
        self, store: Store, tmp_path: Path
    ) -> None:
        # gpt-4o cost 3 / 1.5 / 12 until (not including) 2026-11-15, then today's 2.5 / 1.25 / 10.
        path = write_prices(
            tmp_path / "backdated.yaml",
            """
version: backdated-1
models:
  gpt-4o:
    source: "test: the November price change, backdated"
    input: 2.5
    cached_input: 1.25
    output: 10
    history:
      - until: 2026-11-15
        input: 3
        cached_input: 1.5
        output: 12
""",
        )
        result = rp.reprice(path, tracking_uri=store.uri)
        early = [r for r in store.records if r.model == "gpt-4o" and day_of(r) < "2026-11-15"]
        late = [r for r in store.records if r.model == "gpt-4o" and day_of(r) >= "2026-11-15"]
        expected = sum(
            (
                token_cost(r, (Decimal(3), Decimal("1.5"), Decimal(12))) - token_cost(r, RATES["gpt-4o"])
                for r in early
            ),
            Decimal(0),
        )
        assert expected > 0
        assert result.total.difference_usd == expected
        assert result.total.changed == len(early)
        days = {row["key"]: row for row in result.rows("day")}
        early_days = {day_of(r) for r in early}
        assert all(Decimal(days[d]["difference_usd"]) > 0 for d in early_days)
        assert all(Decimal(days[d]["difference_usd"]) == 0 for d in days if d not in early_days)
        assert max(early_days) < "2026-11-15" <= min(day_of(r) for r in late)
        assert late and all(r.cost is not None for r in late)


class TestWhatIf:
    def test_what_would_the_second_week_have_cost_on_gpt_41_mini(self, store: Store) -> None:
        result = rp.reprice(
            "shipped", tracking_uri=store.uri, since="2026-11-08", until="2026-11-14", as_model="gpt-4.1-mini"
        )
        chosen = [r for r in store.records if "2026-11-08" <= day_of(r) <= "2026-11-14"]
        tokens = [r for r in chosen if r.usage.input_tokens is not None]
        assert result.total.records == len(chosen)
        # Token calls at gpt-4.1-mini's rates; whisper transcriptions have no per-minute price there.
        assert result.total.after_usd == sum(
            (token_cost(r, RATES["gpt-4.1-mini"]) for r in tokens), Decimal(0)
        )
        assert result.total.priced_after == len(tokens)
        assert result.total.before_usd == sum(
            (c for r in chosen if (c := original(r)) is not None), Decimal(0)
        )
        # Rows stay under the model that served the call.
        assert {row["key"] for row in result.rows("model")} == {
            "gpt-4o",
            "gpt-4o-mini-2024-07-18",
            "gpt-4.1-mini",
            "acme-llm",
            "whisper-1",
        }

    def test_a_what_if_is_never_written(self, store: Store) -> None:
        with pytest.raises(ValueError, match="what-if"):
            rp.reprice("shipped", tracking_uri=store.uri, as_model="gpt-4.1-mini", write=True)


def _stored(db: Path, key: str) -> dict[str, float]:
    with sqlite3.connect(db) as con:
        return dict(
            con.execute("SELECT run_uuid, value FROM latest_metrics WHERE key = ?", (key,)).fetchall()
        )


class TestWrite:
    BODY = TestFixedEntry.BODY.replace("fix-1", "fix-2")

    def test_write_stores_new_figures_beside_the_original_once(self, store: Store, tmp_path: Path) -> None:
        path = write_prices(tmp_path / "fix.yaml", self.BODY)
        window = {"since": "2026-11-03", "until": "2026-11-05"}
        chosen = [r for r in store.records if "2026-11-03" <= day_of(r) <= "2026-11-05"]
        original_costs = _stored(store.db, "cost_usd")

        first = rp.reprice(path, tracking_uri=store.uri, write=True, **window)
        assert first.written == len(chosen) == 1_002 and first.already_written == 0
        keys = rp.repriced_keys(first.pricing_version)
        assert keys["cost_usd"] == f"repriced/{load_price_book().version}_fix-2/cost_usd"
        new = _stored(store.db, keys["cost_usd"])
        assert len(new) == len(chosen)  # every one priced by the new table (acme-llm too)
        assert Decimal(repr(sum(new.values()))).quantize(Decimal("1e-9")) == first.total.after_usd.quantize(
            Decimal("1e-9")
        )
        assert _stored(store.db, "cost_usd") == original_costs  # the original is never touched

        second = rp.reprice(path, tracking_uri=store.uri, write=True, **window)
        assert second.written == 0 and second.already_written == 1_002 and second.conflicting == 0
        assert second.total.after_usd == first.total.after_usd
        with sqlite3.connect(store.db) as con:
            points = con.execute(
                "SELECT COUNT(*) FROM metrics WHERE key = ?", (keys["cost_usd"],)
            ).fetchone()[0]
            statuses = dict(
                con.execute(
                    "SELECT value, COUNT(*) FROM tags WHERE key = ? GROUP BY value", (keys["cost_status"],)
                ).fetchall()
            )
        assert points == 1_002  # one point per run: the second pass logged nothing
        assert statuses == {"priced": 1_002}

    def test_same_version_other_prices_is_reported_not_overwritten(
        self, store: Store, tmp_path: Path
    ) -> None:
        window = {"since": "2026-11-20", "until": "2026-11-20"}
        first = rp.reprice(
            write_prices(tmp_path / "a.yaml", self.BODY), tracking_uri=store.uri, write=True, **window
        )
        changed = self.BODY.replace("output: 0.66", "output: 0.7")
        second = rp.reprice(
            write_prices(tmp_path / "b.yaml", changed), tracking_uri=store.uri, write=True, **window
        )
        minis = sum(1 for r in store.records if r.model == "gpt-4o-mini" and day_of(r) == "2026-11-20")
        assert first.written == second.total.records and second.written == 0
        assert second.conflicting == minis > 0


class TestResume:
    def test_an_interrupted_write_resumes_and_counts_every_record_once(
        self, store: Store, tmp_path: Path
    ) -> None:
        path = write_prices(tmp_path / "fix.yaml", TestFixedEntry.BODY.replace("fix-1", "fix-3"))
        state = tmp_path / "reprice.state.json"
        window = {"since": "2026-11-10", "until": "2026-11-13"}  # 1,333 runs, pages of 500
        chosen = [r for r in store.records if "2026-11-10" <= day_of(r) <= "2026-11-13"]
        seen: list[int] = []

        def stop_after_two_pages(done: int) -> None:
            seen.append(done)
            if done >= 1_000:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            rp.reprice(
                path,
                tracking_uri=store.uri,
                write=True,
                state_path=state,
                page_size=500,
                progress=stop_after_two_pages,
                **window,
            )
        assert seen == [500, 1_000] and state.exists()

        resumed = rp.reprice(
            path, tracking_uri=store.uri, write=True, state_path=state, page_size=500, **window
        )
        assert resumed.resumed
        assert resumed.total.records == len(chosen) == 1_333
        assert resumed.written == 1_333 and resumed.already_written == 0
        assert not state.exists()  # removed once complete

        whole = rp.reprice(path, tracking_uri=store.uri, **window)
        assert resumed.total == whole.total
        assert {k: v.to_dict() for k, v in resumed.by["day"].items()} == {
            k: v.to_dict() for k, v in whole.by["day"].items()
        }

    def test_a_state_file_of_another_repricing_is_ignored(self, store: Store, tmp_path: Path) -> None:
        state = tmp_path / "reprice.state.json"
        state.write_text('{"format": 1, "key": "someone-else", "position_ms": 0, "seen_at_position": []}')
        result = rp.reprice(
            "shipped", tracking_uri=store.uri, since="2026-11-01", until="2026-11-01", state_path=state
        )
        assert not result.resumed and result.total.records == sum(
            1 for r in store.records if day_of(r) == "2026-11-01"
        )


def test_slug_keeps_keys_mlflow_accepts() -> None:
    assert rp.version_slug("openai-2026.11.26.4+acme/1 x") == "openai-2026.11.26.4_acme/1 x"
    assert rp.repriced_keys("v1")["cost_usd"] == "repriced/v1/cost_usd"


# -- the command line ------------------------------------------------------------------------------
def test_cli_prints_the_difference_and_writes_once(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tracked_openai.cli import main

    monkeypatch.chdir(tmp_path)  # the default state file goes to the working directory
    path = write_prices(tmp_path / "fix.yaml", TestFixedEntry.BODY.replace("fix-1", "fix-cli"))
    args = ["reprice", "--tracking-uri", store.uri, "--pricing", str(path), "--since", "2026-11-22",
            "--until", "2026-11-22"]
    chosen = [r for r in store.records if day_of(r) == "2026-11-22"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"Repriced {len(chosen):,} call records with price table " in out
    assert "by feature" in out and "by model" in out and "by day" in out and "2026-11-22" in out
    assert main([*args, "--write"]) == 0
    assert re.search(rf"written now / already there\s+│\s+{len(chosen):,} / 0 │", capsys.readouterr().out)
    assert not (tmp_path / "tracked-openai-reprice.state.json").exists()
    assert main([*args, "--write", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["written"] == 0 and data["already_written"] == len(chosen)
    assert Decimal(data["difference_usd"]) == Decimal(data["after_usd"]) - Decimal(data["before_usd"]) > 0


def test_cli_bad_pricing_and_what_if_write_exit_2(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    from tracked_openai.cli import main

    assert main(["reprice", "--tracking-uri", store.uri, "--pricing", "no-such.yaml"]) == 2
    assert "neither a price file" in capsys.readouterr().err
    assert main(["reprice", "--tracking-uri", store.uri, "--pricing", "shipped", "--as-model", "gpt-4.1-mini",
                 "--write", "--state", "x.json"]) == 2
    assert "what-if" in capsys.readouterr().err


def test_write_through_the_mlflow_client_as_for_a_tracking_server(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stores that are not MLflow's SQL store (an ``mlflow server``) get ``log_batch`` per run."""
    monkeypatch.setattr(call_runs, "sql_store", lambda client: None)
    path = write_prices(tmp_path / "fix.yaml", TestFixedEntry.BODY.replace("fix-1", "fix-client"))
    window = {"since": "2026-11-22T08:00:00", "until": "2026-11-22T08:10:00"}
    end = datetime(2026, 11, 22, 8, 10, tzinfo=UTC).timestamp()
    chosen = [r for r in store.records if day_of(r) == "2026-11-22" and r.started_at < end]
    first = rp.reprice(path, tracking_uri=store.uri, write=True, **window)
    assert first.written == len(chosen) == 20
    keys = rp.repriced_keys(first.pricing_version)
    stored = _stored(store.db, keys["cost_usd"])
    assert len(stored) == 20
    assert sum(Decimal(repr(v)) for v in stored.values()) == first.total.after_usd
    again = rp.reprice(path, tracking_uri=store.uri, write=True, **window)
    assert again.written == 0 and again.already_written == 20


def test_millisecond_bounds_do_not_move_by_float_rounding() -> None:
    """A resumed position (a start time in ms) must come back exactly: one ms earlier and the
    runs of that instant would be counted twice."""
    instants = range(1_764_576_000_000, 1_764_576_005_000)
    assert all(call_runs.ms(datetime.fromtimestamp(ms / 1000, tz=UTC)) == ms for ms in instants)


def test_a_half_written_run_is_completed_not_skipped(store: Store, tmp_path: Path) -> None:
    """``log_batch`` commits metrics before tags: a run interrupted in between has this version's
    cost but no ``cost_status``. The next ``--write`` writes it whole, its figures replaced."""
    from mlflow.tracking import MlflowClient

    path = write_prices(tmp_path / "fix.yaml", TestFixedEntry.BODY.replace("fix-1", "fix-half"))
    window = {"since": "2026-11-22T08:00:00", "until": "2026-11-22T08:01:00"}  # i = 21 and 51
    keys = rp.repriced_keys(f"{load_price_book().version}+fix-half")
    with sqlite3.connect(store.db) as con:
        (run_id,) = con.execute(
            "SELECT run_uuid FROM runs WHERE start_time = ?",
            (round(datetime(2026, 11, 22, 8, 0, 21, tzinfo=UTC).timestamp() * 1000),),
        ).fetchone()
    MlflowClient(store.uri).log_metric(run_id, keys["cost_usd"], 123.0, timestamp=1, step=0)
    result = rp.reprice(path, tracking_uri=store.uri, write=True, **window)
    assert result.written == 2 and result.already_written == 0
    with sqlite3.connect(store.db) as con:
        latest = con.execute(
            "SELECT value FROM latest_metrics WHERE run_uuid = ? AND key = ?", (run_id, keys["cost_usd"])
        ).fetchall()
        status = con.execute(
            "SELECT value FROM tags WHERE run_uuid = ? AND key = ?", (run_id, keys["cost_status"])
        ).fetchall()
    at = datetime(2026, 11, 22, 8, 0, 21, tzinfo=UTC).timestamp()
    (rec,) = [r for r in store.records if r.started_at == at]
    assert rec.model == "gpt-4o-mini"
    assert latest == [(float(token_cost(rec, (Decimal("0.15"), Decimal("0.075"), Decimal("0.66")))),)]
    assert status == [("priced",)]

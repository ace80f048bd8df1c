"""Price files: the shipped table validates and covers the reference; user overrides (env var,
``configure``, folders) take precedence; a malformed file fails with file, line and field."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

import tracked_openai
from tests.helpers.fakeopenai import FakeOpenAI, FakeResponse
from tests.helpers.pricing import reset_price_book
from tracked_openai.export import runtime as _runtime
from tracked_openai.pricing import (
    PriceBook,
    PricingError,
    get_price_book,
    load_price_book,
    load_price_file,
    price_record,
    shipped_pricing_dir,
    use_pricing,
)
from tracked_openai.records import CallRecord, Usage

SHIPPED_VERSION = load_price_file(shipped_pricing_dir() / "openai.yaml").version


@pytest.fixture(autouse=True)
def _fresh_book(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_runtime.settings, "pricing", None)
    reset_price_book()
    yield
    reset_price_book()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def record(model: str, **usage: int) -> CallRecord:
    r = CallRecord(started_at=1_790_000_000.0, endpoint="chat.completions", model=model, usage=Usage(**usage))
    price_record(r)
    return r


ACME = """
version: acme-2026.1
models:
  gpt-4o:
    source: "ACME enterprise agreement 2026-01 (negotiated 20% off)"
    input: 2
    cached_input: 1
    output: 8
  acme-llm:
    source: "our own fine-tuned deployment, internal transfer price"
    input: 0.5
    output: 1
"""


# ---------------------------------------------------------------- shipped table


def test_shipped_table_loads_and_has_a_version() -> None:
    book = load_price_book()
    assert book.version == SHIPPED_VERSION
    assert SHIPPED_VERSION.startswith("openai-")
    assert all(entry.source for entry in book.models.values())


# Every family of prices.md "Core consensus numbers" must be priced by the shipped table.
CORE_MODELS = [
    "gpt-4o", "gpt-4o-2024-05-13", "chatgpt-4o-latest", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini",
    "gpt-4.1-nano", "o1", "o1-mini", "o1-pro", "o3", "o3-mini", "o3-pro", "o4-mini", "gpt-5", "gpt-5.1",
    "gpt-5-chat-latest", "gpt-5-mini", "gpt-5-nano", "gpt-5.2", "gpt-5.4", "gpt-5.5", "gpt-5.6",
    "gpt-5.6-sol", "gpt-5.6-terra", "gpt-5.6-luna", "gpt-3.5-turbo", "gpt-4", "gpt-4-turbo",
    "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002", "gpt-4o-audio-preview",
    "gpt-4o-realtime-preview", "gpt-4o-mini-audio-preview", "gpt-4o-mini-realtime-preview", "gpt-realtime",
    "gpt-audio", "dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2",
    "whisper-1", "tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
]  # fmt: skip


@pytest.mark.parametrize("model", CORE_MODELS)
def test_core_consensus_models_are_listed_with_a_source(model: str) -> None:
    entry = load_price_book().models[model]
    assert entry.source.strip()


def test_every_disputed_row_of_the_reference_is_decided_in_the_yaml() -> None:
    text = (shipped_pricing_dir() / "openai.yaml").read_text()
    decided = {
        "chatgpt-image-latest", "gpt-4o-mini-transcribe", "gpt-4o-transcribe", "gpt-4o-transcribe-diarize",
        "gpt-5-nano", "gpt-5.5", "gpt-5.6", "gpt-5.6-sol", "gpt-realtime-2",
    }  # fmt: skip
    book = load_price_book()
    for model in decided:
        # The note says the lists disagree and which figure was chosen; the source names the lists.
        note = book.models[model].note or ""
        assert "disagree" in note, model
        assert "see note" in book.models[model].source, model
    assert text.count("disagree") >= len(decided)


# ---------------------------------------------------------------- overrides


def test_user_file_overrides_and_extends(tmp_path: Path) -> None:
    use_pricing(write(tmp_path / "acme.yaml", ACME))
    # negotiated gpt-4o 2 / 1 / 8: in 600 * 2 + 400 * 1 = 1600/1M; out 100 * 8 = 800/1M
    r = record("gpt-4o", input_tokens=1000, cached_input_tokens=400, output_tokens=100)
    assert r.cost is not None and r.cost.total_usd == Decimal("0.0024")
    assert r.pricing_version == f"{SHIPPED_VERSION}+acme-2026.1"
    # custom model: 1000 * 0.5 + 100 * 1 = 600/1M
    custom = record("acme-llm", input_tokens=1000, output_tokens=100)
    assert custom.cost is not None and custom.cost.total_usd == Decimal("0.0006")
    # the user entry replaces ours whole: snapshots resolve to it too
    assert get_price_book().resolve("gpt-4o-2024-11-20") == ("gpt-4o", "snapshot->gpt-4o")
    # everything else still comes from the shipped table: gpt-4o-mini 1000 * 0.15 + 100 * 0.6
    other = record("gpt-4o-mini", input_tokens=1000, output_tokens=100)
    assert other.cost is not None and other.cost.total_usd == Decimal("0.00021")


def test_folder_files_apply_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "prices"
    folder.mkdir()
    write(folder / "10-acme.yaml", ACME)
    write(
        folder / "20-q3-discount.yml",
        """
        version: q3
        models:
          gpt-4o:
            source: "Q3 promotion"
            input: 1
            output: 4
        """,
    )
    use_pricing(folder)
    # the later file wins: 1000 * 1 + 100 * 4 = 1400/1M
    r = record("gpt-4o", input_tokens=1000, output_tokens=100)
    assert r.cost is not None and r.cost.total_usd == Decimal("0.0014")
    assert r.pricing_version == f"{SHIPPED_VERSION}+acme-2026.1+q3"
    assert get_price_book().origin["gpt-4o"].endswith("20-q3-discount.yml")
    assert get_price_book().origin["acme-llm"].endswith("10-acme.yaml")


def test_provider_specific_entry_wins_for_that_provider(tmp_path: Path) -> None:
    use_pricing(
        write(
            tmp_path / "azure.yaml",
            """
            version: azure-eu
            models:
              azure/gpt-4o:
                source: "Azure EU data zone, +10%"
                input: 2.75
                output: 11
            """,
        )
    )
    r = CallRecord(provider="azure", model="prod", response_model="gpt-4o", usage=Usage(input_tokens=1000))
    price_record(r)
    assert r.cost is not None and r.cost.total_usd == Decimal("0.00275")  # 1000 * 2.75
    assert r.pricing_rule == "azure/exact"
    plain = record("gpt-4o", input_tokens=1000)  # openai: our 2.50
    assert plain.cost is not None and plain.cost.total_usd == Decimal("0.0025")


def test_configure_pricing_applies_to_tracked_calls(
    tmp_path: Path, client, fake: FakeOpenAI, records
) -> None:
    tracked_openai.configure(pricing=str(write(tmp_path / "acme.yaml", ACME)))
    fake.add("POST", "/responses", FakeResponse.from_fixture("responses_stream_gpt4o_2025"))
    for _ in client.responses.create(model="gpt-4o", input="x", stream=True):
        pass
    (call,) = records.calls
    # The response reports gpt-4o-2024-08-06, which our table lists on its own; the user's tables
    # are searched first with the whole rule chain, so their gpt-4o entry prices the snapshot.
    # 27 * 2 + 11 * 8 = 54 + 88 = 142/1M
    assert call.pricing_rule == "snapshot->gpt-4o"
    assert call.cost is not None and call.cost.total_usd == Decimal("0.000142")
    assert call.pricing_version == f"{SHIPPED_VERSION}+acme-2026.1"


def test_configure_with_a_bad_file_raises_and_keeps_the_last_good_table(tmp_path: Path) -> None:
    use_pricing(write(tmp_path / "acme.yaml", ACME))
    bad = write(tmp_path / "bad.yaml", "version: x\nmodels:\n  gpt-4o:\n    source: s\n    input: -2\n")
    with pytest.raises(PricingError, match=r"bad\.yaml:5: models\.gpt-4o\.input: Input should be greater"):
        tracked_openai.configure(pricing=str(bad))
    assert get_price_book().version == f"{SHIPPED_VERSION}+acme-2026.1"
    assert record("acme-llm", input_tokens=1).cost is not None


def test_use_pricing_none_restores_the_shipped_table(tmp_path: Path) -> None:
    use_pricing(write(tmp_path / "acme.yaml", ACME))
    use_pricing(None)
    assert get_price_book().version == SHIPPED_VERSION
    assert record("acme-llm", input_tokens=1).cost is None


def test_a_built_price_book_can_be_passed(tmp_path: Path) -> None:
    book = PriceBook([("mine", load_price_file(write(tmp_path / "only.yaml", ACME)))])
    use_pricing(book)
    assert get_price_book() is book
    assert record("gpt-4o-mini", input_tokens=1).cost_status == "unpriced"  # only the user's models


def test_env_var_file_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runtime.settings, "pricing", str(write(tmp_path / "acme.yaml", ACME)))
    reset_price_book()
    r = record("acme-llm", input_tokens=1000, output_tokens=100)
    assert r.cost is not None and r.pricing_version == f"{SHIPPED_VERSION}+acme-2026.1"


def test_bad_env_var_file_logs_and_prices_with_the_shipped_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bad = write(tmp_path / "bad.yaml", "version: x\nmodels:\n  gpt-4o:\n    source: s\n    inptu: 2\n")
    monkeypatch.setattr(_runtime.settings, "pricing", str(bad))
    reset_price_book()
    caplog.set_level(logging.ERROR, logger="tracked_openai")
    r = record("gpt-4o", input_tokens=1000)  # never raises on the exporter thread
    assert r.cost is not None and r.cost.total_usd == Decimal("0.0025")  # shipped 2.50
    assert r.pricing_version == SHIPPED_VERSION
    assert f"{bad}:5: models.gpt-4o.inptu: Extra inputs are not permitted" in caplog.text
    assert "TRACKED_OPENAI_PRICING ignored" in caplog.text


# ---------------------------------------------------------------- malformed files

MALFORMED = [
    ("syntax", "version: x\nmodels:\n  a: {input: 1\n", "bad.yaml:4: invalid YAML: expected ',' or '}'"),
    (
        "negative price",
        "version: x\nmodels:\n  m:\n    source: s\n    input: -1\n",
        "bad.yaml:5: models.m.input: Input should be greater than or equal to 0",
    ),
    (
        "typo in a field",
        "version: x\nmodels:\n  m:\n    source: s\n    input: 1\n    ouptut: 2\n",
        "bad.yaml:6: models.m.ouptut: Extra inputs are not permitted",
    ),
    (
        "missing source",
        "version: x\nmodels:\n  m:\n    input: 1\n",
        "bad.yaml:3: models.m.source: Field required",
    ),
    (
        "missing version",
        "models:\n  m:\n    source: s\n    input: 1\n",
        "bad.yaml:1: version: Field required",
    ),
    (
        "not a number",
        "version: x\nmodels:\n  m:\n    source: s\n    input: abc\n",
        "bad.yaml:5: models.m.input: Input should be a valid decimal",
    ),
    (
        "infinite",
        "version: x\nmodels:\n  m:\n    source: s\n    output: .inf\n",
        "bad.yaml:5: models.m.output: Input should be a valid decimal",
    ),
    (
        "history order",
        "version: x\nmodels:\n  m:\n    source: s\n    input: 1\n    history:\n"
        "      - until: 2025-01-02\n        input: 2\n      - until: 2024-01-02\n        input: 3\n",
        "bad.yaml:6: models.m.history: history entries must be in increasing `until` order, each date once",
    ),
    (
        "history date",
        "version: x\nmodels:\n  m:\n    source: s\n    input: 1\n    history:\n"
        "      - until: soon\n        input: 2\n",
        "bad.yaml:7: models.m.history[0].until: Input should be a valid date",
    ),
    (
        "duplicate model",
        "version: x\nmodels:\n  m:\n    source: s\n    input: 1\n  m:\n    source: s\n    input: 2\n",
        "bad.yaml:6: models.m: duplicate key",
    ),
    (
        "image size",
        "version: x\nmodels:\n  m:\n    source: s\n    per_image:\n      hd: {big: 0.1}\n",
        "bad.yaml:5: models.m.per_image: per_image.hd: size 'big' is not WIDTHxHEIGHT",
    ),
    (
        "no price",
        "version: x\nmodels:\n  m:\n    source: s\n",
        "bad.yaml:3: models.m: no price given",
    ),
    (
        "standard tier",
        "version: x\nmodels:\n  m:\n    source: s\n    input: 1\n    tiers:\n      default: {input: 1}\n",
        "bad.yaml:6: models.m.tiers: tier 'default' is the standard price",
    ),
    (
        "tier field",
        "version: x\nmodels:\n  m:\n    source: s\n    input: 1\n    tiers:\n      batch:\n"
        "        input: 0.5\n        output: -2\n",
        "bad.yaml:9: models.m.tiers.batch.output: Input should be greater than or equal to 0",
    ),
    (
        "long context threshold",
        "version: x\nmodels:\n  m:\n    source: s\n    input: 1\n    long_context:\n      input: 2\n",
        "bad.yaml:6: models.m.long_context.threshold: Field required",
    ),
    (
        "model name like a type",
        "version: x\nmodels:\n  decimal-m:\n    source: s\n    input: [1]\n",
        "bad.yaml:5: models.decimal-m.input: Decimal input should be an integer",
    ),
    ("empty", "", "bad.yaml:1: empty price file"),
    ("not a mapping", "- a\n", "bad.yaml:1: a price file is a mapping with `version:` and `models:`"),
    ("currency", "version: x\ncurrency: EUR\nmodels: {}\n", "bad.yaml:2: currency: only USD price tables"),
]


@pytest.mark.parametrize(("text", "message"), [pytest.param(t, m, id=i) for i, t, m in MALFORMED])
def test_malformed_file_names_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PricingError) as info:
        load_price_file(path)
    assert str(info.value).startswith(f"{tmp_path}/{message}")


def test_every_problem_in_a_file_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path / "two.yaml",
        """
        version: x
        models:
          a:
            source: s
            input: -1
          b:
            source: s
            output: nope
        """,
    )
    with pytest.raises(PricingError) as info:
        load_price_file(path)
    assert str(info.value).splitlines() == [
        f"{path}:5: models.a.input: Input should be greater than or equal to 0",
        f"{path}:8: models.b.output: Input should be a valid decimal",
    ]


def test_missing_file_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(PricingError, match=r"nope\.yaml: no such price file or folder"):
        use_pricing(tmp_path / "nope.yaml")
    with pytest.raises(PricingError, match=r": no \*\.yaml price files in this folder"):
        use_pricing(tmp_path)


def test_prices_are_exact_decimals_not_floats(tmp_path: Path) -> None:
    pf = load_price_file(
        write(tmp_path / "p.yaml", "version: x\nmodels:\n  m:\n    source: s\n    input: 0.1\n")
    )
    assert pf.models["m"].input == Decimal("0.1")  # a binary float would be 0.1000000000000000055...


def test_installed_wheel_layout_finds_the_packaged_tables(tmp_path: Path) -> None:
    # A wheel has no top-level pricing/ folder: hatch force-includes it as tracked_openai/_pricing_data.
    import shutil
    import subprocess
    import sys

    package = Path(tracked_openai.__file__).resolve().parent
    site = tmp_path / "site"
    shutil.copytree(package, site / "tracked_openai", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(shipped_pricing_dir(), site / "tracked_openai" / "_pricing_data")
    code = (
        "import tracked_openai.pricing as p; d = p.shipped_pricing_dir(); "
        "print(d.name, p.load_price_book().version)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["_pricing_data", SHIPPED_VERSION]

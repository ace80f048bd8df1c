"""``tracked-openai pricing show|check|diff|import-genai-prices``: output and exit codes."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.pricing import reset_price_book
from tracked_openai.cli import main
from tracked_openai.export import runtime as _runtime
from tracked_openai.pricing import load_price_file, shipped_pricing_dir

SHIPPED = shipped_pricing_dir() / "openai.yaml"
VERSION = load_price_file(SHIPPED).version


@pytest.fixture(autouse=True)
def _fresh_book(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_runtime.settings, "pricing", None)
    reset_price_book()
    yield
    reset_price_book()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["pricing", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_lists_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "show")
    assert code == 0
    assert VERSION in out
    for model in ("gpt-4o-mini", "dall-e-3", "whisper-1", "tts-1-hd", "text-embedding-3-small", "gpt-5.5"):
        assert f" {model} " in out


def test_show_one_model_resolves_and_prints_every_period_and_tier(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "show", "gpt-4o-2024-11-20")
    assert code == 0
    assert "gpt-4o-2024-11-20 -> gpt-4o (snapshot->gpt-4o)" in out
    lines = [line for line in out.splitlines() if "│" in line]
    # the 2024 alias price, then today's standard / batch / priority rows
    assert any("to 2024-10-02" in line and "│     5 │" in line and "│     15 │" in line for line in lines)
    assert any("since 2024-10-02" in line and "priority" in line and "4.25" in line for line in lines)


def test_show_per_image_and_per_minute(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "show", "dall-e-3")
    assert code == 0 and "1792x1024" in out and "0.12" in out
    code, out, _ = run(capsys, "show", "whisper-1")
    assert code == 0 and "$0.006 per minute of audio" in out


def test_show_unknown_model_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "show", "gpt-imaginary")
    assert code == 1
    assert (
        err.strip()
        == f"tracked-openai pricing: no price for model 'gpt-imaginary' (unknown model) in version {VERSION}"
    )


def test_show_with_a_user_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user = write(
        tmp_path / "acme.yaml",
        """
        version: acme-1
        models:
          acme-llm: {source: internal, input: 0.5, output: 1}
        """,
    )
    code, out, _ = run(capsys, "show", "acme-llm", "--pricing", str(user))
    assert code == 0
    assert f"acme-llm -> acme-llm (exact); version {VERSION}+acme-1; from {user}" in out
    # The user's own words, as written.
    assert out.splitlines()[1] == "source: internal"


def test_show_prints_the_shipped_source_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "show", "gpt-4o")
    assert code == 0
    source = load_price_file(SHIPPED).models["gpt-4o"].source
    assert "LiteLLM (2026-07-24)" in source and "https://openai.com/api-priority-processing/" in source
    # The console wraps long lines at spaces: compare with the whitespace collapsed.
    assert f"source: {source}" in " ".join(out.split())


# Words of the survey the table was drafted from, and paths users cannot open.
_NOT_FOR_USERS = (
    "prices.csv", "prices.md", "/work/", "AGREE", "SINGLE-SOURCE", "DISPUTED", "RESOLVED",
    "curated-history", "sources=", "<-",
)
# Every `source:` names at least one public list (see the file's header) or page.
_PUBLIC = ("LiteLLM", "MLflow 3.17.2", "genai-prices", "llm-prices", "tokencost", "https://")


def test_shipped_sources_name_public_sources_in_plain_words() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    for word in _NOT_FOR_USERS:
        assert word not in text, word
    for name, entry in load_price_file(SHIPPED).models.items():
        assert any(p in entry.source for p in _PUBLIC), name
        # Whole sentences, none cut short mid-text.
        assert entry.source.endswith((".", ".)")), (name, entry.source[-40:])
        assert entry.source.count("(") == entry.source.count(")"), name
    for kind, tool in load_price_file(SHIPPED).tools.items():
        # Hosted tools' fees: OpenAI's pricing page is cited by every entry.
        assert "https://developers.openai.com/api/docs/pricing" in tool.source, kind
        assert tool.source.endswith((".", ".)")), (kind, tool.source[-40:])
        assert tool.source.count("(") == tool.source.count(")"), kind


def test_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    count = len(load_price_file(SHIPPED).models)
    code, out, _ = run(capsys, "check", str(SHIPPED))
    # The shipped file overrides nothing: it is the shipped table.
    assert (code, out) == (0, f"{SHIPPED}: ok, version {VERSION}, {count} models (the shipped price table)\n")
    copy = tmp_path / "copy.yaml"
    copy.write_bytes(SHIPPED.read_bytes())
    code, out, _ = run(capsys, "check", str(copy))
    assert out == f"{copy}: ok, version {VERSION}, {count} models (a copy of the shipped price table)\n"
    user = write(
        tmp_path / "acme.yaml",
        """
        version: acme-1
        models:
          gpt-4o: {source: contract, input: 2, output: 8}
          acme-llm: {source: internal, input: 1}
        """,
    )
    code, out, _ = run(capsys, "check", str(user))
    assert (code, out) == (
        0,
        f"{user}: ok, version acme-1, 2 models; "
        "overrides the shipped price of 1 model (gpt-4o), adds 1 model\n",
    )


def test_check_invalid_file_exits_1_with_file_line_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path / "bad.yaml", "version: x\nmodels:\n  m:\n    source: s\n    input: -1\n")
    code, out, err = run(capsys, "check", str(bad))
    assert code == 1 and out == ""
    assert (
        err
        == f"tracked-openai pricing: {bad}:5: models.m.input: Input should be greater than or equal to 0\n"
    )


def test_check_missing_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "check", str(tmp_path / "nope.yaml"))
    assert code == 2 and "no such file or folder" in err


def test_diff_shows_changed_added_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = write(
        tmp_path / "old.yaml",
        """
        version: v1
        models:
          a: {source: s, input: 1, output: 2}
          gone: {source: s, input: 1}
        """,
    )
    new = write(
        tmp_path / "new.yaml",
        """
        version: v2
        models:
          a:
            source: s2
            input: 0.5
            output: 2
            tiers:
              batch: {input: 0.25, output: 1}
          fresh: {source: s, input: 3}
        """,
    )
    code, out, _ = run(capsys, "diff", str(old), str(new))
    assert code == 0
    rows = [
        " ".join(cell.strip() for cell in line.split("│")[1:-1]).strip()
        for line in out.splitlines()
        if "│" in line
    ]
    assert rows == [
        "a changed input 1 0.5",
        "a changed tiers.batch.input - 0.25",
        "a changed tiers.batch.output - 1",
        "fresh added",
        "gone removed",
    ]
    assert "v1 -> v2" in out


def test_diff_identical_prices(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "diff", str(SHIPPED), str(SHIPPED))
    assert code == 0 and out.strip() == f"no price changes ({VERSION} -> {VERSION})"


def test_diff_invalid_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path / "bad.yaml", "version: x\nmodels:\n  m: {source: s}\n")
    code, _, err = run(capsys, "diff", str(SHIPPED), str(bad))
    assert code == 1 and f"{bad}:3: models.m: no price given" in err


def test_import_genai_prices_drafts_a_valid_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("genai_prices", reason="genai-prices is a dev dependency")
    out_file = tmp_path / "draft.yaml"
    code, out, _ = run(capsys, "import-genai-prices", "--out", str(out_file), "--version", "draft-1")
    assert code == 0 and "review" in out
    draft = load_price_file(out_file)  # validates
    assert draft.version == "draft-1"
    sol = draft.models["gpt-5.6-sol"]
    # the genai-prices data carries the 2026-08-21 cut as a start date: it becomes our history
    assert [h.until.isoformat() for h in sol.history] == ["2026-08-21"]
    assert (sol.history[0].input, sol.input) == (5, 4)
    assert sol.long_context is not None and sol.long_context.threshold == 272000
    assert sol.tiers is not None and sol.tiers["priority"].input == 8
    assert all("draft" in m.source for m in draft.models.values())

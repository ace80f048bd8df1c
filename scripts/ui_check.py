"""A real-browser check of what a user sees in the MLflow UI after ``tracked-openai demo``.

    .venv/bin/python scripts/ui_check.py [--out docs/img] [--chromium /usr/bin/chromium]

Runs the demo (default mode ``runs+traces``) into a fresh SQLite store, serves that store with
``mlflow server`` on a free loopback port, opens the ``pid_verification`` experiment ("P&ID
Design Verification") in Debian's chromium through playwright, and checks the page text
against what the store holds (read with MLflow's own client and ``tracked_openai.reports``):

* Traces tab (with MLflow's "Trace name" and "Cost" columns switched on): one row per
  operation, named ``feature/operation``, with the trace's token count;
* a trace opened: the operation's root span and its call span, named after the endpoint and
  the served model, with the call's tokens and cost;
* Overview tab: the token usage (input, output) and the total cost equal our report's.

Screenshots go to ``--out`` (``mlflow-traces-tab.png``, ``mlflow-trace-detail.png``,
``mlflow-overview.png``). Exits 1 with the failed checks listed, 0 when all hold. Needs
``playwright`` (pip) and a chromium binary; no browser download, no network.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")

FEATURE = "pid_verification"
EXPERIMENT = "P&ID Design Verification"
_WAIT_MS = 240_000  # a busy machine: the UI's first load takes 20-40 s here


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def that(self, ok: bool, what: str) -> None:
        if ok:
            self.passed += 1
            print(f"  ok    {what}")
        else:
            self.failed.append(what)
            print(f"  FAIL  {what}")


def run_demo(db: Path) -> None:
    cmd = [sys.executable, "-m", "tracked_openai.cli", "--tracking-uri", f"sqlite:///{db}", "demo", "--quiet"]
    subprocess.run(cmd, check=True, cwd=db.parent, stdout=subprocess.DEVNULL, timeout=900)


def expected(uri: str) -> dict[str, Any]:
    """What the UI should show, from the store itself: the feature's traces (name, tokens) and
    a call span of an operation (name, tokens, cost), and our report's totals."""
    from mlflow import MlflowClient

    from tracked_openai import reports

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    traces = client.search_traces(locations=[exp.experiment_id], max_results=100)
    rows = []
    calls: dict[str, dict[str, Any]] = {}  # by the 8 hex digits the trace view shows
    for trace in traces:
        usage = trace.info.token_usage or {}
        spans = trace.data.spans
        costs = [s.attributes.get("mlflow.llm.cost") for s in spans]
        cost = sum(c["total_cost"] for c in costs if c)
        name = trace.info.tags.get("mlflow.traceName")
        rows.append({"name": name, "tokens": usage.get("total_tokens"), "cost": cost})
        if len(spans) == 2 and trace.info.state.value == "OK":
            root = next(s for s in spans if s.parent_id is None)
            child = next(s for s in spans if s.parent_id is not None)
            attrs = child.attributes
            calls[trace.info.trace_id[3:11]] = {
                "trace_tokens": usage.get("total_tokens"),
                "root": root.name,
                "name": child.name,
                "tokens": attrs["mlflow.chat.tokenUsage"]["total_tokens"],
                "cost": attrs["mlflow.llm.cost"]["total_cost"],
            }
    totals = reports.call_totals(FEATURE, tracking_uri=uri)
    assert calls, "the demo wrote no operation with one call in " + EXPERIMENT
    return {"experiment_id": exp.experiment_id, "traces": rows, "calls": calls, "totals": totals}


def _dollars(text: str, after: str) -> float | None:
    match = re.search(r"\$([0-9][0-9.,]*)\s*" + re.escape(after), text)
    return float(match.group(1).replace(",", "")) if match else None


def _close(value: float | None, want: float) -> bool:
    # The UI shows three significant digits.
    return value is not None and abs(value - want) <= max(abs(want) * 0.006, 1e-12)


def _dismiss(page: Any, tip: bool = False) -> None:
    """MLflow's first-visit tip ("Detect issues", modal: nothing else can be clicked while it
    is up; it shows a few seconds after the table) and its assistant panel, which opens on
    every page load and covers the right of the table."""
    if tip:
        try:
            page.get_by_text("Got it", exact=True).click(timeout=20_000)
        except Exception:
            pass
    try:
        page.get_by_text("MLflow Assistant", exact=True).wait_for(timeout=10_000)
        page.wait_for_timeout(1000)
        page.locator('button[aria-label="Close"]').last.click(timeout=10_000)
        page.get_by_text("MLflow Assistant", exact=True).wait_for(state="hidden", timeout=10_000)
    except Exception:
        pass  # it stays open in some runs: the viewport leaves the table room beside it


def browse(url: str, want: dict[str, Any], out: Path, chromium: str, checks: Checks) -> None:
    from playwright.sync_api import sync_playwright

    exp = want["experiment_id"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1760, "height": 860})
        page.set_default_timeout(_WAIT_MS)

        # -- Traces tab, with the trace name and cost columns on.
        page.goto(f"{url}/#/experiments/{exp}/traces")
        page.get_by_text("Tokens", exact=True).first.wait_for()
        _dismiss(page, tip=True)
        page.get_by_role("button", name="Display").click()
        page.get_by_text("Columns", exact=True).click()
        # A user's own view: trace name and cost on, the (empty) input and output off.
        for column in ("Trace name", "Cost", "Input", "Output"):
            page.get_by_role("menuitemcheckbox", name=column).click()
        page.keyboard.press("Escape")
        page.keyboard.press("Escape")
        page.mouse.move(5, 5)
        page.wait_for_timeout(2000)
        text = page.inner_text("body")
        for row in want["traces"]:
            checks.that(row["name"] in text, f"Traces tab lists {row['name']}")
        counts = sorted({str(r["tokens"]) for r in want["traces"] if r["tokens"]})
        checks.that(
            all(re.search(rf"(^|\n){c}(\n|$)", text) for c in counts), f"Traces tab shows tokens {counts}"
        )
        checks.that(f"{len(want['traces'])} of {len(want['traces'])}" in text, "every trace listed")
        listed = [float(v) for v in re.findall(r"\$([0-9][0-9.]*)", text)]
        for cost in sorted({r["cost"] for r in want["traces"] if r["cost"]}):
            checks.that(any(_close(v, cost) for v in listed), f"Traces tab Cost column shows ${cost}")
        page.screenshot(path=str(out / "mlflow-traces-tab.png"))

        # -- One operation opened: its root span and the call span with tokens and cost.
        some = next(iter(want["calls"].values()))
        page.get_by_text(str(some["trace_tokens"]), exact=True).first.click()
        page.get_by_text(some["name"]).first.wait_for()
        page.wait_for_timeout(2000)
        text = page.inner_text("body")
        opened = re.search(r"Trace\s+([0-9a-f]{8})", text)
        call = want["calls"].get(opened.group(1) if opened else "")
        checks.that(
            call is not None,
            f"the trace view names an operation trace of ours ({opened and opened.group(1)})",
        )
        call = call or some
        checks.that(call["root"] in text, f"trace opens with its operation span {call['root']!r}")
        checks.that(call["name"] in text, f"call span {call['name']!r} under it")
        after = text.split(call["name"], 1)[-1][:200]
        shown = _dollars(after, "")
        checks.that(str(call["tokens"]) in after, f"call span shows {call['tokens']} tokens")
        checks.that(_close(shown, call["cost"]), f"call span shows cost ${call['cost']} (page: ${shown})")
        page.screenshot(path=str(out / "mlflow-trace-detail.png"))

        # -- Overview tab: tokens and cost equal our report's.
        totals = want["totals"]
        page.goto(f"{url}/#/experiments/{exp}/overview/usage")
        page.get_by_text("Total Cost").first.wait_for()
        _dismiss(page)
        page.mouse.move(5, 5)
        page.wait_for_timeout(3000)
        text = page.inner_text("body")
        tokens_in, tokens_out = totals["prompt_tokens"], totals["completion_tokens"]
        usage = f"{tokens_in + tokens_out:,} ({tokens_in:,} input, {tokens_out:,} output)"
        checks.that(usage in text, f"Overview token usage {usage!r} = tracked-openai report")
        shown = _dollars(text, "Total Cost")
        checks.that(
            _close(shown, totals["total_cost"]),
            f"Overview total cost ${totals['total_cost']} = tracked-openai report (page: ${shown})",
        )
        page.screenshot(path=str(out / "mlflow-overview.png"))
        page.get_by_text("Cost Breakdown").first.scroll_into_view_if_needed()
        page.mouse.move(5, 5)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "mlflow-overview-cost.png"))
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="screenshot folder")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="chromium binary (no download)")
    parser.add_argument(
        "--store", type=Path, help="a SQLite file the demo already wrote (copied; default: run the demo)"
    )
    args = parser.parse_args()
    if not Path(args.chromium).exists():
        print(f"no chromium at {args.chromium} (apt-get install chromium)", file=sys.stderr)
        return 2
    from tests.helpers.mlflow_server import MlflowServer

    args.out.mkdir(parents=True, exist_ok=True)
    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="ui-check-") as tmp:
        db = Path(tmp) / "mlflow.db"
        if args.store is not None:
            shutil.copyfile(args.store, db)
        else:
            t0 = time.perf_counter()
            run_demo(db)
            print(f"demo written to {db} in {time.perf_counter() - t0:.0f}s")
        server = MlflowServer(f"sqlite:///{db}", Path(tmp))
        server.start(timeout=300)
        try:
            want = expected(server.url)
            print(f"mlflow server on {server.url}, experiment {want['experiment_id']} ({EXPERIMENT})")
            browse(server.url, want, args.out, args.chromium, checks)
        finally:
            server.stop()
    print(f"{checks.passed} checks passed, {len(checks.failed)} failed; screenshots in {args.out}")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""``tracked-openai demo``: the whole product in one offline command.

Starts the fake OpenAI-compatible server on a free loopback port, makes tracked calls for the four
default AIFlow features (vision, text, a stream, RAG with embeddings, image generation, a custom operation
and one failing call) with a tracked client pointed at it, writes them to MLflow (the store
``MLFLOW_TRACKING_URI`` names, else MLflow's default ``./mlflow.db``), flushes, prints the
report and prints the commands to look further, as this environment can run them
(``.venv/bin/mlflow ui ...`` when the venv is not activated).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
import sysconfig
import time
import warnings
from pathlib import Path
from typing import Any

from .. import reports
from .output import new_console, store_option, tracking_uri

__all__ = ["add_commands", "run_demo"]

_DIAGRAMS = ("P&ID-101 (crude distillation)", "P&ID-204 (heat exchanger train)", "P&ID-317 (flare header)")
_PFDS = ("PFD-A: feed preheat", "PFD-B: amine regeneration", "PFD-C: sour water stripper")
_PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        parents=[
            store_option(
                "MLflow store the demo writes its runs to, created if missing "
                "(default: $MLFLOW_TRACKING_URI, else ./mlflow.db)"
            )
        ],
        help="offline demo: tracked calls against a local fake OpenAI, then the report",
        description="Starts a fake OpenAI-compatible server on a loopback port, makes tracked "
        "calls for the four default features through a tracked client, writes them to MLflow, "
        "prints the report and the commands to look further. No network, no API key.",
    )
    p.add_argument("--quiet", action="store_true", help="print only the report")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(tracking_uri=tracking_uri(args), quiet=args.quiet)


def _confidence(text: str) -> float:
    # The fake server ends every answer with "confidence=0.NN", like a model asked for a score.
    try:
        return float(text.rsplit("confidence=", 1)[1].split()[0])
    except (IndexError, ValueError):
        return 0.5


def _workload(client: Any, say: Any) -> None:
    """What an engineering-documents app would do; each function is one tracked operation."""
    import openai

    from .. import track
    from ..decorators import (
        track_custom_operation,
        track_dalle_generation,
        track_gpt_text,
        track_gpt_vision,
        track_rag_operation,
    )

    @track_gpt_vision("pid_verification", "diagram_analysis")
    def analyze_diagram(name: str) -> dict[str, Any]:
        response = client.chat.completions.create(
            model="gpt-4o",
            messages=[
                {"role": "system", "content": "You verify P&ID diagrams against the design basis."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": f"List the design issues in {name}."},
                        {"type": "image_url", "image_url": {"url": _PIXEL, "detail": "low"}},
                    ],
                },
            ],
        )
        text = response.choices[0].message.content or ""
        return {"issues_found": 2, "confidence": _confidence(text)}

    @track_gpt_text("pfd_conversion", "spec_generation")
    def write_spec(pfd: str) -> dict[str, Any]:
        response = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Write the P&ID specification for {pfd}."}],
            temperature=0.2,
        )
        return {"confidence": _confidence(response.choices[0].message.content or "")}

    @track_rag_operation("crs_analysis", "requirement_search")
    def search_requirements(question: str) -> dict[str, Any]:
        corpus = ["pressure relief sizing", "material selection", "hazardous area classification"]
        client.embeddings.create(model="text-embedding-3-small", input=[question, *corpus])
        answer = client.responses.create(
            model="gpt-4.1-mini", instructions="Answer from the CRS excerpts.", input=question
        )
        return {
            "documents": corpus,
            "similarity_scores": [0.91, 0.84, 0.62],
            "confidence": _confidence(answer.output_text),
        }

    @track_custom_operation("crs_analysis", "compliance_scoring")
    def score_compliance(doc: str) -> dict[str, float]:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"Score compliance of {doc}."}]
        )
        return {"requirements_checked": 12, "requirements_met": 11, "compliance_score": 0.92}

    @track_dalle_generation("visual_generation", "diagram_rendering")
    def render(prompt: str) -> dict[str, Any]:
        image = client.images.generate(model="gpt-image-1", prompt=prompt, size="1024x1024", quality="low")
        return {"images": len(image.data or [])}

    for name in _DIAGRAMS:
        analyze_diagram(name)
    say("pid_verification", "diagram_analysis", f"{len(_DIAGRAMS)} vision calls (gpt-4o)")

    # One failure: a model the endpoint does not serve. The error reaches the caller unchanged
    # (tracked clients never swallow it) and the operation is recorded as failed.
    try:
        with track("pid_verification", "symbol_check"):
            client.chat.completions.create(
                model="gpt-4o-unavailable", messages=[{"role": "user", "content": "Check symbols."}]
            )
    except openai.NotFoundError as exc:
        say("pid_verification", "symbol_check", f"failed as planned: HTTP {exc.status_code} model_not_found")

    for pfd in _PFDS:
        write_spec(pfd)
    say("pfd_conversion", "spec_generation", f"{len(_PFDS)} text calls (gpt-4o-mini)")

    with track("pfd_conversion", "live_summary", channel="ui"):
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Summarise the conversion status."}],
            stream=True,
            stream_options={"include_usage": True},
        )
        words = sum(1 for chunk in stream if chunk.choices and chunk.choices[0].delta.content)
    say("pfd_conversion", "live_summary", f"1 streamed call ({words} chunks)")

    for question in ("Which relief valves need resizing?", "Which areas are Zone 1?"):
        search_requirements(question)
    say("crs_analysis", "requirement_search", "2 RAG operations (embeddings + responses)")
    score_compliance("CRS-2026-004")
    say("crs_analysis", "compliance_scoring", "1 custom operation (returned metrics)")

    render("Isometric view of a three-phase separator with labelled nozzles")
    say("visual_generation", "diagram_rendering", "1 image generation (gpt-image-1)")


def _quiet_mlflow() -> None:
    # The demo prints a report; MLflow's migration and store INFO lines would bury it. MLflow
    # configures its logger when imported, so import it first and lower the level after.
    import mlflow  # noqa: F401

    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")


def run_demo(tracking_uri: str | None = None, *, quiet: bool = False) -> int:
    """Run the offline demo; returns a CLI exit code (0 ok, 1 not recorded, 3 store unreachable)."""
    import tracked_openai

    from .._fake_server import serve_fake_openai
    from .reports import render_report

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    _quiet_mlflow()
    # The demo writes: a missing local store is created by the sink (an unreachable server is
    # still an error, found before any call is made).
    uri = reports.check_store(tracking_uri, create=True)
    console = new_console()
    tracked_openai.configure(enabled=True)

    def say(feature: str, operation: str, what: str) -> None:
        if not quiet:
            console.print(f"  [green]✓[/green] {feature:<18} {operation:<20} {what}")

    started = time.time()
    with serve_fake_openai() as server:
        if not quiet:
            console.print(f"[bold]tracked-openai demo[/bold]: fake OpenAI at {server.base_url}, store {uri}")
        client = tracked_openai.OpenAI(base_url=server.base_url, api_key="sk-demo", max_retries=0)
        try:
            _workload(client, say)
        finally:
            client.close()
        calls = server.requests
    if not tracked_openai.flush(timeout=60):
        print("tracked-openai demo: error: records were not all written within 60 s", file=sys.stderr)
        return 1
    counters = tracked_openai.stats()
    if not quiet:
        console.print(
            f"  {calls} API calls in {time.time() - started:.1f}s; exported "
            f"{counters.get('exported', '?')} records to MLflow\n"
        )
    metrics = reports.feature_metrics(since=_day_of(started), tracking_uri=uri)
    render_report(metrics, None, console, tracking_uri=uri)
    if metrics["total_runs"] == 0:
        print("tracked-openai demo: error: the report is empty; nothing reached the store", file=sys.stderr)
        return 1
    if not quiet:
        from rich.markup import escape

        ui = f"{command('mlflow', 'mlflow')} ui --backend-store-uri {shlex.quote(uri)}"
        cli = command("tracked-openai", "tracked_openai.cli")
        if "MLFLOW_TRACKING_URI" in os.environ:
            # Name the store: the next command may run in a shell without the variable.
            cli += f" --tracking-uri {shlex.quote(uri)}"
        console.print(
            "\nNext:\n"
            f"  [bold]{escape(ui)}[/bold]\n    then open http://127.0.0.1:5000 (one experiment per feature)"
            + where_to_look()
            + "\n"
            f"  [bold]{escape(cli)} report --by operation[/bold]\n"
            f"  [bold]{escape(cli)} runs --feature pid_verification[/bold]\n"
            f"  [bold]{escape(cli)} serve[/bold]\n    REST API, docs at http://127.0.0.1:8000/api/docs/",
            soft_wrap=True,
        )
    return 0


def where_to_look() -> str:
    """What each tab of a feature's experiment shows, in the MLflow mode the demo wrote."""
    from .._config import settings

    mode = settings.mlflow_mode
    if mode == "runs":
        return ": its runs are the operations, their calls nested runs"
    traces = (
        "\n    Traces tab: each operation with its calls as spans, their tokens and cost;"
        "\n    Overview tab: cost and tokens over time, by model"
    )
    return (": Runs, the operations (AIFlow names);" if mode == "runs+traces" else ":") + traces


def command(script: str, module: str) -> str:
    """How to run one of this environment's console scripts from the current folder.

    The script next to the running interpreter (``.venv/bin/mlflow``), relative when it is
    under the current folder, bare when that very file is what ``PATH`` finds, else absolute;
    ``<python> -m <module>`` when there is no such script.
    """
    folder = Path(sysconfig.get_path("scripts"))
    path = folder / script
    if not path.is_file():
        return f"{shlex.quote(sys.executable)} -m {module}"
    try:
        relative = path.relative_to(Path.cwd())
    except ValueError:
        found = shutil.which(script)
        if found and Path(found).resolve() == path.resolve():
            return script
        return shlex.quote(str(path))
    text = str(relative)
    return shlex.quote(text if "/" in text else f"./{text}")


def _day_of(ts: float) -> str:
    # The report covers today's runs, so re-running the demo shows the runs of all today's demos
    # but not older data in a store that is also used for real work.
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC).date().isoformat()

"""``manage.py tracked_openai report|runs|experiments|pricing|budgets ...``: the
``tracked-openai`` command line, reading the store of this project's settings
(``TRACKED_OPENAI["tracking_uri"]``, else ``MLFLOW_TRACKING_URI``). Same arguments, output and exit
codes as the CLI; ``--tracking-uri`` given on the command line still wins."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import conf

_SCRIPT = "tracked-openai"
_FALLBACK = "tracked_openai.cli:main"


def cli_main() -> Callable[[Sequence[str] | None], int]:
    """The console script's entry function (``[project.scripts]``), so wherever the CLI lives
    this command runs the same code; the source tree's entry when the package isn't installed."""
    target = _FALLBACK
    with contextlib.suppress(Exception):
        for entry in metadata.entry_points(group="console_scripts", name=_SCRIPT):
            if entry.value.startswith("tracked_openai."):
                target = entry.value
                break
    module_name, _, attr = target.partition(":")
    main: Callable[[Sequence[str] | None], int] = getattr(import_module(module_name), attr)
    return main


def _project_budgets(args: list[str]) -> list[str]:
    """``budgets`` reads the project's budgets file and ledger (``TRACKED_OPENAI["budgets"]``
    when it names a file, ``["ledger_url"]``) unless the command line names them."""
    config = conf.raw_config()
    extra: list[str] = []
    budgets = config.get("budgets")
    if isinstance(budgets, (str, Path)) and not any(a.startswith("--budgets") for a in args):
        extra += ["--budgets", str(budgets)]
    ledger = config.get("ledger_url")
    if isinstance(ledger, str) and not any(a.startswith("--ledger-url") for a in args):
        extra += ["--ledger-url", ledger]
    return [args[0], *extra, *args[1:]]


def run(argv: Sequence[str]) -> int:
    """The CLI's exit code for ``argv``, with the project's store unless ``argv`` names one."""
    main = cli_main()
    args = list(argv)
    if args and args[0] == "budgets":
        args = _project_budgets(args)
    uri = conf.tracking_uri()
    if uri and not any(a == "--tracking-uri" or a.startswith("--tracking-uri=") for a in args):
        args = ["--tracking-uri", uri, *args]
    try:
        return int(main(args))
    except SystemExit as exc:  # argparse: --help, bad arguments
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)


class Command(BaseCommand):
    help = "tracked-openai reports, runs, experiments, pricing tables and budgets for this project's store"

    def run_from_argv(self, argv: list[str]) -> None:
        # Every argument belongs to the CLI (Django's own parser would reject its options).
        sys.exit(run(argv[2:]))

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("cli_args", nargs=argparse.REMAINDER, help="the tracked-openai CLI's arguments")

    def handle(self, *args: Any, **options: Any) -> None:
        # call_command("tracked_openai", "report", ...): print where the command's stdout goes.
        out = getattr(self.stdout, "_out", sys.stdout)
        with contextlib.redirect_stdout(out):
            code = run([*args, *options.get("cli_args", [])])
        if code:
            raise CommandError(f"tracked-openai exited with {code}", returncode=code)

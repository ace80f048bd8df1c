"""What a SIGKILLed process loses: records per completed call, counted in MLflow.

A child process makes ``N`` tracked chat calls over real HTTP against the package's fake OpenAI
server, waits ``--wait`` seconds after its last call returned, and SIGKILLs itself (no exit hook
runs, nothing is spooled on the way out). A second process then starts the exporter against the
same spool folder and MLflow store (embedded sqlite), which replays what the first one left, and
flushes. We count distinct ``record_id`` runs in the store against the calls the child completed:
``lost = completed - recorded``; ``duplicated`` counts runs sharing a ``record_id``.

    python benchmarks/sigkill.py                       # the default grid, journal off and on
    python benchmarks/sigkill.py --calls 200 --flush-interval 1 --journal on
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracked_openai._fake_server import FakeOpenAIServer  # noqa: E402

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    import tracked_openai
    from tracked_openai import OpenAI
    base_url, n, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    client = OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    done = 0
    for i in range(n):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}])
        done += 1
    print(done, flush=True)
    time.sleep(wait)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)

NEXT = textwrap.dedent(
    """
    import tracked_openai
    tracked_openai.start(wait=True, timeout=120)
    print(tracked_openai.flush(120), flush=True)
    """
)


def count_records(uri: str) -> tuple[int, int]:
    """(distinct record ids, duplicated runs) over every experiment of the store."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    ids: Counter[str] = Counter()
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=50_000):
            rid = run.data.tags.get("record_id")
            if rid:
                ids[rid] += 1
    return len(ids), sum(c - 1 for c in ids.values() if c > 1)


def run_case(
    workdir: Path,
    calls: int,
    *,
    flush_interval: float = 1.0,
    batch_size: int = 256,
    wait: float = 0.0,
    journal: bool = False,
    server: FakeOpenAIServer | None = None,
    restarts: int = 1,
) -> dict[str, Any]:
    """Run one child to its SIGKILL and ``restarts`` next processes; the counts."""
    workdir.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "MLFLOW_TRACKING_URI": uri,
        "TRACKED_OPENAI_SPOOL_DIR": str(workdir / "spool"),
        "TRACKED_OPENAI_FLUSH_INTERVAL": str(flush_interval),
        "TRACKED_OPENAI_BATCH_SIZE": str(batch_size),
        "TRACKED_OPENAI_JOURNAL": "on" if journal else "off",
    }
    # The store is created up front: a process killed while MLflow creates a sqlite store's
    # schema leaves it half-made, which is not what this measures.
    from mlflow import MlflowClient

    MlflowClient(uri).search_experiments()
    own = server is None
    srv = server if server is not None else FakeOpenAIServer(latency_scale=0.2).start()
    try:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, srv.base_url, str(calls), str(wait)],
            capture_output=True, text=True, env=env, timeout=600, check=False,
        )
    finally:
        if own:
            srv.stop()
    if child.returncode != -signal.SIGKILL:
        raise RuntimeError(f"child ended with {child.returncode}: {child.stderr[-2000:]}")
    completed = int(child.stdout.split()[0])
    for _ in range(restarts):
        nxt = subprocess.run(
            [sys.executable, "-c", NEXT], capture_output=True, text=True, env=env, timeout=600, check=False
        )
        if nxt.returncode != 0 or nxt.stdout.split()[-1:] != ["True"]:
            raise RuntimeError(f"next process failed ({nxt.returncode}): {nxt.stdout} {nxt.stderr[-2000:]}")
    recorded, duplicated = count_records(uri)
    return {
        "calls": calls,
        "flush_interval": flush_interval,
        "batch_size": batch_size,
        "wait_s": wait,
        "journal": journal,
        "completed": completed,
        "recorded": recorded,
        "lost": completed - recorded,
        "duplicated": duplicated,
    }


GRID = [
    # (calls, flush_interval, batch_size, wait before the kill)
    (20, 1.0, 256, 0.0),
    (200, 1.0, 256, 0.0),
    (200, 0.1, 256, 0.0),
    (200, 1.0, 256, 0.5),
    (1000, 1.0, 256, 0.0),
    (1000, 5.0, 256, 0.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int)
    parser.add_argument("--flush-interval", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--wait", type=float, default=0.0, help="seconds between the last call and the kill")
    parser.add_argument("--journal", choices=("off", "on", "both"), default="both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    grid = GRID if args.calls is None else [(args.calls, args.flush_interval, args.batch_size, args.wait)]
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.journal]
    rows = []
    with FakeOpenAIServer(latency_scale=0.2) as server, tempfile.TemporaryDirectory() as tmp:
        for i, (calls, interval, batch, wait) in enumerate(grid):
            for journal in modes:
                row = run_case(
                    Path(tmp) / f"case{i}-{journal}", calls, flush_interval=interval, batch_size=batch,
                    wait=wait, journal=journal, server=server,
                )
                rows.append(row)
                if not args.json:
                    print(
                        f"calls={calls:5d} flush_interval={interval:4g}s batch={batch:4d} wait={wait:4g}s "
                        f"journal={'on ' if journal else 'off'}  completed={row['completed']:5d} "
                        f"recorded={row['recorded']:5d} lost={row['lost']:5d} duplicated={row['duplicated']}",
                        flush=True,
                    )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

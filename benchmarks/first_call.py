"""First-call latency, plain SDK vs tracked, sync and async: one fresh process per sample.

The first tracked call in a process used to build the exporter's MLflow sink on the caller's
thread (importing MLflow: ~2 s). Now the caller only starts the exporter's thread; the sink is
built on that thread when the first batch is due (``flush_interval`` later), or at application
start with ``tracked_openai.start()``. Each sample is a new Python process (same start for every
mode: interpreter, imports, client construction, then the first call), talking over loopback
to the fake OpenAI server run by this parent process, with the default MLflow sink writing to a
SQLite store. Modes, in a rotating order per sample:

* ``plain``: ``openai.OpenAI`` / ``AsyncOpenAI``;
* ``tracked``: ``tracked_openai`` clients, first call inside ``track(...)``, nothing warmed up;
* ``started``: the same after ``tracked_openai.start(wait=True)`` at start-up (its time is
  reported as ``startup``; it is where the MLflow import went).

Per process: the first call's latency as the caller sees it (for ``tracked``: the whole
``with track(...)`` block around it), the operation duration recorded for it, then every call
made in the next ``--window`` seconds (during which ``tracked`` builds its sink in the
background: the GIL is shared, so those calls show what that costs). Async runs a ticker
coroutine throughout; its longest gap is how long the event loop was stalled.

``ratio`` is median over median; ``paired`` the median of each sample's ratio to the plain
process run next to it (less exposed to a shared machine's drift).

    python benchmarks/first_call.py [--samples 7] [--window 4] [--verbose]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("plain", "tracked", "started")
FLAVOURS = ("sync", "async")
MESSAGES = [{"role": "user", "content": "Say something short."}]

# -- child -----------------------------------------------------------------------------------------


def _child(flavour: str, mode: str, base_url: str, window: float) -> dict[str, Any]:
    t_start = time.perf_counter()
    if mode == "plain":
        import openai

        sync_cls: Any = openai.OpenAI
        async_cls: Any = openai.AsyncOpenAI
        track: Any = None
    else:
        import tracked_openai

        sync_cls, async_cls, track = tracked_openai.OpenAI, tracked_openai.AsyncOpenAI, tracked_openai.track
    out: dict[str, Any] = {"import_s": time.perf_counter() - t_start, "startup_s": 0.0}
    if mode == "started":
        t0 = time.perf_counter()
        ready = tracked_openai.start(wait=True, timeout=120)
        out["startup_s"] = time.perf_counter() - t0
        out["ready"] = ready
    if flavour == "sync":
        out.update(_sync(sync_cls, track, base_url, window))
    else:
        import asyncio

        out.update(asyncio.run(_async(async_cls, track, base_url, window)))
    if mode != "plain":
        t0 = time.perf_counter()
        out["flushed"] = tracked_openai.flush(120)
        out["flush_s"] = time.perf_counter() - t0
        stats = tracked_openai.stats()
        out["exported"] = stats.get("exported", 0)
        out["submitted"] = stats.get("submitted", 0)
    return out


def _sync(cls: Any, track: Any, base_url: str, window: float) -> dict[str, Any]:
    client = cls(api_key="sk-bench", base_url=base_url, max_retries=0)
    op_s = None
    t0 = time.perf_counter()
    if track is None:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    else:
        with track("bench", "first_call") as op:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    first = time.perf_counter() - t0
    if track is not None:
        op_s = op.record.duration_s
    lat: list[float] = []
    end = time.perf_counter() + window
    while time.perf_counter() < end:
        t = time.perf_counter()
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        lat.append(time.perf_counter() - t)
    client.close()
    return {"first_s": first, "op_s": op_s, "window": lat}


async def _async(cls: Any, track: Any, base_url: str, window: float) -> dict[str, Any]:
    import asyncio

    gaps: list[tuple[float, float]] = []  # (time, gap) of each ticker wake-up
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append((now, now - last))
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)  # the ticker is running
    client = cls(api_key="sk-bench", base_url=base_url, max_retries=0)
    op_s = None
    t0 = time.perf_counter()
    if track is None:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    else:
        async with track("bench", "first_call") as op:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    t1 = time.perf_counter()
    if track is not None:
        op_s = op.record.duration_s
    lat: list[float] = []
    while time.perf_counter() < t1 + window:
        t = time.perf_counter()
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        lat.append(time.perf_counter() - t)
    t2 = time.perf_counter()
    stop.set()
    await tick
    await client.close()
    # A gap belongs to the phase its wake-up fell in (the first call, or the window after it).
    first_gap = max((g for t, g in gaps if t0 < t <= t1 + 0.002), default=0.0)
    window_gap = max((g for t, g in gaps if t1 + 0.002 < t <= t2), default=0.0)
    return {"first_s": t1 - t0, "op_s": op_s, "window": lat, "stall_first_s": first_gap, "stall_window_s": window_gap}


# -- parent ----------------------------------------------------------------------------------------


def _run_child(flavour: str, mode: str, base_url: str, window: float, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", flavour, mode, base_url, str(window)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {flavour}/{mode} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=7, help="processes per flavour and mode")
    parser.add_argument("--window", type=float, default=4.0, help="seconds of calls after the first")
    parser.add_argument("--verbose", action="store_true", help="print every process's first-call latency")
    parser.add_argument("--child", nargs=4, metavar=("FLAVOUR", "MODE", "URL", "WINDOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        flavour, mode, url, window = args.child
        print(json.dumps(_child(flavour, mode, url, float(window))))
        return

    # The fake server turns Nagle's algorithm off: a reused connection would otherwise wait for
    # the client's delayed ACK (~40 ms), which would swamp the differences measured here.
    from tracked_openai._fake_server import serve_fake_openai

    with tempfile.TemporaryDirectory() as tmp, serve_fake_openai() as server:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": uri,
            "TRACKED_OPENAI_SPOOL_DIR": str(Path(tmp) / "spool"),
            "PYTHONWARNINGS": "ignore",
        }
        # Create the store once, so every tracked sample opens an existing one (as an app would).
        subprocess.run(
            [sys.executable, "-c", f"from mlflow import MlflowClient; MlflowClient({uri!r}).search_experiments()"],
            env=env, capture_output=True, check=True, timeout=600,
        )
        results: dict[tuple[str, str], list[dict[str, Any]]] = {(f, m): [] for f in FLAVOURS for m in MODES}
        for sample in range(args.samples):
            for flavour in FLAVOURS:
                order = MODES[sample % len(MODES) :] + MODES[: sample % len(MODES)]
                for mode in order:
                    results[(flavour, mode)].append(_run_child(flavour, mode, server.base_url, args.window, env))
            print(f"sample {sample + 1}/{args.samples} done", file=sys.stderr, flush=True)

    print(f"first_call.py: {args.samples} processes per row, medians; window = {args.window:g} s of calls after the first")
    for flavour in FLAVOURS:
        plain_first = statistics.median(r["first_s"] for r in results[(flavour, "plain")])
        print(f"\n{flavour}")
        header = f"{'mode':8} {'first call':>11} {'ratio':>6} {'paired':>7} {'op recorded':>12} {'start-up':>9}"
        header += f" {'window median':>14} {'window p95':>11} {'window max':>11}"
        if flavour == "async":
            header += f" {'stall first':>12} {'stall window':>13}"
        print(header)
        for mode in MODES:
            rows = results[(flavour, mode)]
            first = statistics.median(r["first_s"] for r in rows)
            ops = [r["op_s"] for r in rows if r["op_s"] is not None]
            window_median = statistics.median(statistics.median(r["window"]) for r in rows)
            window_p95 = statistics.median(_pct(r["window"], 0.95) for r in rows)
            window_max = statistics.median(max(r["window"]) for r in rows)
            # Each sample's modes ran back to back: their ratio is less exposed to load drift.
            paired = statistics.median(
                r["first_s"] / p["first_s"] for r, p in zip(rows, results[(flavour, "plain")], strict=True)
            )
            line = (
                f"{mode:8} {_ms(first):>11} {first / plain_first:>5.2f}x {paired:>6.2f}x"
                f" {(_ms(statistics.median(ops)) if ops else '-'):>12}"
                f" {statistics.median(r['startup_s'] for r in rows):>8.2f}s"
                f" {_ms(window_median):>14} {_ms(window_p95):>11} {_ms(window_max):>11}"
            )
            if flavour == "async":
                line += f" {_ms(statistics.median(r['stall_first_s'] for r in rows)):>12}"
                line += f" {_ms(statistics.median(r['stall_window_s'] for r in rows)):>13}"
            print(line)
        if args.verbose:
            for mode in MODES:
                values = " ".join(f"{r['first_s'] * 1000:.0f}" for r in results[(flavour, mode)])
                print(f"  {mode} first calls (ms, in sample order): {values}")
        for mode in ("tracked", "started"):
            rows = results[(flavour, mode)]
            lost = sum(r["submitted"] - r["exported"] for r in rows)
            flushed = all(r["flushed"] for r in rows)
            print(f"  {mode}: every record exported: {flushed and lost == 0}")


if __name__ == "__main__":
    main()

"""The journal's cost per call and its window (what a SIGKILL can still lose), same run.

Cost: a plain SDK client and a tracked one call the same in-process fake transport (as in
``overhead.py``), one call each in turn; the tracked client's exporter is rebuilt with the
journal off, then on, then off, … in alternating blocks. We report each mode's median per call,
the added time over the plain SDK, and the background CPU per record (journal thread + exporter
thread; off the caller's path, but on the same cores).

Window: the time from a tracked call's return until its record is in the journal file (the
record was submitted just before the call returned, so this bounds the window from above).
Measured with calls back to back on the in-process transport (a busy caller thread: the journal
thread waits for the GIL) and over real HTTP against the fake OpenAI server.

    python benchmarks/journal.py [--calls 2000] [--blocks 6]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx2
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from overhead import MESSAGES, CountingSink, handler

import tracked_openai
from tracked_openai._fake_server import FakeOpenAIServer
from tracked_openai.export import journal as _journal
from tracked_openai.export import queue as _queue
from tracked_openai.records import Record

_written: list[tuple[float, int]] = []  # (time the write returned, records in it)
_journal_cpu = [0.0]


def _instrument() -> None:
    write = _journal.Journal.write
    drain = _queue.Exporter._journal_drain

    def timed_write(self: _journal.Journal, records: Sequence[Record]) -> None:
        write(self, records)
        _written.append((time.perf_counter(), len(records)))

    def timed_drain(self: _queue.Exporter) -> None:
        start = time.thread_time()
        try:
            drain(self)
        finally:
            _journal_cpu[0] += time.thread_time() - start

    _journal.Journal.write = timed_write  # type: ignore[method-assign]
    _queue.Exporter._journal_drain = timed_drain  # type: ignore[method-assign]


def chat(client: Any) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def cost(calls: int, blocks: int, spool: str) -> None:
    transport = httpx2.MockTransport(handler)
    plain = openai.OpenAI(api_key="sk-bench", http_client=httpx2.Client(transport=transport))
    tracked = tracked_openai.OpenAI(api_key="sk-bench", http_client=httpx2.Client(transport=transport))
    samples: dict[str, list[float]] = {"plain": [], "journal off": [], "journal on": []}
    cpu: dict[str, list[float]] = {"journal off": [], "journal on": []}
    per_block = max(1, calls // blocks)
    for block in range(blocks * 2):
        mode = "journal on" if block % 2 else "journal off"
        sink = CountingSink()
        tracked_openai.configure(sinks=[sink], spool_dir=spool, journal=mode == "journal on")
        for _ in range(30):  # warm-up: the new exporter's threads, caches
            chat(tracked)
        tracked_openai.flush()
        cpu0, count0, journal0 = sink.cpu, sink.count, _journal_cpu[0]
        gc.collect()
        for i in range(per_block):
            for name, client in ((("plain", plain), (mode, tracked)) if i % 2 else ((mode, tracked), ("plain", plain))):
                start = time.perf_counter()
                chat(client)
                samples[name].append(time.perf_counter() - start)
            if i % 50 == 49:
                tracked_openai.flush()
        tracked_openai.flush()
        background = (sink.cpu - cpu0) + (_journal_cpu[0] - journal0)
        cpu[mode].append(background / max(1, sink.count - count0))
    base = statistics.median(samples["plain"])
    print(f"cost: {per_block * blocks} calls per mode in {blocks * 2} alternating blocks, median per call")
    for name, values in samples.items():
        value = statistics.median(values)
        extra = "" if name == "plain" else f"   background CPU {statistics.median(cpu[name]) * 1e6:6.1f} µs/record"
        print(f"  {name:<12} {value * 1e6:8.1f} µs   added {(value - base) * 1e6:+7.1f} µs{extra}")
    on, off = statistics.median(samples["journal on"]), statistics.median(samples["journal off"])
    print(f"  journal on - off: {(on - off) * 1e6:+.1f} µs per call on the caller's path")


def window(label: str, call: Callable[[], None], calls: int, spool: str, gap: float = 0.0) -> None:
    tracked_openai.configure(sinks=[CountingSink()], spool_dir=spool, journal=True)
    for _ in range(20):
        call()
    tracked_openai.flush()
    _written.clear()
    returned: list[float] = []
    for _ in range(calls):
        call()
        returned.append(time.perf_counter())
        if gap:
            time.sleep(gap)
    tracked_openai.flush()
    # Records reach the journal in submission order: record i is in the write where the
    # running count first exceeds i.
    lags: list[float] = []
    written = iter(_written)
    at, total = 0.0, 0
    for i, t in enumerate(returned):
        while total <= i:
            at, n = next(written)
            total += n
        lags.append(max(0.0, at - t))
    lags.sort()
    p99 = lags[int(0.99 * (len(lags) - 1))]
    print(
        f"window ({label}, {calls} calls): median {statistics.median(lags) * 1e3:.3f} ms, "
        f"p99 {p99 * 1e3:.3f} ms, max {lags[-1] * 1e3:.3f} ms, {len(_written)} journal writes"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per mode")
    parser.add_argument("--blocks", type=int, default=6, help="blocks per mode (alternating)")
    args = parser.parse_args()
    _instrument()
    print(f"openai {openai.__version__}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as spool:
        cost(args.calls, args.blocks, spool)
        transport = httpx2.MockTransport(handler)
        tracked = tracked_openai.OpenAI(api_key="sk-bench", http_client=httpx2.Client(transport=transport))
        window("in-process transport, back to back", lambda: chat(tracked), args.calls, spool)
        with FakeOpenAIServer(latency_scale=0.2) as server:
            http = tracked_openai.OpenAI(api_key="sk-bench", base_url=server.base_url, max_retries=0)
            window("fake OpenAI server over HTTP", lambda: chat(http), min(args.calls, 500), spool)
        tracked_openai.shutdown()


if __name__ == "__main__":
    main()

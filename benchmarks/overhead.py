"""Added latency per call: plain SDK vs tracked vs tracked-disabled, and tracked inside an
operation without and with three budgets (a feature block budget, a tag budget per tenant, an app
alert budget; SQLite ledger in a temporary folder), same process.

All three clients talk to the same in-process fake transport (no sockets), so the figures isolate
the SDK's own work from ours. Calls are interleaved one by one, in a rotating order (plain,
tracked, disabled, then tracked, disabled, plain, …), so drift (CPU frequency, a noisy VM
neighbour, GC) hits every client alike; we report the median of each client's per-call times
and its ratio to the plain SDK. The exporter is flushed every few calls (untimed), so its
background work is not charged to whichever client happens to run next; that work is reported
on its own as the exporter thread's CPU time per record.

    python benchmarks/overhead.py [--calls 3000]

The last two run each call inside ``track("bench", "chat", tenant="acme")`` (entered and left
outside the timed region), since a tag budget applies only to calls with the tag: "in track" is
the same call without budgets, so the difference between the two is what the budgets add. With
budgets, each call's worst case is reserved against this process's lease before it is sent and
settled on the exporter thread; the ledger round trips per 1,000 budgeted calls are printed, and
the load average the run started and ended with (a loaded machine inflates every figure).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tracked_openai
from tracked_openai import Budget
from tracked_openai import budgets as budgets_module
from tracked_openai.export import runtime as _runtime
from tracked_openai.records import Record

CHAT_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1755597880,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Benchmark reply.", "refusal": None},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 4,
            "total_tokens": 16,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
    }
).encode()


def _sse(include_usage: bool) -> bytes:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18"}
    chunks: list[dict[str, Any]] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    chunks += [{**base, "choices": [{"index": 0, "delta": {"content": w}}]} for w in ("Bench", "mark", " reply", ".")]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        for c in chunks:
            c["usage"] = None
        chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}})
    # Compact JSON, as OpenAI sends it.
    return b"".join(b"data: " + _compact(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


SSE_PLAIN, SSE_USAGE = _sse(False), _sse(True)


class EventStream(httpx2.SyncByteStream):
    """An SSE body delivered one event per read, as a server flushing each event would over a
    socket (a ``content=bytes`` response would be read whole before the SDK sees it, which is
    not how a real stream reaches the client)."""

    def __init__(self, data: bytes) -> None:
        self.events = [e + b"\n\n" for e in data.split(b"\n\n") if e]

    def __iter__(self) -> Iterator[bytes]:
        yield from self.events


def handler(request: httpx2.Request) -> httpx2.Response:
    body = json.loads(request.content)
    if body.get("stream"):
        data = SSE_USAGE if (body.get("stream_options") or {}).get("include_usage") else SSE_PLAIN
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream", "x-request-id": "req_b"}, stream=EventStream(data)
        )
    return httpx2.Response(200, headers={"content-type": "application/json", "x-request-id": "req_b"}, content=CHAT_BODY)


class CountingSink:
    """Counts records: the benchmark measures our hot path and exporter, not a store."""

    def __init__(self) -> None:
        self.count = 0
        self.cpu = 0.0

    def export(self, records: Sequence[Record]) -> None:
        self.count += len(records)
        # CPU time of the exporter thread so far (its preparing/pricing included).
        self.cpu = time.thread_time()


MESSAGES = [{"role": "user", "content": "Say something short."}]


def chat(client: Any) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def chat_stream(client: Any) -> None:
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
        pass


def _enable(on: bool, budgets: bool = False) -> Callable[[], None]:
    def setup() -> None:
        _runtime.settings.enabled = on
        budgets_module.ACTIVE = budgets

    return setup


Workload = tuple[Callable[[], None], Callable[[], None], Callable[[], AbstractContextManager[Any]]]


def in_operation() -> AbstractContextManager[Any]:
    return tracked_openai.track("bench", "chat", tenant="acme")


def interleave(
    workloads: dict[str, Workload], calls: int, flush_every: int, cpu: dict[str, list[float]] | None = None
) -> dict[str, list[float]]:
    """Time each workload ``calls`` times, one call of each in turn, in a rotating order, so drift
    hits them alike. A workload is ``(setup, call, context)``: only ``call`` is timed, inside
    ``context()``. The exporter is flushed (untimed) every ``flush_every`` rounds. ``cpu`` gets the
    calling thread's CPU time per call: on a loaded machine the wall time mostly measures waits
    for a core, the thread's CPU time much less so."""
    samples: dict[str, list[float]] = {name: [] for name in workloads}
    if cpu is not None:
        cpu.update({name: [] for name in workloads})
    order = list(workloads)
    gc.collect()
    for i in range(calls):
        shift = i % len(order)
        for name in order[shift:] + order[:shift]:
            setup, call, context = workloads[name]
            setup()
            with context():
                start, start_cpu = time.perf_counter(), time.thread_time()
                call()
                samples[name].append(time.perf_counter() - start)
                if cpu is not None:
                    cpu[name].append(time.thread_time() - start_cpu)
        if i % flush_every == flush_every - 1:
            tracked_openai.flush()
    tracked_openai.flush()
    return samples


def print_medians(samples: dict[str, list[float]], baseline: str) -> None:
    """Each workload's median, its ratio to ``baseline``'s and the time it adds."""
    base = statistics.median(samples[baseline])
    width = max(9, *(len(name) for name in samples))
    for name, values in samples.items():
        value = statistics.median(values)
        added = value - base
        print(f"  {name:<{width}} {value * 1e6:8.1f} µs   ratio {value / base:5.3f}   added {added * 1e6:+7.1f} µs ({added / base:+.1%})")


def _added(samples: dict[str, list[float]], base: str, name: str) -> str:
    b, v = statistics.median(samples[base]), statistics.median(samples[name])
    return f"{(v - b) * 1e6:+.1f} µs ({(v - b) / b:+.1%})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000, help="calls per client and workload")
    parser.add_argument("--flush-every", type=int, default=50, help="untimed flush every N calls")
    args = parser.parse_args()

    sink = CountingSink()
    ledger = tempfile.mkdtemp(prefix="tracked-openai-bench-")
    tracked_openai.configure(
        sinks=[sink],
        budgets=[
            Budget(feature="bench", usd=1000, per="day"),
            Budget(tag="tenant", usd=500, per="day"),
            Budget(usd=5000, per="month", action="alert"),
        ],
        ledger_url=f"sqlite:///{ledger}/ledger.sqlite",
    )
    transport = httpx2.MockTransport(handler)
    clients = {
        "plain": openai.OpenAI(api_key="sk-bench", http_client=httpx2.Client(transport=transport)),
        "tracked": tracked_openai.OpenAI(api_key="sk-bench", http_client=httpx2.Client(transport=transport)),
        "disabled": tracked_openai.OpenAI(api_key="sk-bench", http_client=httpx2.Client(transport=transport)),
        "in track": tracked_openai.OpenAI(api_key="sk-bench", http_client=httpx2.Client(transport=transport)),
        "3 budgets": tracked_openai.OpenAI(api_key="sk-bench", http_client=httpx2.Client(transport=transport)),
    }
    print(f"openai {openai.__version__}, python {sys.version.split()[0]}, {args.calls} calls per client, interleaved")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, fn in (("chat", chat), ("chat stream", chat_stream)):
        workloads: dict[str, Workload] = {
            key: (
                _enable(key != "disabled", key == "3 budgets"),
                partial(fn, client),
                in_operation if key in ("in track", "3 budgets") else contextlib.nullcontext,
            )
            for key, client in clients.items()
        }
        for key, client in clients.items():  # warm-up: imports, caches, the exporter thread, the ledger
            workloads[key][0]()
            for _ in range(50):
                with workloads[key][2]():
                    fn(client)
        tracked_openai.flush()
        cpu0, count0 = sink.cpu, sink.count
        trips0 = tracked_openai.stats().get("budget_ledger_round_trips", 0)
        cpu: dict[str, list[float]] = {}
        samples = interleave(workloads, args.calls, args.flush_every, cpu)
        _runtime.settings.enabled = True
        budgets_module.ACTIVE = True
        tracked_openai.flush()
        budgets_module._current.sync()  # what the background sync would report next
        trips = tracked_openai.stats().get("budget_ledger_round_trips", 0) - trips0
        background = (sink.cpu - cpu0) / max(1, sink.count - count0)
        print(f"\n{name}: median per call")
        print_medians(samples, "plain")
        print("  the calling thread's CPU time, median per call:")
        print_medians(cpu, "plain")
        print(f"  exporter thread: {background * 1e6:.1f} µs CPU per record (off the caller's path)")
        print(f"  ledger round trips: {trips * 1000 / args.calls:.1f} per 1,000 budgeted calls ({trips} in all)")
        print(
            f"  budgets over the same call in track: {_added(samples, 'in track', '3 budgets')} "
            f"(CPU {_added(cpu, 'in track', '3 budgets')})"
        )
        print(f"  load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tracked_openai.flush()
    print(f"\nrecords exported by the tracked client: {sink.count}")


if __name__ == "__main__":
    main()

"""Where a tracked stream's added latency goes: the injected ``include_usage`` vs the rest.

Same process, same in-process fake transport and stream body as ``overhead.py``, five workloads
interleaved call by call in a rotating order; medians and their difference from the plain SDK:

    plain                the plain SDK, the caller asks for no usage (the baseline)
    plain+usage          the plain SDK, the caller sets ``stream_options.include_usage``: what
                         the SDK itself pays for the usage-only chunk and ``"usage":null`` members
    tracked              tracked, usage injected and hidden from the caller (the default)
    tracked-noinject     tracked, injection off: records, tee and stream bookkeeping only
    tracked+callerusage  tracked, the caller sets ``include_usage`` (nothing to inject or hide);
                         compare with plain+usage

``tracked`` minus ``tracked-noinject`` is what injecting and hiding costs the caller;
``plain+usage`` minus ``plain`` is what hiding at the object level instead could not go below.

    python benchmarks/stream_split.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from overhead import MESSAGES, CountingSink, handler

import tracked_openai
from tracked_openai import _runtime


def stream(client: Any) -> None:
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
        pass


def stream_with_usage(client: Any) -> None:
    for _ in client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ):
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000, help="calls per workload")
    args = parser.parse_args()

    tracked_openai.configure(sinks=[CountingSink()])
    transport = httpx2.MockTransport(handler)
    plain = openai.OpenAI(api_key="sk-bench", http_client=httpx2.Client(transport=transport))
    tracked = tracked_openai.OpenAI(api_key="sk-bench", http_client=httpx2.Client(transport=transport))
    # name: (client, workload, inject_stream_usage)
    workloads: dict[str, tuple[Any, Callable[[Any], None], bool]] = {
        "plain": (plain, stream, True),
        "plain+usage": (plain, stream_with_usage, True),
        "tracked": (tracked, stream, True),
        "tracked-noinject": (tracked, stream, False),
        "tracked+callerusage": (tracked, stream_with_usage, True),
    }
    settings = _runtime.settings
    for client, fn, inject in workloads.values():  # warm-up
        settings.inject_stream_usage = inject
        for _ in range(50):
            fn(client)
    tracked_openai.flush()
    samples: dict[str, list[float]] = {name: [] for name in workloads}
    order = list(workloads)
    gc.collect()
    for i in range(args.calls):
        shift = i % len(order)
        for name in order[shift:] + order[:shift]:
            client, fn, inject = workloads[name]
            settings.inject_stream_usage = inject
            start = time.perf_counter()
            fn(client)
            samples[name].append(time.perf_counter() - start)
        if i % 50 == 49:  # the exporter's work, untimed
            tracked_openai.flush()
    settings.inject_stream_usage = True
    tracked_openai.flush()
    base = statistics.median(samples["plain"])
    print(f"openai {openai.__version__}, python {sys.version.split()[0]}, {args.calls} calls each, interleaved")
    print("chat stream: median per call")
    for name, values in samples.items():
        value = statistics.median(values)
        added = value - base
        print(f"  {name:<20} {value * 1e6:8.1f} µs   ratio {value / base:5.3f}   added {added * 1e6:+7.1f} µs ({added / base:+.1%})")


if __name__ == "__main__":
    main()

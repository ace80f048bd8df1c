"""The budgets' share of the caller's path alone: ``budgets.guard(call)`` (worst case, matching,
reservation against this process's lease) and the settlement, for one tracked chat call inside
``track("bench", "chat", tenant="acme")`` with three budgets (a feature block budget, a tag budget
per tenant, an app alert budget), in CPU time of the calling thread (``time.process_time``, so a
loaded machine inflates it far less than wall time), minimum and median of 9 repeats.

Two requests: a short one (two messages of under 64 bytes) and a long one (about 1.8 KB of
text, which the worst case used to count with tiktoken on every call).

    python benchmarks/budget_guard.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import CountingSink, chat, handler

import tracked_openai
from tracked_openai import Budget, track
from tracked_openai import _client as client_module
from tracked_openai import budgets as budgets_module

SHORT = [
    {"role": "system", "content": "You are a helpful assistant. "},
    {"role": "user", "content": "Say something short."},
]
LONG = [
    {"role": "system", "content": "You are a helpful assistant. " * 40},
    {"role": "user", "content": "Say something short." * 30},
]


def _a_call() -> Any:
    """A real tracked call's in-flight state, caught at the guard."""
    client = tracked_openai.OpenAI(api_key="sk-bench", http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    caught: list[Any] = []
    guard = budgets_module.guard

    def catch(call: Any) -> None:
        caught.append(call)
        guard(call)

    client_module._budgets.guard = catch  # type: ignore[attr-defined]
    try:
        with track("bench", "chat", tenant="acme"):
            for _ in range(20):
                chat(client)
    finally:
        client_module._budgets.guard = guard  # type: ignore[attr-defined]
    tracked_openai.flush()
    return caught[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    ledger = tempfile.mkdtemp(prefix="tracked-openai-bench-")
    tracked_openai.configure(
        sinks=[CountingSink()],
        budgets=[
            Budget(feature="bench", usd=1000, per="day"),
            Budget(tag="tenant", usd=500, per="day"),
            Budget(usd=5000, per="month", action="alert"),
        ],
        ledger_url=f"sqlite:///{ledger}/ledger.sqlite",
    )
    time.sleep(3)  # the budgets' thread connects the ledger
    call = _a_call()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, messages in (("short request", SHORT), ("long request", LONG)):
        call.request = {"model": "gpt-4o-mini", "messages": messages}

        def once() -> None:
            call.budget = None
            budgets_module.guard(call)
            call.budget.settle(1000)

        runs = timeit.repeat(once, number=args.calls, repeat=9, timer=time.process_time)
        per = [r / args.calls * 1e6 for r in runs]
        print(f"  {name}: guard + settle {min(per):.1f} µs CPU (min of 9), median {statistics.median(per):.1f} µs")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"budget counters: {budgets_module.stats()}")


if __name__ == "__main__":
    main()

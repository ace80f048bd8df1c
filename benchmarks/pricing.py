"""Cost of pricing one call record (warm cache), against a plain SDK chat call in the same process.

``price_record`` runs on the exporter's background thread, not on the caller's path; this shows it
is also cheap enough that it would not matter there. Each case prices a fresh copy of a record many
times; we report the median µs per record over several rounds, and the median of a plain
``openai`` chat call over an in-process fake transport (no sockets) for scale.

    python benchmarks/pricing.py [--records 20000] [--rounds 9] [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracked_openai import pricing
from tracked_openai.records import CallRecord, Usage

CHAT_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1755597880,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
        "service_tier": "default",
    }
).encode()

NOW = time.time()
CASES: dict[str, Callable[[], CallRecord]] = {
    "chat snapshot + cached (gpt-4o-mini-2024-07-18)": lambda: CallRecord(
        started_at=NOW,
        endpoint="chat.completions",
        model="gpt-4o-mini",
        response_model="gpt-4o-mini-2024-07-18",
        service_tier="default",
        usage=Usage(input_tokens=1149, cached_input_tokens=1024, output_tokens=353),
    ),
    "history period (gpt-4o in 2024)": lambda: CallRecord(
        started_at=1_720_000_000.0,
        endpoint="chat.completions",
        model="gpt-4o",
        usage=Usage(input_tokens=1000, output_tokens=100),
    ),
    "long context + flex (gpt-5.4)": lambda: CallRecord(
        started_at=NOW,
        endpoint="chat.completions",
        model="gpt-5.4",
        service_tier="flex",
        usage=Usage(input_tokens=300_000, cached_input_tokens=100_000, output_tokens=2000),
    ),
    "fine-tune (ft:gpt-4o-mini-2024-07-18:org::id)": lambda: CallRecord(
        started_at=NOW,
        endpoint="chat.completions",
        model="ft:gpt-4o-mini-2024-07-18:acme::abc",
        usage=Usage(input_tokens=140, output_tokens=19),
    ),
    "dall-e-3 per image": lambda: CallRecord(
        started_at=NOW,
        endpoint="images.generate",
        model="dall-e-3",
        params={"size": "1792x1024", "quality": "hd"},
        usage=Usage(images=1),
    ),
}


def median_us_per_record(make: Callable[[], CallRecord], n: int, rounds: int) -> float:
    records = [make() for _ in range(n)]
    for r in records[:100]:  # warm the resolution cache
        pricing.price_record(r)
    samples = []
    for _ in range(rounds):
        batch = [make() for _ in range(n)]
        start = time.perf_counter()
        for r in batch:
            pricing.price_record(r)
        samples.append((time.perf_counter() - start) / n * 1e6)
        assert batch[-1].cost is not None
    return statistics.median(samples)


def median_sdk_call_us(calls: int, rounds: int) -> float:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "application/json"}, content=CHAT_BODY)

    client = openai.OpenAI(api_key="sk-bench", http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    msg = [{"role": "user", "content": "hi"}]
    for _ in range(20):
        client.chat.completions.create(model="gpt-4o-mini", messages=msg)  # type: ignore[arg-type]
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            client.chat.completions.create(model="gpt-4o-mini", messages=msg)  # type: ignore[arg-type]
        samples.append((time.perf_counter() - start) / calls * 1e6)
    client.close()
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()

    start = time.perf_counter()
    book = pricing.get_price_book()
    load_ms = (time.perf_counter() - start) * 1e3
    print(f"price table {book.version}: {len(book.models)} models, loaded and compiled in {load_ms:.1f} ms")
    sdk = median_sdk_call_us(args.calls, args.rounds)
    print(f"plain SDK chat call (in-process fake transport): median {sdk:.1f} µs")
    for label, make in CASES.items():
        us = median_us_per_record(make, args.records, args.rounds)
        print(f"price_record, {label}: median {us:.2f} µs  ({us / sdk * 100:.2f}% of a plain call)")


if __name__ == "__main__":
    main()

"""What reading a Batch API output file through a tracked client costs the caller, against the
plain SDK in the same run, and how fast its lines become records off the caller's thread.

A 10,000-line output file (gpt-4o-mini chat completions, about 7.5 MB) is served by the in-process
fake (no sockets). Each round downloads it once with a plain ``openai.OpenAI`` and once with a
tracked client (``files.content``, then ``with_streaming_response``), alternating; the caller's
time is the call itself, as wall time and as the CPU time of the caller's thread (the part of it
that a loaded machine does not blur; the wall time also shows the GIL the worker's thread takes
while a streamed file is still being read). After each tracked download we wait, outside the timed call, for the
batch worker and the exporter (an in-memory sink) to finish, and time that too: lines per second
from the hand-over to every record priced and exported.

    python benchmarks/batches.py [--lines 10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tracked_openai
from tracked_openai._fake_transport import FakeOpenAI, FakeResponse
from tracked_openai.batches import wait, worker
from tracked_openai.export import runtime
from tracked_openai.sinks import InMemorySink

CREATED = 1_765_000_000
FILE_ID = "file-bench"
BATCH = {
    "id": "batch_bench",
    "object": "batch",
    "endpoint": "/v1/chat/completions",
    "errors": None,
    "input_file_id": "file-in",
    "completion_window": "24h",
    "status": "completed",
    "output_file_id": FILE_ID,
    "error_file_id": None,
    "created_at": CREATED,
    "completed_at": CREATED + 3_000,
    "request_counts": {"total": 0, "completed": 0, "failed": 0},
    "metadata": {"tracked_openai.feature": "bench"},
}


def output_file(n: int) -> bytes:
    lines = []
    for i in range(n):
        body = {
            "id": f"chatcmpl-{i}",
            "object": "chat.completion",
            "created": CREATED + i,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "A short answer."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1_000 + i, "completion_tokens": 200, "total_tokens": 1_200 + i},
            "service_tier": "default",
            "system_fingerprint": "fp_44709d6fcb",
        }
        lines.append(
            {
                "id": f"batch_req_{i}",
                "custom_id": f"doc-{i}",
                "response": {"status_code": 200, "request_id": f"req_{i}", "body": body},
                "error": None,
            }
        )
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    data = output_file(args.lines)
    fake = FakeOpenAI(keep=False)
    fake.add("GET", f"/files/{FILE_ID}/content", FakeResponse(content=data, chunk_size=65_536))
    fake.add("GET", "/batches/batch_bench", FakeResponse(json_body=BATCH))
    sink = InMemorySink()
    runtime.configure(sinks=[sink], enabled=True)
    plain = openai.OpenAI(api_key="sk-bench", http_client=fake.sync_client(), max_retries=0)
    tracked = tracked_openai.OpenAI(api_key="sk-bench", http_client=fake.sync_client(), max_retries=0)
    tracked.batches.retrieve("batch_bench")  # the batch is known, as after polling it

    def whole(client: Any) -> None:
        client.files.content(FILE_ID).content  # noqa: B018 - the call is what is timed

    def streamed(client: Any) -> None:
        with client.files.with_streaming_response.content(FILE_ID) as response:
            for _ in response.iter_bytes():
                pass

    print(f"batch output file: {args.lines:,} lines, {len(data) / 1e6:.1f} MB; {args.rounds} rounds")
    for name, read in (("files.content", whole), ("with_streaming_response.content", streamed)):
        times: dict[str, list[float]] = {"plain": [], "tracked": []}
        cpu: dict[str, list[float]] = {"plain": [], "tracked": []}
        rates: list[float] = []
        per_line: list[float] = []
        for _ in range(args.rounds):
            t0, c0 = time.perf_counter(), time.thread_time()
            read(plain)
            times["plain"].append(time.perf_counter() - t0)
            cpu["plain"].append(time.thread_time() - c0)
            worker._recent.clear()  # every round records every line (the worst case)
            sink.clear()
            t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
            read(tracked)
            t1 = time.perf_counter()
            times["tracked"].append(t1 - t0)
            cpu["tracked"].append(time.thread_time() - c0)
            assert wait(600) and runtime.flush(600)
            rates.append(args.lines / (time.perf_counter() - t1))
            per_line.append((time.process_time() - p0) / args.lines)
            assert len(sink.calls) == args.lines, len(sink.calls)
        for label, figures in (("wall", times), ("caller-thread CPU", cpu)):
            p, t = statistics.median(figures["plain"]), statistics.median(figures["tracked"])
            print(
                f"{name:34s} {label} median: plain {p * 1e3:8.2f} ms  tracked {t * 1e3:8.2f} ms  "
                f"({(t - p) * 1e3:+.2f} ms, {100 * (t - p) / p:+.1f}%)"
            )
        print(
            f"{'':34s} lines to records (worker + exporter, after the call): median "
            f"{statistics.median(rates):,.0f} lines/s; CPU of the whole process per line "
            f"{statistics.median(per_line) * 1e6:.0f} µs"
        )
    runtime.shutdown(10)


if __name__ == "__main__":
    main()

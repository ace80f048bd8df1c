"""A 32 MiB streamed output without usage: time, peak memory and exporter CPU, plain vs tracked.

The case of the OpenAI SDK's large-payload contract test (which the installed package does not
ship; built here to its description): a chat stream whose output is 32 MiB of text, no usage
chunk (the server ignores ``stream_options``), the body handed over in 64 KiB reads as a socket
would. Two shapes of that output:

    one-event   the whole output in one SSE event (one 32 MiB ``data:`` line)
    deltas      the output in 4 KiB deltas (8,192 events; reads cut events anywhere)

and two base URLs: a local one (``http://127.0.0.1:4010/v1``, as the SDK's tests use: nothing is
injected) and OpenAI's (``include_usage`` injected, the server ignores it, so the tee's event
filter runs on every read). Each measurement runs in a fresh subprocess, plain and tracked
interleaved, and reports:

    time         wall time of the caller iterating the stream to its end
    caller CPU   CPU time of the caller's thread over the same (steadier than wall time on a
                 shared machine)
    peak memory  the process's peak RSS until the record is exported, and how much of it was
                 added above the RSS just before the call (the interpreter, the SDK, the body's
                 reads and, tracked, tiktoken's tables loaded by the warm-up call come first)
    exporter     tracked only: CPU the exporter thread spent on the record (parsing the rest of
                 the body, the usage estimate), i.e. process CPU minus the caller's thread CPU

Medians of ``--repeats`` runs and the tracked/plain ratios are printed.

With ``--text letters`` the output is one run of letters without a space, tiktoken's worst case.

    python benchmarks/large_stream.py [--repeats 3] [--mib 32] [--shape one-event --shape deltas]
                                      [--host local --host openai] [--text words|letters]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
READ = 64 * 1024
DELTA = 4 * 1024
LOCAL_URL = "http://127.0.0.1:4010/v1"
OPENAI_URL = "https://api.openai.com/v1"
SHAPES = ("one-event", "deltas")
HOSTS = ("local", "openai")


# -- the child: one measured call ------------------------------------------------------------------


def _text(size: int, kind: str = "words") -> bytes:
    """``size`` bytes of ASCII text (no JSON escapes), deterministic: word-like, or ``letters``
    without a space (tiktoken's worst case)."""
    rng = random.Random(15)
    if kind == "letters":
        block = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1 << 16)).encode()
        return (block * (size // len(block) + 1))[:size]
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 9))) for _ in range(2000)
    ]
    para = " ".join(rng.choice(words) for _ in range(20_000)).encode() + b". "
    reps = size // len(para) + 1
    return (para * reps)[:size]


def _event(delta: dict[str, Any] | None, content: bytes | None = None, finish: str | None = None) -> bytes:
    head = b'data: {"id":"chatcmpl-large","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18",'
    if content is not None:
        choice = b'"choices":[{"index":0,"delta":{"content":"' + content + b'"},"finish_reason":null}]}'
    else:
        fields = {"index": 0, "delta": delta or {}, "finish_reason": finish}
        choice = b'"choices":[' + json.dumps(fields, separators=(",", ":")).encode() + b"]}"
    return head + choice + b"\n\n"


def _body_reads(shape: str, size: int, kind: str = "words") -> list[bytes]:
    """The response body, already cut into 64 KiB reads."""
    text = _text(size, kind)
    parts = [_event({"role": "assistant", "content": ""})]
    if shape == "one-event":
        parts.append(_event(None, content=text))
    else:
        parts.extend(_event(None, content=text[i : i + DELTA]) for i in range(0, len(text), DELTA))
    del text
    parts.append(_event({}, finish="stop"))
    parts.append(b"data: [DONE]\n\n")
    body = b"".join(parts)
    del parts
    reads = [body[i : i + READ] for i in range(0, len(body), READ)]
    return reads


def _rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _reset_peak() -> bool:
    try:  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_kib(reset: bool) -> int:
    if reset:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(client_kind: str, shape: str, host: str, size: int, text: str = "words") -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    import gc

    import httpx2
    import openai

    import tracked_openai
    from tracked_openai._errors import set_internal_error_hook
    from tracked_openai.sinks import InMemorySink

    reads = _body_reads(shape, size, text)

    class Reads(httpx2.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield from reads

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=Reads())

    sink = InMemorySink()
    errors: list[BaseException] = []
    set_internal_error_hook(errors.append)
    tracked_openai.configure(sinks=[sink])
    cls = tracked_openai.OpenAI if client_kind == "tracked" else openai.OpenAI
    client = cls(
        api_key="sk-bench",
        base_url=LOCAL_URL if host == "local" else OPENAI_URL,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        max_retries=0,
    )
    messages = [{"role": "user", "content": "Write a very long text."}]
    # Warm-up on a small body: imports and first-call costs are not what is measured here.
    saved = reads
    reads = _body_reads("deltas", 64 * 1024)
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True):
        pass
    tracked_openai.flush(timeout=60)
    sink.clear()
    reads = saved
    del saved
    gc.collect()

    base = _rss_kib()
    reset = _reset_peak()
    cpu0, thread0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
    chunks = 0
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True):
        chunks += 1
    elapsed = time.perf_counter() - t0
    thread_cpu = time.thread_time() - thread0
    tracked_openai.flush(timeout=600)
    exporter_cpu = (time.process_time() - cpu0) - (time.thread_time() - thread0)
    peak = _peak_kib(reset)  # the exporter's work on the record included
    out: dict[str, Any] = {
        "time": elapsed,
        "peak_mib": peak / 1024,
        "added_mib": (peak - base) / 1024,
        "caller_cpu": thread_cpu,
        "chunks": chunks,
        "internal_errors": len(errors),
    }
    if client_kind == "tracked":
        (call,) = sink.calls
        out["exporter_cpu"] = exporter_cpu
        out["record"] = {
            "status": call.status,
            "usage_source": call.usage_source,
            "output_tokens": call.usage.output_tokens,
            "input_tokens": call.usage.input_tokens,
            "stream_end": call.stream_end,
            "tags": call.tags,
        }
    return out


# -- the parent: interleaved subprocesses, medians -------------------------------------------------


def _run(client_kind: str, shape: str, host: str, size: int, text: str, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", client_kind, "--shape", shape, "--host", host]
    cmd += ["--bytes", str(size), "--text", text]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3, help="runs per client and case")
    parser.add_argument("--mib", type=float, default=32, help="output size in MiB")
    parser.add_argument("--shape", action="append", choices=SHAPES, help="(repeatable; default: both)")
    parser.add_argument("--host", action="append", choices=HOSTS, help="(repeatable; default: both)")
    parser.add_argument("--text", choices=("words", "letters"), default="words", help="what the output is")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    parser.add_argument("--child", choices=("plain", "tracked"), help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.shape[0], args.host[0], args.bytes, args.text), default=str))
        return

    import openai

    size = int(args.mib * 1024 * 1024)
    print(
        f"openai {openai.__version__}, python {sys.version.split()[0]}, {args.mib:g} MiB output, "
        f"{args.text}, {READ // 1024} KiB reads, {args.repeats} runs each (fresh subprocess per run, interleaved)"
    )
    for shape in args.shape or SHAPES:
        for host in args.host or HOSTS:
            runs: dict[str, list[dict[str, Any]]] = {"plain": [], "tracked": []}
            for i in range(args.repeats):
                order = ("plain", "tracked") if i % 2 == 0 else ("tracked", "plain")
                for kind in order:
                    runs[kind].append(_run(kind, shape, host, size, args.text, args.timeout))

            def med(kind: str, key: str, runs: dict[str, list[dict[str, Any]]] = runs) -> float:
                return statistics.median(r[key] for r in runs[kind])

            print(f"\n{shape}, {host} base URL ({'include_usage injected' if host == 'openai' else 'nothing injected'}):")
            for key, label, unit in (("time", "time", "s"), ("caller_cpu", "caller CPU", "s"), ("peak_mib", "peak RSS", "MiB")):
                plain, tracked = med("plain", key), med("tracked", key)
                print(f"  {label:<12} plain {plain:8.2f} {unit:<3}  tracked {tracked:8.2f} {unit:<3}  ratio {tracked / plain:5.2f}")
            added_plain, added_tracked = med("plain", "added_mib"), med("tracked", "added_mib")
            print(f"  {'  added':<12} plain {added_plain:8.2f} MiB  tracked {added_tracked:8.2f} MiB  (above the RSS before the call)")
            print(f"  {'exporter':<12} {med('tracked', 'exporter_cpu'):.2f} s CPU for the record (tracked)")
            last = runs["tracked"][-1]
            errors = sum(r["internal_errors"] for r in runs["tracked"])
            print(f"  record: {json.dumps(last['record'])}; internal errors: {errors}")


if __name__ == "__main__":
    main()

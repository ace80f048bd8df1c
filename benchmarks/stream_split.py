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
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from overhead import MESSAGES, CountingSink, handler, interleave, print_medians

import tracked_openai
from tracked_openai.export import runtime as _runtime


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
    configured = settings.inject_stream_usage
    for client, fn, inject in workloads.values():  # warm-up
        settings.inject_stream_usage = inject
        for _ in range(50):
            fn(client)
    tracked_openai.flush()
    timed = {
        name: (partial(setattr, settings, "inject_stream_usage", inject), partial(fn, client))
        for name, (client, fn, inject) in workloads.items()
    }
    samples = interleave(timed, args.calls, flush_every=50)
    settings.inject_stream_usage = configured
    print(f"openai {openai.__version__}, python {sys.version.split()[0]}, {args.calls} calls each, interleaved")
    print("chat stream: median per call")
    print_medians(samples, "plain")


if __name__ == "__main__":
    main()

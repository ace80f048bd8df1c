"""Streams are recorded when they end (exhausted, closed or abandoned), exactly once. Against
OpenAI the library asks for the usage chunk itself and hides it from you; against other
servers it estimates the usage (recorded as usage_source=estimated)."""

from _offline import offline_openai

import tracked_openai
from tracked_openai import OpenAI, track

with offline_openai():
    client = OpenAI()
    with track("pfd_conversion", "live_summary"):
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Stream the conversion status."}],
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()

tracked_openai.flush()
print("recorded 1 streamed call")

"""Swap one import: every call is recorded (feature "default", a top-level MLflow run).

    python examples/quickstart.py && tracked-openai report
"""

from _offline import offline_openai

import tracked_openai
from tracked_openai import OpenAI  # was: from openai import OpenAI

with offline_openai():
    client = OpenAI()  # same constructor, same return values, same errors
    response = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Summarise the design basis in one line."}],
    )
    print(response.choices[0].message.content)

tracked_openai.flush()  # records are written in the background; wait for them before exiting
print("recorded 1 call in feature 'default'")

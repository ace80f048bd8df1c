"""``track(feature, operation, **tags)``: every call inside the block belongs to one operation
(an MLflow run with the calls as child runs). Also works as a decorator and with ``async with``."""

from _offline import offline_openai

import tracked_openai
from tracked_openai import OpenAI, track

with offline_openai():
    client = OpenAI()
    with track("pid_verification", "image_analysis", customer="acme") as op:
        for sheet in ("P&ID-101", "P&ID-102"):
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"Find design issues in {sheet}."}]
            )
        op.log_metrics(confidence=0.93, issues_found=4)  # stored as confidence_score, issues_found

tracked_openai.flush()
print("recorded operation pid_verification/image_analysis with 2 calls")

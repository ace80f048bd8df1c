"""Azure OpenAI: same swap (``from tracked_openai import AzureOpenAI``). Costs use the served
model from the response, not your deployment name."""

from _offline import offline_openai

import tracked_openai
from tracked_openai import AzureOpenAI, track

with offline_openai():
    # Reads AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY and OPENAI_API_VERSION.
    client = AzureOpenAI(azure_deployment="prod-gpt4o")
    with track("crs_analysis", "azure_summary"):
        r = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Summarise CRS-2026-004."}]
        )
    print("served model:", r.model)

tracked_openai.flush()
print("recorded 1 Azure call")

"""The five AIFlow tracking decorators; each decorated call is one tracked operation and the
return value feeds its metrics (confidence, retrieved docs and similarity, any numbers)."""

from _offline import offline_openai

import tracked_openai
from tracked_openai import OpenAI
from tracked_openai.decorators import (
    track_custom_operation,
    track_dalle_generation,
    track_gpt_text,
    track_gpt_vision,
    track_rag_operation,
)

with offline_openai():
    client = OpenAI()

    @track_gpt_vision("pid_verification", "diagram_analysis")
    def analyze(image_url: str) -> dict:
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "List the issues in this P&ID."},
                {"type": "image_url", "image_url": {"url": image_url}},
            ]}],
        )
        return {"issues": ["missing PSV"], "confidence": 0.91}

    @track_gpt_text("pfd_conversion", "spec_generation")
    def write_spec(pfd: str) -> dict:
        r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": pfd}])
        return {"spec": r.choices[0].message.content, "confidence": 0.88}

    @track_dalle_generation("visual_generation")
    def render(prompt: str) -> int:
        return len(client.images.generate(model="dall-e-3", prompt=prompt, size="1024x1024").data or [])

    @track_rag_operation("crs_analysis", "requirement_search")
    def search(question: str) -> dict:
        client.embeddings.create(model="text-embedding-3-small", input=question)
        return {"documents": ["CRS 4.2", "CRS 7.1"], "similarity_scores": [0.92, 0.81]}

    @track_custom_operation("crs_analysis", "compliance_scoring")
    def score(doc: str) -> dict:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": doc}])
        return {"requirements_checked": 12, "compliance_score": 0.92}

    analyze("https://example.com/pid-101.png")
    write_spec("PFD-A: feed preheat train")
    render("A clean isometric heat-exchanger diagram")
    search("Which relief valves need resizing?")
    score("CRS-2026-004")

tracked_openai.flush()
print("recorded 5 operations (vision, text, image generation, RAG, custom)")

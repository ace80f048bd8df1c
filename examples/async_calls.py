"""Async clients and ``async with track(...)``: concurrent calls keep their own operation."""

import asyncio

from _offline import offline_openai

import tracked_openai
from tracked_openai import AsyncOpenAI, track


async def main() -> None:
    client = AsyncOpenAI()

    async def review(sheet: str) -> None:
        async with track("pid_verification", "async_review", sheet=sheet):
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"Review {sheet}."}]
            )

    await asyncio.gather(*(review(f"P&ID-{n}") for n in (101, 102, 103)))
    await client.close()


with offline_openai():
    asyncio.run(main())
tracked_openai.flush()
print("recorded 3 concurrent operations")

"""Every call type and service tier priced end to end: a real tracked client, the fake transport
replaying a recorded response (``tests/fixtures/recorded``) or one derived from it
(``tests/fixtures/pricing_*``), then ``records.calls[0].cost`` against a cost worked out by hand
from ``pricing/openai.yaml``. Rates below are USD per 1M tokens; "x/1M" means x * 10**-6.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import openai
import pytest

import tracked_openai
from tests.helpers.fakeopenai import FakeOpenAI, FakeResponse
from tracked_openai.pricing import get_price_book

MSG = [{"role": "user", "content": "Say this is a test"}]
WAV = ("a.wav", b"RIFF\x24\x00\x00\x00WAVEfmt fake-audio-bytes", "audio/wav")
PNG = ("a.png", b"\x89PNG\r\n\x1a\nfake-image-bytes", "image/png")
SPEECH = "The quick brown fox jumped over the lazy dog."  # 45 characters


def D(text: str) -> Decimal:
    return Decimal(text)


@dataclass
class PricedCase:
    fixture: str
    path: str
    call: Callable[[Any], Any]
    input_usd: Decimal | None
    output_usd: Decimal | None
    rule: str
    status: str = "priced"
    marks: tuple[Any, ...] = ()


def _chat(model: str, **kw: Any) -> Callable[[Any], Any]:
    return lambda c: c.chat.completions.create(model=model, messages=MSG, **kw)


def _chat_stream(model: str) -> Callable[[Any], Any]:
    def run(c: Any) -> None:
        for _ in c.chat.completions.create(model=model, messages=MSG, stream=True):
            pass

    return run


def _responses(model: str) -> Callable[[Any], Any]:
    return lambda c: c.responses.create(model=model, input="Say this is a test")


def _responses_stream(model: str) -> Callable[[Any], Any]:
    def run(c: Any) -> None:
        for _ in c.responses.create(model=model, input="Say this is a test", stream=True):
            pass

    return run


def _image_edit_stream(model: str) -> Callable[[Any], Any]:
    def run(c: Any) -> None:
        for _ in c.images.edit(model=model, image=PNG, prompt="add a hat", stream=True):
            pass

    return run


CASES = [
    # gpt-5-nano-2025-08-07 -> gpt-5-nano (0.05 / 0.40), tier "default" = standard.
    # in 11 * 0.05 = 0.55/1M; out 228 (192 reasoning included, billed once) * 0.40 = 91.2/1M
    PricedCase(
        "chat_gpt5_nano_reasoning",
        "/chat/completions",
        _chat("gpt-5-nano"),
        D("0.00000055"),
        D("0.0000912"),
        "snapshot->gpt-5-nano",
    ),
    # flex 0.025 / 0.20: in 11 * 0.025 = 0.275/1M; out 228 * 0.20 = 45.6/1M
    PricedCase(
        "pricing_chat_gpt5_nano_flex",
        "/chat/completions",
        _chat("gpt-5-nano", service_tier="flex"),
        D("0.000000275"),
        D("0.0000456"),
        "snapshot->gpt-5-nano; tier=flex",
    ),
    # DISPUTED decision: gpt-5-nano has no priority price -> unpriced, never guessed.
    PricedCase(
        "pricing_chat_gpt5_nano_priority",
        "/chat/completions",
        _chat("gpt-5-nano", service_tier="priority"),
        None,
        None,
        "snapshot->gpt-5-nano; no priority tier price",
        status="unpriced",
    ),
    # gpt-4.1-mini priority 0.70 / 0.175 / 2.80: in 50 * 0.70 = 35/1M; out 15 * 2.80 = 42/1M
    PricedCase(
        "pricing_chat_gpt41_mini_priority",
        "/chat/completions",
        _chat("gpt-4.1-mini", service_tier="priority"),
        D("0.000035"),
        D("0.000042"),
        "snapshot->gpt-4.1-mini; tier=priority",
    ),
    # Responses, gpt-5-mini priority 0.45 / 3.60: in 54 * 0.45 = 24.3/1M; out 164 * 3.60 = 590.4/1M
    PricedCase(
        "pricing_responses_gpt5_mini_priority",
        "/responses",
        _responses("gpt-5-mini"),
        D("0.0000243"),
        D("0.0005904"),
        "snapshot->gpt-5-mini; tier=priority",
    ),
    # gpt-5-mini standard 0.25 / 2.00: in 54 * 0.25 = 13.5/1M; out 164 * 2 = 328/1M
    PricedCase(
        "responses_gpt5_mini_reasoning",
        "/responses",
        _responses("gpt-5-mini"),
        D("0.0000135"),
        D("0.000328"),
        "snapshot->gpt-5-mini",
    ),
    # gpt-4o-mini 0.15 / cached 0.075 / 0.60; prompt 1149 includes 1024 cached:
    # in (1149 - 1024) * 0.15 + 1024 * 0.075 = 18.75 + 76.8 = 95.55/1M; out 353 * 0.60 = 211.8/1M
    PricedCase(
        "chat_gpt4o_mini_cached_1024",
        "/chat/completions",
        _chat("gpt-4o-mini"),
        D("0.00009555"),
        D("0.0002118"),
        "snapshot->gpt-4o-mini",
    ),
    # n=2: usage already covers both choices. in 12 * 0.15 = 1.8/1M; out 24 * 0.60 = 14.4/1M
    PricedCase(
        "chat_gpt4o_mini_n2_multiple_choices",
        "/chat/completions",
        _chat("gpt-4o-mini", n=2),
        D("0.0000018"),
        D("0.0000144"),
        "snapshot->gpt-4o-mini",
    ),
    # gpt-5.6-sol since the 2026-08-21 cut (DISPUTED, decided as a dated cut): 4 / cached 0.40 / 20.
    # The call is made now, so today's price applies (the recording itself is from July 2026).
    # in (4020 - 4012) * 4 + 4012 * 0.4 = 32 + 1604.8 = 1636.8/1M; out 4 * 20 = 80/1M
    PricedCase(
        "chat_gpt56_cached_4012",
        "/chat/completions",
        _chat("gpt-5.6-sol"),
        D("0.0016368"),
        D("0.00008"),
        "exact",
    ),
    # cache write 5: in (4020 - 4000) * 4 + 4000 * 5 = 80 + 20000 = 20080/1M; out 4 * 20 = 80/1M
    PricedCase(
        "pricing_chat_gpt56_cache_write",
        "/chat/completions",
        _chat("gpt-5.6-sol"),
        D("0.02008"),
        D("0.00008"),
        "exact",
    ),
    # gpt-5.4, 300,000 > 272,000 input tokens: the WHOLE request at 5 / cached 0.50 / 22.5:
    # in 200,000 * 5 + 100,000 * 0.5 = 1,050,000/1M = 1.05; out 2,000 * 22.5 = 45,000/1M = 0.045
    PricedCase(
        "pricing_chat_gpt54_long_context",
        "/chat/completions",
        _chat("gpt-5.4"),
        D("1.05"),
        D("0.045"),
        "snapshot->gpt-5.4; long-context",
    ),
    # exactly 272,000 is not above the threshold: 2.50 / 0.25 / 15:
    # in 172,000 * 2.5 + 100,000 * 0.25 = 455,000/1M; out 2,000 * 15 = 30,000/1M
    PricedCase(
        "pricing_chat_gpt54_at_threshold",
        "/chat/completions",
        _chat("gpt-5.4"),
        D("0.455"),
        D("0.03"),
        "snapshot->gpt-5.4",
    ),
    # ft:gpt-4o-mini-2024-07-18:acme-corp:... -> ft:gpt-4o-mini-2024-07-18 (0.30 / 1.20):
    # in 140 * 0.30 = 42/1M; out 19 * 1.20 = 22.8/1M
    PricedCase(
        "pricing_chat_finetune_gpt4o_mini",
        "/chat/completions",
        _chat("ft:gpt-4o-mini-2024-07-18:acme-corp:support-bot:9aBcDeF1"),
        D("0.000042"),
        D("0.0000228"),
        "fine-tune->ft:gpt-4o-mini-2024-07-18",
    ),
    # gpt-3.5-turbo-0301 is priced differently from the alias: 1.50 / 2.00.
    # in 57 * 1.5 = 85.5/1M; out 34 * 2 = 68/1M
    PricedCase(
        "chat_gpt35_turbo_0301_2023",
        "/chat/completions",
        _chat("gpt-3.5-turbo", n=2),
        D("0.0000855"),
        D("0.000068"),
        "exact",
    ),
    # gpt-4.1-mini 0.40 / 1.60: in 50 * 0.4 = 20/1M; out 15 * 1.6 = 24/1M
    PricedCase(
        "chat_gpt41_mini_tool_call",
        "/chat/completions",
        _chat("gpt-4.1-mini"),
        D("0.00002"),
        D("0.000024"),
        "snapshot->gpt-4.1-mini",
    ),
    # gpt-4-1106-vision-preview 10 / 30 (image tokens are inside prompt_tokens, text rate):
    # in 438 * 10 = 4380/1M; out 16 * 30 = 480/1M
    PricedCase(
        "chat_gpt4_vision_preview_2024",
        "/chat/completions",
        _chat("gpt-4-vision-preview"),
        D("0.00438"),
        D("0.00048"),
        "exact",
    ),
    # streamed, usage chunk: gpt-4-0613 30 / 60: in 12 * 30 = 360/1M; out 5 * 60 = 300/1M
    PricedCase(
        "chat_stream_gpt4_include_usage",
        "/chat/completions",
        _chat_stream("gpt-4"),
        D("0.00036"),
        D("0.0003"),
        "exact",
    ),
    # gpt-4o-audio-preview-2024-12-17 -> gpt-4o-audio-preview: text 2.50 / 10, audio 40 / 80.
    # in 25 text * 2.5 + 20 audio * 40 = 62.5 + 800 = 862.5/1M
    # out 30 text * 10 + 280 audio * 80 = 300 + 22400 = 22700/1M
    PricedCase(
        "pricing_chat_gpt4o_audio",
        "/chat/completions",
        _chat(
            "gpt-4o-audio-preview", modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"}
        ),
        D("0.0008625"),
        D("0.0227"),
        "snapshot->gpt-4o-audio-preview",
    ),
    # Responses stream, gpt-4.1-nano 0.10 / 0.40: in 14 * 0.1 = 1.4/1M; out 9 * 0.4 = 3.6/1M
    PricedCase(
        "responses_stream_gpt41_nano",
        "/responses",
        _responses_stream("gpt-4.1-nano"),
        D("0.0000014"),
        D("0.0000036"),
        "snapshot->gpt-4.1-nano",
    ),
    # gpt-4o-2024-08-06 -> gpt-4o, today's price 2.50 / 10: in 27 * 2.5 = 67.5/1M; out 11 * 10 = 110/1M
    PricedCase(
        "responses_stream_gpt4o_2025",
        "/responses",
        _responses_stream("gpt-4o"),
        D("0.0000675"),
        D("0.00011"),
        "exact",
    ),
    # responses.compact, gpt-5.4-mini 0.75 / cached 0.075 / 4.50 (the body has no model: request model)
    # in (5000 - 3000) * 0.75 + 3000 * 0.075 = 1500 + 225 = 1725/1M; out 800 * 4.5 = 3600/1M
    PricedCase(
        "pricing_responses_compact_gpt54_mini",
        "/responses/compact",
        lambda c: c.responses.compact(model="gpt-5.4-mini", input="a long conversation"),
        D("0.001725"),
        D("0.0036"),
        "exact",
    ),
    # decisions, gpt-5.6-terra (since 2026-07-30) 2 / cached 0.20 / cache write 2.50 / 12:
    # in (3000 - 1000 - 1500) * 2 + 1000 * 0.2 + 1500 * 2.5 = 1000 + 200 + 3750 = 4950/1M
    # out 50 * 12 = 600/1M
    PricedCase(
        "pricing_decisions_gpt56_terra",
        "/decisions",
        lambda c: c.decisions.create(
            model="gpt-5.6-terra", input="Customer says the site is down", questions=[{"name": "urgent"}]
        ),
        D("0.00495"),
        D("0.0006"),
        "exact",
        marks=(
            pytest.mark.skipif(
                not hasattr(openai.OpenAI, "decisions"), reason="this openai has no decisions API (later 3.x)"
            ),
        ),
    ),
    # legacy completions, gpt-3.5-turbo-instruct 1.50 / 2.00: in 7 * 1.5 = 10.5/1M; out 5 * 2 = 10/1M
    PricedCase(
        "pricing_completions_gpt35_instruct",
        "/completions",
        lambda c: c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test"),
        D("0.0000105"),
        D("0.00001"),
        "exact",
    ),
    # text-embedding-3-small 0.02: 14 * 0.02 = 0.28/1M; no output
    PricedCase(
        "embeddings_3small_token_ids",
        "/embeddings",
        lambda c: c.embeddings.create(
            model="text-embedding-3-small", input=[[1, 2], [3], [4, 5]], encoding_format="float"
        ),
        D("0.00000028"),
        D("0"),
        "exact",
    ),
    # gpt-image-1: text input 5, image output 40. in 22 text * 5 = 110/1M;
    # out 12,480 image tokens (two 1024x1536 high images) * 40 = 499,200/1M = 0.4992
    PricedCase(
        "images_gpt_image_1_generate_options",
        "/images/generations",
        lambda c: c.images.generate(model="gpt-image-1", prompt="x", n=2, size="1024x1536"),
        D("0.00011"),
        D("0.4992"),
        "exact",
    ),
    # gpt-image-1 edit: in 17 text * 5 + 323 image * 10 = 85 + 3230 = 3315/1M; out 1056 * 40 = 42240/1M
    PricedCase(
        "pricing_images_edit_gpt_image_1",
        "/images/edits",
        lambda c: c.images.edit(model="gpt-image-1", image=PNG, prompt="add a hat"),
        D("0.003315"),
        D("0.04224"),
        "exact",
    ),
    # gpt-image-1 edit whose usage has no output breakdown (issue 19 item 5): the Images API's
    # output tokens are image tokens. in 46 text * 5 + 194 image * 10 = 230 + 1940 = 2170/1M;
    # out 4,160 * 40 (image output) = 166,400/1M = 0.1664 (the $0.167 of a high 1024x1024 image)
    PricedCase(
        "pricing_images_edit_gpt_image_1_no_output_details",
        "/images/edits",
        lambda c: c.images.edit(model="gpt-image-1", image=PNG, prompt="add a hat", quality="high"),
        D("0.00217"),
        D("0.1664"),
        "exact; output tokens priced as image output (no output breakdown)",
    ),
    # the same in a stream: image_edit.completed carries usage without an output breakdown.
    # in 17 * 5 + 323 * 10 = 3315/1M; out 1056 * 40 = 42240/1M
    PricedCase(
        "images_edit_stream_gpt_image_1",
        "/images/edits",
        _image_edit_stream("gpt-image-1"),
        D("0.003315"),
        D("0.04224"),
        "exact; output tokens priced as image output (no output breakdown)",
    ),
    # dall-e-2 has no usage: n x size: 3 images (counted in the response) * $0.016 (256x256) = 0.048
    PricedCase(
        "pricing_images_dalle2_256_n3",
        "/images/generations",
        lambda c: c.images.generate(model="dall-e-2", prompt="x", n=3, size="256x256"),
        D("0"),
        D("0.048"),
        "exact",
    ),
    # dall-e-3 hd 1792x1024: 1 * $0.12
    PricedCase(
        "pricing_images_dalle3_hd_1792",
        "/images/generations",
        lambda c: c.images.generate(model="dall-e-3", prompt="x", size="1792x1024", quality="hd"),
        D("0"),
        D("0.12"),
        "exact",
    ),
    # gpt-4o-transcribe-diarize: audio input 6 (DISPUTED: chose 6 over 2.50), text output 10.
    # in 64 audio * 6 = 384/1M; out 225 * 10 = 2250/1M
    PricedCase(
        "audio_transcribe_diarize_tokens",
        "/audio/transcriptions",
        lambda c: c.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=WAV, response_format="diarized_json"
        ),
        D("0.000384"),
        D("0.00225"),
        "exact",
    ),
    # whisper-1 $0.006/min: 75 s = 1.25 min * 0.006 = 0.0075
    PricedCase(
        "pricing_audio_whisper_75s",
        "/audio/transcriptions",
        lambda c: c.audio.transcriptions.create(model="whisper-1", file=WAV),
        D("0.0075"),
        D("0"),
        "exact",
    ),
    # translation (verbose_json duration 8.47 s): 8.47 / 60 * 0.006 = 0.000847
    PricedCase(
        "pricing_audio_translation_verbose",
        "/audio/translations",
        lambda c: c.audio.translations.create(model="whisper-1", file=WAV, response_format="verbose_json"),
        D("0.000847"),
        D("0"),
        "exact",
        marks=(pytest.mark.filterwarnings("ignore::DeprecationWarning"),),
    ),
    # tts-1-hd $30 per 1M characters: 45 * 30 = 1350/1M
    PricedCase(
        "pricing_audio_speech_tts1hd",
        "/audio/speech",
        lambda c: c.audio.speech.create(model="tts-1-hd", voice="alloy", input=SPEECH),
        D("0.00135"),
        D("0"),
        "exact",
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.fixture, marks=c.marks) for c in CASES])
def test_recorded_call_is_priced_exactly(case: PricedCase, client, fake: FakeOpenAI, records) -> None:
    fake.add("POST", case.path, FakeResponse.from_fixture(case.fixture))
    case.call(client)
    (call,) = records.calls
    assert call.cost_status == case.status
    assert call.pricing_version == get_price_book().version
    assert call.pricing_rule == case.rule
    if case.input_usd is None:
        assert call.cost is None
        return
    assert call.cost is not None
    assert call.cost.input_usd == case.input_usd
    assert call.cost.output_usd == case.output_usd
    assert call.cost.total_usd == case.input_usd + case.output_usd


async def test_async_client_prices_the_same(aclient, fake: FakeOpenAI, records) -> None:
    fake.add("POST", "/chat/completions", FakeResponse.from_fixture("chat_gpt4o_mini_cached_1024"))
    await aclient.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    (call,) = records.calls
    assert call.cost is not None and call.cost.total_usd == Decimal("0.00030735")  # 95.55 + 211.8 per 1M


def test_azure_is_priced_by_the_served_model_not_the_deployment(fake: FakeOpenAI, records) -> None:
    fake.add("POST", "/chat/completions", FakeResponse.from_fixture("chat_azure_gpt35_content_filter"))
    client = tracked_openai.AzureOpenAI(
        api_key="sk-test",
        api_version="2024-02-01",
        azure_endpoint="https://example-resource.openai.azure.com",
        http_client=fake.sync_client(),
        max_retries=0,
    )
    client.chat.completions.create(model="openllmetry-testing", messages=MSG)
    client.close()
    (call,) = records.calls
    assert call.provider == "azure"
    assert call.model == "openllmetry-testing"
    assert call.response_model == "gpt-35-turbo"
    # gpt-35-turbo -> gpt-3.5-turbo 0.50 / 1.50: in 15 * 0.5 = 7.5/1M; out 24 * 1.5 = 36/1M
    assert call.pricing_rule == "azure-spelling->gpt-3.5-turbo"
    assert call.cost is not None
    assert (call.cost.input_usd, call.cost.output_usd) == (Decimal("0.0000075"), Decimal("0.000036"))


def test_stream_without_usage_is_priced_from_the_estimate(client, fake: FakeOpenAI, records) -> None:
    fake.add("POST", "/chat/completions", FakeResponse.from_fixture("chat_stream_gpt35_no_usage_2024"))
    for _ in client.chat.completions.create(model="gpt-3.5-turbo", messages=MSG, stream=True):
        pass
    (call,) = records.calls
    # The 2024 stream has no usage chunk: the library estimates the usage, and the cost says so.
    assert call.usage_source == "estimated"
    # gpt-3.5-turbo-0125 is listed (0.50 / 1.50); the estimate's own counts, priced exactly.
    assert call.cost_status == "estimated"
    assert call.pricing_rule == "exact"
    assert call.cost is not None
    u = call.usage
    assert call.cost.input_usd == Decimal(u.input_tokens or 0) * Decimal("0.5") / 1_000_000
    assert call.cost.output_usd == Decimal(u.output_tokens or 0) * Decimal("1.5") / 1_000_000


def test_failed_call_has_no_usage_and_no_cost(client, fake: FakeOpenAI, records) -> None:
    fake.add("POST", "/embeddings", FakeResponse.from_fixture("error_400_embeddings_bad_dimensions"))
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text-embedding-3-small", input="x", dimensions=7)
    (call,) = records.calls
    assert call.status == "error"
    assert call.cost is None
    assert call.cost_status == "no_usage"
